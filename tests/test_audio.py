"""The one audio loader: formats, rates, channels, long clips and every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_tone

from rollout.audio import (
    SAMPLE_RATE,
    AudioDecodeError,
    AudioError,
    AudioNotFoundError,
    AudioTooLongError,
    EmptyAudioError,
    load_audio,
)


def dominant_frequency(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(wave))


@pytest.mark.parametrize(
    ("name", "rate", "channels", "kwargs"),
    [
        ("mono16k.wav", 16000, 1, {}),
        ("stereo44k.wav", 44100, 2, {}),
        ("mono48k.flac", 48000, 1, {}),
        ("stereo22k.ogg", 22050, 2, {"format": "OGG", "subtype": "VORBIS"}),
        ("mono44k.mp3", 44100, 1, {"format": "MP3", "subtype": "MPEG_LAYER_III"}),
        ("float8k.wav", 8000, 1, {"subtype": "FLOAT"}),
    ],
)
def test_any_common_format_becomes_16k_mono_float32(tmp_path, name, rate, channels, kwargs):
    path = write_tone(tmp_path / name, freq=440.0, seconds=1.5, rate=rate, channels=channels, **kwargs)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) / SAMPLE_RATE - 1.5) < 0.1  # mp3 adds a little padding
    assert abs(dominant_frequency(wave) - 440.0) < 5.0  # resampled, not just relabelled
    assert 0.3 < np.abs(wave).max() < 0.7


def test_stereo_is_averaged_not_one_channel(tmp_path):
    import soundfile as sf

    left = np.full(16000, 0.5, dtype=np.float32)
    right = np.zeros(16000, dtype=np.float32)
    sf.write(tmp_path / "lr.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    assert np.allclose(load_audio(tmp_path / "lr.wav"), 0.25)


def test_bytes_input_equals_file_input(tmp_path):
    path = write_tone(tmp_path / "a.flac", rate=44100)
    assert np.array_equal(load_audio(path.read_bytes()), load_audio(path))


def test_long_clip_is_truncated_to_the_30_second_window_by_default(tmp_path):
    path = write_tone(tmp_path / "long.wav", seconds=31.0)
    assert len(load_audio(path)) == 30 * SAMPLE_RATE


def test_long_clip_error_policy_names_the_file(tmp_path):
    path = write_tone(tmp_path / "long.wav", seconds=12.0)
    with pytest.raises(AudioTooLongError, match="long.wav.*12.0 s"):
        load_audio(path, max_seconds=10, on_long="error")


def test_truncated_file_is_a_decode_error(tmp_path):
    path = write_tone(tmp_path / "cut.flac", seconds=2.0)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(AudioDecodeError, match="cut.flac"):
        load_audio(path)


def test_text_file_named_wav_is_a_decode_error(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio, only text that pretends to be a WAV file\n" * 10)
    with pytest.raises(AudioDecodeError, match="notes.wav.*cannot decode"):
        load_audio(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(EmptyAudioError, match="empty.wav"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(EmptyAudioError):
        load_audio(b"")
    with pytest.raises(AudioNotFoundError, match="nowhere.wav"):
        load_audio(tmp_path / "nowhere.wav")


def test_zero_frame_wav_is_empty(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(EmptyAudioError, match="zero.wav"):
        load_audio(tmp_path / "zero.wav")


def test_every_error_is_an_audio_error_and_a_value_error(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(AudioError) as info:
        load_audio(tmp_path / "junk.wav")
    assert isinstance(info.value, ValueError)
    assert info.value.source.endswith("junk.wav")

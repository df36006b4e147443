"""The one audio loader: any common file or bytes -> 16 kHz mono float32.

Training, evaluation and serving all call `load_audio`, so a clip is decoded the same way
everywhere. Decoding uses libsndfile (WAV, FLAC, OGG/Vorbis, Opus, MP3 and more) through
`soundfile`; resampling uses `soxr` (torchaudio is not importable beside the CPU build of torch).

Long clips: Qwen2-Audio's encoder sees a fixed 30 s window (3000 mel frames); anything longer is
cut by the feature extractor anyway. The stated policy is therefore `on_long="truncate"` (keep the
first `max_seconds`), or `on_long="error"` to refuse such clips (the HTTP endpoint uses this).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np

SAMPLE_RATE = 16_000
MAX_SECONDS = 30.0  # Qwen2-Audio's encoder window


class AudioError(ValueError):
    """Base class: the named audio input cannot be used. `source` names the file (or '<bytes>')."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class AudioNotFoundError(AudioError):
    """The file does not exist."""


class AudioDecodeError(AudioError):
    """The file exists but is corrupt, truncated or not audio."""


class EmptyAudioError(AudioError):
    """The input holds no audio samples."""


class AudioTooLongError(AudioError):
    """The clip exceeds `max_seconds` and the policy is `on_long="error"`."""


AudioSource = str | Path | bytes


def _source_name(source: AudioSource) -> str:
    return "<bytes>" if isinstance(source, bytes | bytearray) else str(source)


def load_audio(
    source: AudioSource,
    *,
    max_seconds: float = MAX_SECONDS,
    on_long: Literal["truncate", "error"] = "truncate",
) -> np.ndarray:
    """Decode `source` (a path or the file's bytes) to a 1-D float32 array at 16 kHz, mono.

    Multi-channel audio is averaged to mono. Raises a subclass of `AudioError` naming the file.
    """
    name = _source_name(source)
    if isinstance(source, bytes | bytearray):
        if len(source) == 0:
            raise EmptyAudioError(name, "empty input (0 bytes)")
        handle = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise AudioNotFoundError(name, "no such file")
        if path.stat().st_size == 0:
            raise EmptyAudioError(name, "empty file (0 bytes)")
        handle = path
    import soundfile as sf  # here, not at import: the learner's GPU check runs without it

    try:
        # always_2d gives (frames, channels) for every file, so mono and stereo share one path.
        samples, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioDecodeError(name, f"cannot decode as audio ({err})") from err
    if samples.shape[0] == 0:
        raise EmptyAudioError(name, "no audio samples")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]

    seconds = mono.shape[0] / rate
    if seconds > max_seconds:
        if on_long == "error":
            raise AudioTooLongError(name, f"{seconds:.1f} s is longer than the {max_seconds:.0f} s limit")
        mono = mono[: int(max_seconds * rate)]
    if rate != SAMPLE_RATE:
        import soxr

        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    if not np.all(np.isfinite(mono)):
        raise AudioDecodeError(name, "decoded samples contain NaN or infinity")
    return np.ascontiguousarray(mono, dtype=np.float32)

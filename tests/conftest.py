"""Shared fixtures: one tiny model, one synthetic data set and one vLLM engine per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_tone(
    path: Path, freq: float = 440.0, seconds: float = 1.0, rate: int = 16000, channels: int = 1, **kwargs
) -> Path:
    """A sine clip on disk (any format soundfile writes, chosen by suffix or `format=`)."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, rate, **kwargs)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from cluster.tiny_model import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0)


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    from cluster.synthetic import make_dataset

    out = tmp_path_factory.mktemp("data") / "synthetic"
    make_dataset(out, n=160, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_vllm(tiny_model_dir):
    """One vLLM engine (fp32, eager) on the tiny model, shared by every test that needs one."""
    from vllm import LLM

    llm = LLM(
        model=str(tiny_model_dir),
        dtype="float32",
        max_model_len=2048,
        limit_mm_per_prompt={"audio": 1},
        enforce_eager=True,
        seed=0,
    )
    yield llm
    del llm

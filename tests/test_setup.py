"""The install: `make setup` is idempotent and the CPU profile holds no CUDA-linked audio/vision wheels."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    shutil.which("make") is None or not (ROOT / ".venv/.installed").exists(),
    reason="needs a venv made by `make setup`",
)
def test_second_make_setup_has_nothing_to_do():
    result = subprocess.run(["make", "--question", "setup"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, "make setup would re-install: " + result.stdout + result.stderr


def test_cuda_linked_torchaudio_torchvision_torchcodec_are_absent():
    for name in ("torchaudio", "torchvision", "torchcodec"):
        assert importlib.util.find_spec(name) is None, f"{name} breaks `import vllm` beside torch+cpu"


def test_pinned_stack_imports():
    import deepspeed  # noqa: F401
    import ray
    import torch
    import transformers
    import vllm

    assert torch.__version__.startswith("2.13.0") and transformers.__version__ == "5.19.0"
    assert vllm.__version__ == "0.32.0" and ray.__version__ == "2.60.0"

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


def fp32_llm(model_dir):
    """A vLLM engine in fp32 (where its greedy output equals transformers' token for token)."""
    from vllm import LLM

    return LLM(
        model=str(model_dir),
        dtype="float32",
        max_model_len=2048,
        limit_mm_per_prompt={"audio": 1},
        enforce_eager=True,
        seed=0,
    )


@pytest.fixture(scope="session")
def tiny_vllm(tiny_model_dir):
    """One vLLM engine (fp32, eager) on the tiny model, shared by every test that needs one."""
    llm = fp32_llm(tiny_model_dir)
    yield llm
    del llm


def tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def pitch_batch(tokenizer, n_questions: int = 2, group: int = 4):
    """A LearnerBatch on the pitch task: completions alternate right/wrong, advantages +1/-1."""
    from learner.learner import LearnerBatch

    questions, waves, completions, index, advantages = [], [], [], [], []
    for q in range(n_questions):
        answer = "high" if q % 2 == 0 else "low"
        questions.append(("Is the tone high or low?", ["high", "low"]))
        waves.append(tone(2000.0 if answer == "high" else 300.0, 0.5 + 0.25 * q))
        for g in range(group):
            choice = answer if g % 2 == 0 else ("low" if answer == "high" else "high")
            text = f"<answer>{choice}</answer><|im_end|>" if g < group - 1 else f"<answer>{choice}"
            completions.append(tokenizer(text).input_ids)
            index.append(q)
            advantages.append(1.0 if choice == answer else -1.0)
    return LearnerBatch(questions, waves, completions, index, advantages)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_head():
    """One real Ray cluster for the whole session: `ray start --head` on loopback, with the dashboard
    (for `ray job submit`) and a Prometheus metrics endpoint. Stopped at the end of the session."""
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    ports = {"gcs": free_port(), "dashboard": free_port(), "metrics": free_port()}
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_metrics_report_interval_ms": "1000",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    head = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={ports['gcs']}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={ports['dashboard']}",
            f"--metrics-export-port={ports['metrics']}",
            "--num-cpus=8",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            "--include-dashboard=true",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{ports['gcs']}"
    deadline = time.time() + 120
    while (
        subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "status", f"--address={address}"],
            env=env,
            capture_output=True,
        ).returncode
        != 0
    ):
        if time.time() > deadline or head.poll() is not None:
            raise RuntimeError("ray start --head did not come up")
        time.sleep(1)
    yield {
        "address": address,
        "dashboard": f"http://127.0.0.1:{ports['dashboard']}",
        "metrics": f"http://127.0.0.1:{ports['metrics']}/metrics",
        "env": env,
    }
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(ray_head):
    """This test process, connected as a driver to the session's Ray cluster."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(
        address=ray_head["address"],
        log_to_driver=False,
        runtime_env={"env_vars": {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", "")}},
    )
    yield ray
    ray.shutdown()

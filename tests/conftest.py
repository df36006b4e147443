"""Shared fixtures: one tiny model, one synthetic data set, one vLLM engine and one Ray cluster per
test session. Helper functions live in helpers.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, fp32_llm, run_cli, stop_process_groups

from cluster.network import free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed JIT-builds a CPU op once; keep it in the project's cache (the Makefile sets the same),
# never in whatever folder a process happens to run in.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
# ... with one ninja: the venv's, first on PATH as the Makefile puts it (a system ninja of another
# version logs commands differently, and each would rebuild the op the other built).
if not os.environ["PATH"].startswith(str(Path(sys.executable).parent)):
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from assets.tiny_model import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0)


@pytest.fixture(scope="session")
def moe_model_dir(tmp_path_factory) -> Path:
    """The tiny Qwen3-Omni thinker (mixture of experts)."""
    from assets.tiny_model import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "qwen3-omni", family="qwen3-omni")


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    from assets.synthetic import make_dataset

    out = tmp_path_factory.mktemp("data") / "synthetic"
    make_dataset(out, n=160, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_vllm(tiny_model_dir):
    """One vLLM engine (fp32, eager) on the tiny model, shared by every test that needs one."""
    llm = fp32_llm(tiny_model_dir)
    yield llm
    del llm


@pytest.fixture(scope="session")
def ray_head():
    """One real Ray cluster for the whole session: `ray start --head` on loopback, with the dashboard
    (for `ray job submit`) and a Prometheus metrics endpoint. Stopped at the end of the session."""
    import shutil
    import sys
    import tempfile
    import time

    ports = {"gcs": free_port(), "dashboard": free_port(), "metrics": free_port()}
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        # Gauges reach the Prometheus endpoint within seconds (Ray's default: 10 s); every 1 s, each
        # worker's reports cost the session about 3 % of a core.
        "RAY_metrics_report_interval_ms": "5000",
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
    stop_process_groups([head])
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(ray_head):
    """This test process, connected as a driver to the session's Ray cluster."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(
        address=ray_head["address"],
        log_to_driver=False,
        runtime_env={"env_vars": {"TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"]}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def service_env(ray_head, tmp_path_factory):
    """Environment for training subprocesses: the session's Ray cluster and an asset cache built once
    (the tiny-cpu model with a 30-step warm start, the synthetic data)."""
    cache = tmp_path_factory.mktemp("cache")
    env = {
        **ray_head["env"],
        "RAY_ADDRESS": ray_head["address"],
        "AUDIO_GRPO_CACHE": str(cache),
        "PYTHONUNBUFFERED": "1",
    }
    # Build the tiny model (with its warm start) and the data once, before any timed run.
    built = run_cli(
        "prepare", "--config", "tiny-cpu", "--set", "model.warm_start_steps=30", env=env, timeout=600
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return env


@pytest.fixture(scope="session")
def clip_questions(tmp_path_factory):
    """Three pitch questions on tones of different lengths (wav files), for greedy comparisons."""
    import soundfile as sf
    from helpers import tone

    from rollout.audio import SAMPLE_RATE
    from rollout.question import AudioQuestion

    root = tmp_path_factory.mktemp("clips")
    questions = []
    for i, freq in enumerate([300.0, 2000.0, 800.0]):
        sf.write(root / f"{i}.wav", tone(freq, 1.0 + 0.3 * i), SAMPLE_RATE)
        questions.append(
            AudioQuestion(str(i), str(root / f"{i}.wav"), "Is the tone high or low?", ["high", "low"], "high")
        )
    return questions

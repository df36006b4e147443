"""Serving a training run: checkpoint reloads under concurrent load, and a dead engine said plainly."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import FORM, start_server
from helpers import wav_bytes as wav

from cluster.config import dump_config, load_config

pytestmark = pytest.mark.slow


def publish(model_dir: Path, checkpoints: Path, step: int) -> None:
    """Land a checkpoint the way training does: write `step-N.partial/`, then rename it."""
    partial = checkpoints / f"step-{step}.partial"
    shutil.copytree(model_dir, partial)
    (partial / "checkpoint.json").write_text(json.dumps({"step": step}))
    partial.rename(checkpoints / f"step-{step}")


@pytest.fixture(scope="module")
def followed_run(tiny_model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("followed") / "run"
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    # A run writes its config first; the server answers with its settings (here float32, thinking).
    run_config = load_config("tiny-cpu", [f"model.path={tiny_model_dir}", "prompt.thinking=true"])
    (run_dir / "config.yaml").write_text(dump_config(run_config))  # no checkpoint yet
    proc, url = start_server(["--run-dir", str(run_dir), "--poll-s", "0.1"])
    yield proc, url, checkpoints
    proc.kill()
    proc.wait(timeout=60)


def test_a_followed_run_is_served_with_its_own_settings(followed_run, tiny_model_dir):
    """Before the run's first checkpoint, its starting model answers as version 0; then the checkpoint."""
    _, url, checkpoints = followed_run
    policy = httpx.get(f"{url}/v1/policy", timeout=10).json()
    assert policy["thinking"] is True and policy["dtype"] == "float32" and policy["max_model_len"] == 2048
    assert policy["max_tokens"] == 12  # tiny-cpu's sampling.max_tokens: the default completion budget
    assert policy["version"] == 0 and Path(policy["checkpoint"]) == Path(tiny_model_dir), policy
    publish(tiny_model_dir, checkpoints, 1)
    deadline = time.time() + 60
    while httpx.get(f"{url}/v1/policy", timeout=10).json()["version"] != 1:
        assert time.time() < deadline, "the first checkpoint was not loaded within 60 s"
        time.sleep(0.1)


def test_reloads_under_concurrent_requests_lose_no_answer(followed_run, tiny_model_dir):
    proc, url, checkpoints = followed_run
    stop = threading.Event()

    def keep_publishing():
        step = 2
        while not stop.is_set():
            publish(tiny_model_dir, checkpoints, step)
            step += 1
            time.sleep(0.3)

    def client(i: int) -> list[tuple[int, int | None]]:
        seen = []
        with httpx.Client(timeout=120) as http:
            for _ in range(12):
                r = http.post(f"{url}/v1/answer", files={"audio": ("a.wav", wav(1 + i % 3))}, data=FORM)
                seen.append((r.status_code, r.json().get("policy_version")))
        return seen

    publisher = threading.Thread(target=keep_publishing)
    publisher.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(client, range(4)))
    finally:
        stop.set()
        publisher.join()
    log = proc.log_path.read_text()
    assert all(code == 200 for seen in results for code, _ in seen), (results, log[-3000:])
    for seen in results:  # each client sees the policy only move forward
        versions = [v for _, v in seen]
        assert versions == sorted(versions), versions
    assert len({v for seen in results for _, v in seen}) >= 3, results
    # Caches are cleared only once the requests in flight have drained.
    assert log.count("now serving") >= 3
    assert "Resetting the encoder cache when requests are in progress" not in log


def test_a_dead_engine_gets_503_and_fails_the_health_check(followed_run, tiny_model_dir):
    """Also when the engine dies in the middle of a checkpoint reload (whose call is then never
    answered): requests must not wait on that reload forever."""
    proc, url, checkpoints = followed_run
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    engines = [p for p in psutil.Process(proc.pid).children(recursive=True) if "EngineCore" in p.name()]
    assert engines, [p.name() for p in psutil.Process(proc.pid).children(recursive=True)]
    newest = max(int(p.name.split("-")[1]) for p in checkpoints.glob("step-*") if p.name[5:].isdigit())
    publish(tiny_model_dir, checkpoints, newest + 1)  # a reload starts within 0.1 s
    time.sleep(0.1)
    for engine in engines:
        engine.kill()
    deadline = time.time() + 60
    while httpx.get(f"{url}/healthz", timeout=10).status_code == 200 and time.time() < deadline:
        time.sleep(0.5)
    health = httpx.get(f"{url}/healthz", timeout=10)
    assert health.status_code == 503 and health.json() == {"status": "engine stopped"}
    r = httpx.post(f"{url}/v1/answer", files={"audio": ("a.wav", wav())}, data=FORM, timeout=60)
    assert r.status_code == 503, r.text
    assert "engine has stopped" in r.json()["detail"]

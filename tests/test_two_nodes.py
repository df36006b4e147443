"""Two Ray nodes on this machine (a head and a second raylet joined with `ray start --address`):
the learner is pinned to one by a custom resource, the rollout workers to the other; weights cross
from the learner's node to the workers' at every step and the run checkpoints and finishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import stop_process_groups

from cli.main import train_command
from cluster.network import free_port

ROOT = Path(__file__).resolve().parents[1]


def _ray(*args: str, env: dict, block: bool = False):
    command = [sys.executable, "-m", "ray.scripts.scripts", *args]
    if block:
        return subprocess.Popen(
            command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def two_nodes():
    port, temp_dir = free_port(), tempfile.mkdtemp(prefix="ray2", dir="/tmp")
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--disable-usage-stats"]
    head = _ray(
        "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}", "--include-dashboard=false",
        '--resources={"learner_node": 1}', *common, env=env, block=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    nodes = [head]
    try:
        deadline = time.time() + 120
        while _ray("status", f"--address={address}", env=env).returncode != 0:
            assert time.time() < deadline and head.poll() is None, "the head did not come up"
            time.sleep(1)
        nodes.append(
            _ray(
                "start",
                f"--address={address}",
                '--resources={"rollout_node": 1}',
                *common,
                env=env,
                block=True,
            )
        )
        while "rollout_node" not in _ray("status", f"--address={address}", env=env).stdout:
            assert time.time() < deadline, "the second node did not join"
            time.sleep(1)
        yield {**env, "RAY_ADDRESS": address}
    finally:
        stop_process_groups(nodes)


def test_learner_and_rollout_workers_on_different_nodes(two_nodes, service_env, tmp_path):
    # The session's assets (tiny model and data, built once); this run's own Ray cluster.
    env = {**two_nodes, "AUDIO_GRPO_CACHE": service_env["AUDIO_GRPO_CACHE"], "PYTHONUNBUFFERED": "1"}
    settings = {
        "model.warm_start_steps": 30,  # the session's model: built with 30
        "learner.node_resource": "learner_node",
        "rollout.node_resource": "rollout_node",
        "train.save_every": 2,
        "train.eval_every": 0,
        "sync.timeout_s": 120,
    }
    run_dir = tmp_path / "run"
    command = train_command(run_dir, max_steps=4, overrides=settings, extra=("--no-progress",))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]

    placement = json.loads((run_dir / "placement.json").read_text())
    learner_nodes = {b["node_id"] for b in placement["learner"]}
    rollout_nodes = {b["node_id"] for b in placement["rollout"]}
    assert len(learner_nodes) == 1 and len(rollout_nodes) == 1 and learner_nodes != rollout_nodes
    assert all("learner_node" in b["resources"] for b in placement["learner"])
    assert all("rollout_node" in b["resources"] for b in placement["rollout"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rollout_policy_versions"] == [4, 4]  # every update crossed to the other node
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2", "step-4"]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]

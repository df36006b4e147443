"""The distributed training service, for real: `audio-grpo train` on a `ray start --head` cluster.

One run is attacked while it trains (chaos: an actor of every kind is SIGKILLed, the
Prometheus endpoint is read, then the driver is killed and the run resumed). The live endpoint
(`train --serve`), overlapped rollouts and `serve --run-dir` following a run are checked on the
other families' runs (tests/test_families.py); `ray job submit` runs the paper's arms
(tests/test_baselines.py). Each run uses assets built once for the session.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import actor_pids, prometheus_text, run_cli, start_train, steps_logged, wait_for

from cli.main import cli_command

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_chaos_training_survives_killed_actors_of_every_kind_and_a_killed_driver(
    service_env, ray_head, tmp_path
):
    """Chaos: every two steps one actor of another kind (a rollout worker, the reward actor, a
    learner rank, the live endpoint; the order drawn at random) is SIGKILLed; the Prometheus
    endpoint is read; then the driver itself is SIGKILLed (as when its node dies) and `--resume`
    finishes the run from its last checkpoint. Each step is on record exactly once with its full
    samples, its data position and its policy version (steps since the last checkpoint are redone,
    not double-counted); every receiver ends on the last version."""
    run_dir = tmp_path / "run"
    started = time.time()
    kinds = ["RolloutWorker", "RewardScorer", "Learner", "LiveEndpoint"]
    seed = int(os.environ.get("CHAOS_SEED", started))  # the order is in every failure's message
    random.Random(seed).shuffle(kinds)
    kinds_seen = f"kill order {kinds} (CHAOS_SEED={seed})"
    # Ray hands actors to idle workers it started earlier, so a new actor's process may be older
    # than this run: tell this run's actors from earlier tests' by the pids that already had the name.
    earlier = {kind: set(actor_pids(kind)) for kind in kinds}
    proc = start_train(
        service_env, run_dir, "--max-steps", "16", "--set", "train.eval_every=8",
        "--set", "train.save_every=4", "--serve", "--serve-port", "0",
    )  # fmt: skip
    for i, kind in enumerate(kinds):
        wait_for(lambda i=i: len(steps_logged(run_dir)) >= 2 * (i + 1), 400, f"step {2 * (i + 1)}", proc)
        fresh = lambda kind=kind: [p for p in actor_pids(kind) if p not in earlier[kind]]  # noqa: E731
        os.kill(wait_for(fresh, 60, f"a {kind} pid", proc)[-1], signal.SIGKILL)
    exported = wait_for(
        lambda: "\nray_audio_grpo_reward_mean{" in (text := prometheus_text(ray_head["metrics"])) and text,
        120,
        "metrics on the Prometheus endpoint",
        proc,
    )
    wait_for(
        lambda: (run_dir / "checkpoints" / "step-12").is_dir() and len(steps_logged(run_dir)) >= 13,
        400,
        "the step-12 checkpoint and one more step",
        proc,
    )
    proc.kill()  # the driver: no cleanup
    proc.wait()
    assert len(steps_logged(run_dir)) < 16, kinds_seen
    resumed = subprocess.run(
        cli_command("train", "--resume", str(run_dir), "--no-progress"),
        cwd=ROOT,
        env=service_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, kinds_seen + resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr and "step 12" in resumed.stderr

    records = steps_logged(run_dir)
    assert [r["step"] for r in records] == list(range(1, 17)), kinds_seen
    assert all(r["samples"] == 64 for r in records)  # every question re-generated once, none twice
    assert [r["policy_version"] for r in records] == list(range(1, 17))
    assert [r["data_position"] for r in records] == [8 * s for s in range(1, 17)]  # no question skipped
    # Where each learner step went (the slowest rank's), inside the step's learner_s.
    phases = ("learner_reference_s", "learner_forward_s", "learner_backward_s", "learner_optimizer_s")
    assert all(0 < r[k] <= r["learner_s"] for r in records for k in phases)
    before_resume = records[:12]  # the resumed driver counts its own restarts from zero
    assert max(r["worker_restarts"] for r in before_resume) >= 3, kinds_seen
    assert max(r["learner_restarts"] for r in before_resume) >= 1, kinds_seen
    for name in (
        "reward_mean",
        "accuracy",
        "kl",
        "weight_sync_s",
        "policy_version",
        "generated_tokens_per_s",
    ):
        # The names the README gives for Grafana: Ray exports the gauge `audio_grpo_<name>` with its
        # own prefix, tagged with the run.
        assert re.search(rf'^ray_audio_grpo_{name}{{[^}}]*run="', exported, re.M), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rollout_policy_versions"] == [16, 16, 16]  # two workers and the live endpoint
    assert (run_dir / "config.yaml").is_file() and list((run_dir / "tensorboard").iterdir())
    assert (run_dir / "eval" / "step-16.json").is_file() and "eval_accuracy" in records[-1]

    # The last checkpoint loads in transformers, and in vLLM through `audio-grpo eval`.
    from transformers import Qwen2AudioForConditionalGeneration

    checkpoint = run_dir / "checkpoints" / "step-16"
    Qwen2AudioForConditionalGeneration.from_pretrained(checkpoint)
    data = Path(service_env["AUDIO_GRPO_CACHE"]) / "tiny-cpu" / "data"
    evaluated = run_cli(
        "eval", "--model", str(checkpoint), "--data", str(data / "test-mmau.json"),
        "--out", str(tmp_path / "pred.json"), "--max-items", "16", "--max-tokens", "12",
        "--dtype", "float32", "--json", env=service_env, timeout=600,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scores = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert scores["n"] == 16 and 0.0 <= scores["total"] <= 100.0
    assert len(json.loads((tmp_path / "pred.json").read_text())) == 16

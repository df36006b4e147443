"""bench/gpu_check.py, the planner-against-CUDA check run once on a GPU machine: its tiny CPU mode
runs every case's code path (forward, backward, token_logprobs, AdamW) and the planner's estimates."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import ROOT


def test_gpu_check_tiny_cpu(tmp_path):
    out = tmp_path / "x.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--tiny", "--device", "cpu", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    cases = report["cases"]
    assert set(cases) == {"learner_step", "token_logprobs", "optimizer_state"}
    assert all(case["status"] == "ok" for case in cases.values()), cases

    step = cases["learner_step"]
    assert [run["gradient_checkpointing"] for run in step["runs"]] == [False, True]
    for run in step["runs"]:
        assert run["estimate_gib"] > 0 and all(v > 0 for v in run["estimate_items_gib"].values())
        assert run["measured_gib"] is None  # nothing measured on a CPU
        assert run["loss"] > 0
    assert step["estimate_weights_gib"] > 0

    logprobs = cases["token_logprobs"]
    assert logprobs["estimate_ours_extra_gib"] > 0
    assert logprobs["agree"] is True and logprobs["max_abs_diff"] <= 1e-2

    optimizer = cases["optimizer_state"]
    assert optimizer["estimate_gib"] > 0 and optimizer["torch_adamw_state_gib"] > 0
    assert optimizer["estimate_bytes_per_param"] == 8.0  # float32: weights are the master copy
    assert report["ok"] is True

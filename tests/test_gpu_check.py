"""bench/gpu_check.py, the check run on a lent GPU machine: its tiny CPU mode runs every case's code
path (the micro-batch table with checkpointing off and on, token_logprobs, AdamW default and fused,
the project's Learner under DeepSpeed) with soundfile, soxr, vLLM and Ray hidden, as that machine
lacks them; and the wheels script lists what the machine needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import ROOT

HIDE = "import sys\nfor name in ('soundfile', 'soxr', 'vllm', 'ray'):\n    sys.modules[name] = None\n"


def test_gpu_check_tiny_cpu_runs_every_case_without_the_missing_libraries(tmp_path):
    out = tmp_path / "x.json"
    argv = ["bench/gpu_check.py", "--tiny", "--device", "cpu", "--out", str(out)]
    argv += ["--cases", "micro_batch_table,token_logprobs,optimizer_state,learner"]
    script = (
        HIDE
        + f"sys.argv = {argv!r}\nimport runpy\nrunpy.run_path('bench/gpu_check.py', run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    cases = report["cases"]
    assert set(cases) == {"micro_batch_table", "token_logprobs", "optimizer_state", "learner"}
    assert all(case["status"] == "ok" for case in cases.values()), cases

    points = cases["micro_batch_table"]["points"]
    assert [(p["checkpointing"], p["questions"]) for p in points] == [
        (False, 1),
        (False, 2),
        (True, 1),
        (True, 2),
    ]
    for point in points:
        assert point["step_s"] > 0 and point["no_grad_s"] > 0 and point["planner_gib"] > 0
        assert point["measured_gib"] is None  # nothing measured on a CPU
    # The same micro-batch keeps less with checkpointing, by the plan.
    assert points[2]["planner_gib"] < points[0]["planner_gib"]

    logprobs = cases["token_logprobs"]
    assert logprobs["agree"] is True and logprobs["max_abs_diff"] <= 1e-2

    optimizer = cases["optimizer_state"]
    assert optimizer["estimate_bytes_per_param"] == 8.0  # float32: weights are the master copy
    assert optimizer["fused_equals_foreach"] is True and optimizer["adamw_fused_step_s"] > 0

    learner = cases["learner"]
    phases = ("learner_reference_s", "learner_forward_s", "learner_backward_s", "learner_optimizer_s")
    assert all(learner[k] > 0 for k in phases) and learner["step_s"] >= sum(learner[k] for k in phases) * 0.9
    assert learner["plan_choices"][0] == "learner.parallel.micro_batch_questions: 1 (auto)"
    assert learner["planner_total_gib"] > 0 and learner["optimizer"].startswith("AdamW")
    assert report["ok"] is True


def test_gpu_wheels_script_names_what_the_gpu_machine_lacks():
    """The GPU image has torch and transformers only: the wheels script fetches DeepSpeed (built
    from its sdist) and what it imports, and gpu_check.sh installs them from that folder."""
    wheels = (ROOT / "bench" / "gpu_wheels.sh").read_text()
    for package in ("deepspeed==0.19.8", "pydantic==", "pydantic_core==", "hjson==", "transformers==5.19.0"):
        assert package in wheels, package
    check = (ROOT / "bench" / "gpu_check.sh").read_text()
    assert "--no-index" in check and "expandable_segments:True" in check and "--cases learner" in check

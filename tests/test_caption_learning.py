"""Proof of learning on the caption task: GRPO with CIDEr-D plus the tiny CLAP's similarity
(`tiny-cpu-caption-clap`: the model reward in its own Ray actor) lifts the held-out CIDEr-D of
greedy captions clearly above the starting policy's, measured by `audio-grpo eval` on the
warm-started model before training. The synthetic captions describe each tone's pitch in varied
wording (assets/synthetic_captions.py); the warm start teaches the format with captions of random
clips, so the starting policy writes fluent captions that ignore the audio. The tiny CLAP, trained
briefly on the training captions, runs in `audio-grpo retrieval-eval` and as the reward."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import ROOT, run_cli, steps_logged

from cli.main import train_command

STEPS = 120  # the step where the policy finds the pitch moves with float rounding, as for questions
MARGIN = 0.5  # CIDEr-D (x10 scale): captions of the right pitch score about 1 more than the others


@pytest.fixture(scope="module")
def caption_assets(service_env, tmp_path_factory):
    """The caption data and the warm-started model (built once), and the starting policy's
    held-out CIDEr-D."""
    built = run_cli("prepare", "--config", "tiny-cpu-caption-clap", env=service_env, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    cache = service_env["AUDIO_GRPO_CACHE"]
    out = tmp_path_factory.mktemp("caption-base") / "eval.json"
    base = run_cli(
        "eval", "--model", f"{cache}/tiny-cpu/model-caption",
        "--data", f"{cache}/tiny-cpu/captions/test.jsonl",
        "--max-items", "64", "--max-tokens", "40", "--dtype", "float32", "--out", str(out), "--json",
        env=service_env, timeout=600,
    )  # fmt: skip
    assert base.returncode == 0, base.stderr[-3000:]
    return json.loads(base.stdout.splitlines()[-1])


def test_retrieval_eval_and_the_clap_reward_run_on_the_tiny_clap(caption_assets, service_env):
    """The plumbing, not the model's quality: the tiny CLAP's retrieval figures vary with its
    training run (t2a R@10 from chance to twice chance seen; issue 22 keeps the quality check
    open), so this asserts what `retrieval-eval` and the reward compute, not how well."""
    from reward_models.clap import ClapReward

    cache = service_env["AUDIO_GRPO_CACHE"]
    data = f"{cache}/tiny-cpu/captions/test.jsonl"
    clap = f"{cache}/tiny-cpu/clap"
    result = run_cli("retrieval-eval", "--model", clap, "--data", data, "--json", env=service_env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    assert metrics["clips"] == 136 and metrics["captions"] == 680
    keys = [f"{d}_{m}" for d in ("t2a", "a2t") for m in ("R1", "R5", "R10", "mAP10")]
    assert all(0.0 <= metrics[k] <= 100.0 for k in keys)
    assert metrics["chance"]["t2a_R10"] == pytest.approx(1000 / 136)
    model = ClapReward(f"{cache}/tiny-cpu/clap")
    items = [json.loads(line) for line in open(data)][:8]
    paths = [f"{cache}/tiny-cpu/captions/{i['audio']}" for i in items] * 2
    scores = model.score(paths, ["<answer>a high tone</answer>", "no tag at all"] * 8)
    assert len(scores) == 16 and all(-1.0 <= v <= 1.0 for v in scores)
    assert len(model._clips) == 8  # each clip embedded once, then kept
    assert model.score(paths[:1], ["<answer>a high tone</answer>"])[0] == pytest.approx(scores[0], abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("config, extra", [("tiny-cpu-caption-clap", ())], ids=["cider-d-and-clap"])
def test_grpo_lifts_held_out_cider_d_above_the_start(config, extra, caption_assets, service_env, tmp_path):
    start = caption_assets
    assert start["metric"] == "cider_d" and start["caption_n"] == 64
    run_dir = tmp_path / "run"
    extra = ("--set", "sync.timeout_s=60", "--no-progress", *extra)
    command = train_command(run_dir, config=config, max_steps=STEPS, extra=extra)
    done = subprocess.run(command, cwd=ROOT, env=service_env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    records = steps_logged(run_dir)
    evals = [r for r in records if "eval_cider_d" in r]
    assert {"cider_d", "format_rate"} <= set(records[-1]) and "accuracy" not in records[-1]
    assert {"eval_bleu_4", "eval_rouge_l"} <= set(evals[-1])
    if config.endswith("clap"):  # the model reward's part, logged in training and evaluation
        assert "similarity" in records[-1] and "eval_similarity_clap" in evals[-1]
    best = max(r["eval_cider_d"] for r in evals)
    assert best > start["cider_d"] + MARGIN, (start, [(r["step"], r["eval_cider_d"]) for r in evals])
    saved = json.loads((run_dir / "eval" / f"step-{STEPS}.json").read_text())
    assert all("references" in item and "model_output" in item for item in saved)

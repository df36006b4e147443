"""The paper's other arms, run as users run them: the SFT baseline (full and LoRA), LoRA GRPO and
GRPO with thinking, each on the tiny CPU task with the session's Ray cluster and assets; the SFT
baselines and the thinking run go through `ray job submit`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import FAST, run_as_job, steps_logged

from cli.main import cli_command, train_command

ROOT = Path(__file__).resolve().parents[1]


def test_sft_and_warm_start_targets_earn_the_reward_of_the_format_they_teach():
    """SFT's target (the thinking variant's with prompt.thinking: the item's `reasoning` in the think
    block, empty where the data has none, as AVQA) and the tiny model's warm-start target."""
    from dataclasses import replace

    from assets.warm_start import warm_start_target
    from learner.sft import sft_target
    from reward.rewards import accuracy_reward, format_reward
    from rollout.question import AudioQuestion

    q = AudioQuestion("1", "a.wav", "High or low?", ["high", "low"], "high", {"reasoning": "2 kHz."})
    assert sft_target(q) == "<answer>high</answer>"
    assert sft_target(q, thinking=True) == "<think>2 kHz.</think> <answer>high</answer>"
    assert sft_target(replace(q, meta={}), thinking=True) == "<think></think> <answer>high</answer>"
    for thinking in (False, True):
        for target in (sft_target(q, thinking), warm_start_target("high", thinking)):
            assert format_reward(target, thinking) == 1.0 and accuracy_reward(target, "high") == 1.0
            assert format_reward(target, not thinking) == 0.0  # each format is its own


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny-cpu-sft", "tiny-cpu-sft-lora"])
def test_sft_baseline_learns_and_writes_the_same_run_directory(service_env, ray_head, tmp_path, preset):
    """`audio-grpo sft`, full and LoRA, submitted with `ray job submit`: the same data, prompt,
    evaluation and run directory as GRPO; held-out accuracy leaves chance on the in-distribution
    split; the checkpoint (LoRA: merged, under the base model's names) loads in transformers."""
    from safetensors import safe_open
    from transformers import Qwen2AudioForConditionalGeneration

    run_dir = tmp_path / "sft"
    command = cli_command("sft", "--config", preset, "--run-dir", str(run_dir), "--max-steps", "20")
    command += ["--no-progress", "--set", "train.eval_every=10", "--set", "train.save_every=10"]
    run_as_job(ray_head, service_env, command, tmp_path)
    records = steps_logged(run_dir)
    assert [r["step"] for r in records] == list(range(1, 21))
    assert records[0]["loss"] > records[-1]["loss"] and records[-1]["eval_accuracy"] > 75.0  # chance: 50
    assert [r["data_position"] for r in records] == [8 * s for s in range(1, 21)]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "eval" / "step-20.json").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["rollout_policy_versions"] == [20]
    checkpoint = run_dir / "checkpoints" / "step-20"
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as weights:
        assert not any("lora_" in key or "base_layer" in key for key in weights.keys())
    Qwen2AudioForConditionalGeneration.from_pretrained(checkpoint)


@pytest.mark.slow
def test_lora_grpo_learns_with_merged_weights_in_the_engines(service_env, tmp_path):
    """GRPO with LoRA adapters (the reference: the base with adapters off): held-out accuracy
    leaves chance; the rollout engines evaluated with merged weights at every version."""
    run_dir = tmp_path / "lora"
    command = train_command(run_dir, config="tiny-cpu-lora", max_steps=60, extra=tuple(FAST))
    done = subprocess.run(command, cwd=ROOT, env=service_env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    records = steps_logged(run_dir)
    assert [r["step"] for r in records] == list(range(1, 61))
    assert max(r["eval_accuracy"] for r in records if "eval_accuracy" in r) > 75.0, records[-1]  # chance: 50
    assert json.loads((run_dir / "summary.json").read_text())["rollout_policy_versions"] == [60, 60]


@pytest.mark.slow
def test_grpo_with_thinking_trains_and_evaluates_in_the_thinking_format(service_env, ray_head, tmp_path):
    """tiny-cpu-think, submitted with `ray job submit`: the thinking prompt, its warm start and its
    format reward, end to end; the policy answers `<think>..</think> <answer>..</answer>` in
    training and in evaluation."""
    from reward.rewards import format_reward

    run_dir = tmp_path / "think"
    command = train_command(
        run_dir,
        config="tiny-cpu-think",
        max_steps=10,
        extra=("--set", "train.eval_every=10", "--set", "sync.timeout_s=60", "--set", "rollout.num_workers=1")
        + ("--no-progress",),
    )
    run_as_job(ray_head, service_env, command, tmp_path)
    records = steps_logged(run_dir)
    assert [r["step"] for r in records] == list(range(1, 11))
    assert sum(r["format_rate"] for r in records) / len(records) > 0.8
    evaluated = json.loads((run_dir / "eval" / "step-10.json").read_text())
    formatted = [format_reward(item["response"], thinking=True) for item in evaluated]
    assert sum(formatted) / len(formatted) > 0.8, evaluated[:3]

"""The run config: each fact once, wired to the learner, frozen, and clear about keys that moved."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from cluster.config import (
    PRESETS,
    ConfigError,
    config_from_dict,
    dump_config,
    learner_config,
    load_config,
    sub_seed,
)


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS.glob("*.yaml")))
def test_presets_load_and_round_trip_through_config_yaml(preset):
    config = load_config(preset)
    assert config_from_dict(yaml.safe_load(dump_config(config))) == config


def test_the_learner_reads_sampling_and_prompt_from_their_one_place():
    config = load_config(
        "tiny-cpu", ["sampling.temperature=0.7", "sampling.max_tokens=20", "prompt.thinking=true"]
    )
    wired = learner_config(config)
    assert wired.sampling is config.sampling and wired.prompt is config.prompt
    assert wired.sampling.temperature == 0.7 and wired.sampling.max_tokens == 20 and wired.prompt.thinking
    assert "temperature" not in yaml.safe_load(dump_config(config))["learner"]["loss"]


def test_schedule_length_derives_from_max_steps_unless_set():
    assert learner_config(load_config("tiny-cpu", ["train.max_steps=77"])).optimizer.schedule_steps == 77
    set_ = load_config("tiny-cpu", ["train.max_steps=77", "learner.optimizer.schedule_steps=30"])
    assert learner_config(set_).optimizer.schedule_steps == 30
    assert set_.learner.optimizer.schedule_steps == 30  # the wiring never writes back into the config


def test_one_seed_gives_distinct_derived_seeds():
    config = load_config("tiny-cpu", ["train.seed=7"])
    seeds = {
        sub_seed(7, "learner"),
        sub_seed(7, "data"),
        sub_seed(7, "rollout", 0),
        sub_seed(7, "rollout", 1),
    }
    assert len(seeds) == 4 and learner_config(config).seed == sub_seed(7, "learner")
    assert sub_seed(8, "learner") != sub_seed(7, "learner")


def test_the_config_cannot_be_changed_after_loading():
    config = load_config("tiny-cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sampling.temperature = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learner.optim.lr=1e-5", "learner.optim.lr -> learner.optimizer.lr"),
        ("learner.optim.max_completion_length=64", "sampling.max_tokens"),
        ("rollout.sampling.n=4", "rollout.sampling.n -> sampling.n"),
        ("reward.weights.thinking=true", "reward.weights.thinking -> prompt.thinking"),
        ("learner.parallel.dtype=bf16", "'bf16' is now spelled 'bfloat16'"),
        ("learner.loss.betta=0.1", "unknown key(s) ['learner.loss.betta']"),
    ],
)
def test_moved_renamed_and_unknown_keys_are_named(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("tiny-cpu", [override])
    assert message in str(err.value)


def test_an_old_config_file_names_every_moved_key(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(
        "learner:\n  optim: {lr: 1.0e-6, dtype: bf16, thinking: true}\nrollout:\n  sampling: {n: 4}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(str(old))
    for moved in ("learner.optim.lr", "learner.optim.dtype", "learner.optim.thinking", "rollout.sampling.n"):
        assert moved in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learner.num_ranks=3"], "multiple of learner.num_ranks"),
        (["rollout.engine.tensor_parallel_size=2"], "own processes: set rollout.engine.in_process: false"),
        (
            [
                "rollout.engine.tensor_parallel_size=2",
                "rollout.engine.in_process=false",
                "rollout.gpus_per_worker=1",
            ],
            r"rollout.gpus_per_worker \(1\) must equal rollout.engine.tensor_parallel_size \(2\)",
        ),
        (["train.overlap_rollout=true", "sampling.temperature=0.8"], "temperature 1"),
        (["learner.lora.rank=8", "learner.parallel.zero_stage=3"], "lora with learner.parallel.zero_stage 3"),
        (["learner.parallel.reference_offload=true"], "reference_offload needs"),
    ],
)
def test_inconsistent_settings_fail_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny-cpu", overrides)


def test_engines_use_cuda_graphs_on_gpu_and_run_eagerly_on_cpu_unless_told(tiny_model_dir):
    import torch

    from rollout.vllm_engine import EngineConfig, engine_args

    m = str(tiny_model_dir)
    assert engine_args(m, EngineConfig())["enforce_eager"] == (not torch.cuda.is_available())
    assert engine_args(m, EngineConfig(enforce_eager=True))["enforce_eager"] is True
    assert engine_args(m, EngineConfig(enforce_eager=False))["enforce_eager"] is False
    assert (
        load_config("tiny-cpu", ["rollout.engine.enforce_eager=false"]).rollout.engine.enforce_eager is False
    )


def test_an_overlapped_cpu_update_takes_the_cores_the_engines_leave():
    """`cpu_threads: -1` is every core, except when the engines generate during the update."""
    import os

    assert learner_config(load_config("tiny-cpu")).parallel.cpu_threads == -1
    overlapped = learner_config(load_config("tiny-cpu", ["train.overlap_rollout=true"]))
    assert overlapped.parallel.cpu_threads == max(1, (os.cpu_count() or 1) - 2)  # tiny-cpu: 2 engines

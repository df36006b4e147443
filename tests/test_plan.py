"""The memory plan (`audio-grpo plan`, checked by `train` before anything starts): the GPU presets
fit the hardware they name and not less, advice names the setting, and the estimate of the
learner's state matches what a real learner holds."""

from __future__ import annotations

import pytest
import torch
from helpers import make_learner, pitch_batch, run_cli

from cluster.config import ConfigError, load_config
from cluster.plan import Hardware, check_fits, make_plan
from cluster.plan_learner import learner_needs
from cluster.plan_units import GIB, model_shape


def test_qwen2_audio_7b_shape_from_its_bundled_config():
    shape = model_shape("/models/Qwen2-Audio-7B-Instruct")  # not on disk: the bundled shape
    assert 8.39e9 < shape.params < 8.41e9 and shape.vocab == 156032 and shape.audio_tokens == 750


def test_a_model_shape_is_measured_once_per_config_then_read_from_the_cache(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Runs start without importing the family's model code: the shape measured on the meta device
    is kept under `{cache}/shapes`, keyed by the config's text (another config: another entry)."""
    import json
    from dataclasses import asdict

    monkeypatch.setenv("AUDIO_GRPO_CACHE", str(tmp_path / "cache"))
    first = model_shape(str(tiny_model_dir))
    [entry] = (tmp_path / "cache" / "shapes").glob("*.json")
    entry.write_text(json.dumps(asdict(first) | {"params": 7}))  # read back, not measured again
    assert model_shape(str(tiny_model_dir)).params == 7
    other = tmp_path / "deeper"
    other.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] += 1
    config["text_config"]["layer_types"].append("full_attention")
    (other / "config.json").write_text(json.dumps(config))
    deeper = model_shape(str(other))
    assert deeper.layers == first.layers + 1 and deeper.params > first.params
    assert len(list((tmp_path / "cache" / "shapes").glob("*.json"))) == 2
    entry.write_text("{not json")  # a damaged entry is measured again
    assert model_shape(str(tiny_model_dir)) == first


def test_qwen2_5_omni_7b_shape_is_its_thinker_with_the_vision_tower_frozen():
    shape = model_shape("/models/Qwen2.5-Omni-7B")  # the full omni config: the thinker's shape
    assert 8.9e9 < shape.params < 9.0e9 and shape.vocab == 152064 and shape.audio_layers == 32
    assert 0.6e9 < shape.frozen < 0.7e9  # the vision tower: not trained, no optimizer state


def test_qwen3_omni_shape_counts_every_expert_and_what_a_token_runs():
    """Mixture of experts: memory holds all 128 experts, a token runs 8; the fused expert tensor is
    the largest and larger than the default transfer bucket; LoRA finds attention only."""
    shape = model_shape("/models/Qwen3-Omni-30B-A3B-Instruct")
    assert 31.5e9 < shape.params < 32e9 and (shape.experts, shape.experts_per_token) == (128, 8)
    assert 3.5e9 < shape.active < 4.5e9 and shape.audio_tokens == 390  # 8x downsampling: 13/s
    assert shape.intermediate == 8 * 768  # what a token runs: activations and vLLM's profile
    assert shape.largest_tensor_name.endswith("mlp.experts.gate_up_proj")
    assert shape.largest_tensor == 128 * 2 * 768 * 2048 and shape.largest_layer > shape.largest_tensor
    plan = make_plan(load_config("r1-aqa-qwen3-omni", ["sync.bucket_mb=256"]), Hardware(1, 8, 80, 1024))
    text = plan.render()
    assert "8 of 128 experts" in text and "larger than sync.bucket_mb (256 MiB): it travels whole" in text
    transfer = next(n for n in plan.actors[0].needs if n.item.startswith("weight transfer"))
    assert transfer.nbytes == 3 * shape.largest_tensor * 2  # three buffers sized by the expert tensor
    full = make_plan(
        load_config("r1-aqa-qwen3-omni", ["learner.lora.rank=0", "learner.parallel.zero_stage=3"]),
        Hardware(1, 8, 80, 1024),
    )
    assert not full.fits and "gathers a layer with all its experts" in full.render()
    small = make_plan(load_config("r1-aqa-qwen3-omni"), Hardware(1, 8, 48, 1024))
    assert "one GPU cannot hold this engine" in small.render()
    assert "set rollout.engine.tensor_parallel_size and rollout.gpus_per_worker to 2" in small.render()
    tp = ["rollout.engine.tensor_parallel_size=2", "rollout.gpus_per_worker=2", "rollout.num_workers=2"]
    split = make_plan(load_config("r1-aqa-qwen3-omni", tp), Hardware(1, 8, 48, 1024)).actors[1]
    assert split.kind == "rollout worker (one engine over 2 GPUs; per GPU)" and not split.problems, split
    weights = next(n.nbytes for n in split.needs if n.item == "weights")
    assert weights == shape.params * 2 / 2  # bf16, half on each GPU


@pytest.mark.parametrize(
    ("preset", "nodes", "gpu_gib"),
    [("r1-aqa", 1, 80), ("r1-aqa-h200", 1, 141), ("r1-aqa-2node", 2, 80)]
    + [("r1-aqa-think", 1, 80), ("r1-aqa-sft-full", 1, 80), ("r1-aqa-sft-lora", 1, 80)]
    + [("r1-aqa-af3", 1, 80), ("r1-aqa-omni", 1, 80), ("aac-clotho", 1, 80), ("r1-aqa-qwen3-omni", 1, 80)]
    + [("r1-aqa-qwen3-omni-full", 3, 80)],
)
def test_gpu_presets_fit_the_hardware_they_name(preset, nodes, gpu_gib):
    config = load_config(preset)
    assert (config.hardware.nodes, config.hardware.gpus_per_node, config.hardware.gpu_gib) == (
        nodes,
        8,
        gpu_gib,
    )
    plan = make_plan(config, Hardware(nodes, 8, gpu_gib, 1024))
    assert plan.fits, plan.render()
    learner = plan.actors[0]
    low = 0.2 if config.learner.lora.rank else 0.4  # LoRA: no full gradients or optimizer state
    assert low < learner.total() / (gpu_gib * GIB) < 1.0  # uses the card, with room to spare


def test_a_config_that_cannot_fit_is_refused_with_the_setting_to_change():
    config = load_config("r1-aqa")
    small_cards = make_plan(config, Hardware(1, 8, 40, 1024))
    assert not small_cards.fits
    assert "reference_offload" in small_cards.render() and "num_ranks" in small_cards.render()
    no_zero3 = make_plan(load_config("r1-aqa", ["learner.parallel.zero_stage=1"]), Hardware(1, 8, 80, 1024))
    assert not no_zero3.fits and "zero_stage: 3" in no_zero3.render()
    one_node = make_plan(load_config("r1-aqa-2node"), Hardware(1, 8, 80, 1024))
    assert "ask for 16 GPUs" in one_node.render()
    short_kv = make_plan(
        load_config("r1-aqa", ["rollout.engine.gpu_memory_utilization=0.22"]), Hardware(1, 8, 80, 1024)
    )
    assert "gpu_memory_utilization" in short_kv.render() and not short_kv.fits
    host = make_plan(load_config("r1-aqa", ["learner.parallel.zero_stage=2"]), Hardware(1, 8, 141, 60))
    assert "host memory" in host.render()
    with pytest.raises(ConfigError, match="does not fit its hardware"):
        check_fits(load_config("r1-aqa", ["hardware.gpu_gib=24", "hardware.host_gib=1024"]))


def test_a_reward_model_share_sits_beside_a_rollout_engine_and_must_fit_there():
    config = load_config("aac-clotho")
    plan = make_plan(config, Hardware(1, 8, 80, 1024))
    clap = next(a for a in plan.actors if a.kind == "reward model similarity_clap")
    assert clap.total() == 4 * GIB and "beside a rollout engine" in plan.render()
    whole_gpus = make_plan(load_config("aac-clotho", ["rollout.gpus_per_worker=1"]), Hardware(1, 8, 80, 1024))
    assert not whole_gpus.fits and "rollout.gpus_per_worker <= 0.9" in whole_gpus.render()
    greedy = ["rollout.engine.gpu_memory_utilization=0.95"]
    crowded = make_plan(load_config("aac-clotho", greedy), Hardware(1, 8, 80, 1024))
    assert not crowded.fits and "reward.models[0].gpu_memory_gib" in crowded.render()
    own_gpu = ["rollout.num_workers=3", "reward.models=[{kind: clap, path: /m, gpus_per_actor: 1}]"]
    assert make_plan(load_config("aac-clotho", own_gpu), Hardware(1, 8, 80, 1024)).fits
    too_many = ["reward.models=[{kind: clap, path: /m, gpus_per_actor: 1}]"]
    over = make_plan(load_config("aac-clotho", too_many), Hardware(1, 8, 80, 1024))
    assert "ask for 8.6 GPUs" in over.render()


@pytest.mark.parametrize("lora_rank", [0, 8])
def test_estimated_learner_state_matches_a_real_learner(tiny_model_dir, lora_rank):
    """Weights, Adam state and reference as the plan counts them against the tensors a float32
    ZeRO-0 learner holds after a step (gradients are freed by then and counted as one more copy);
    with LoRA, Adam state for the adapters only and no reference copy."""
    from learner.config import LoraSettings

    learner = make_learner(tiny_model_dir, lora=LoraSettings(rank=lora_rank))
    learner.train_step(pitch_batch(learner.processor.tokenizer))
    measured = sum(
        p.numel() * p.element_size() for n, p in learner.model.named_parameters() if ".lora_" not in n
    )
    measured += sum(
        t.numel() * t.element_size()
        for state in learner.optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    if learner.reference is not None:
        measured += sum(p.numel() * p.element_size() for p in learner.reference.parameters())
    overrides = [f"model.path={tiny_model_dir}", "learner.parallel.dtype=float32", "learner.loss.beta=0.04"]
    config = load_config("tiny-cpu", [*overrides, f"learner.lora.rank={lora_rank}"])
    needs = {n.item.split(" (")[0]: n.nbytes for n in learner_needs(config, model_shape(str(tiny_model_dir)))}
    estimate = needs["weights"] + needs["optimizer state"] + needs.get("reference model", 0.0)
    assert estimate == pytest.approx(measured, rel=0.02), (estimate, measured)


def test_plan_command_and_train_refuse_what_cannot_fit(tiny_model_dir, tmp_path):
    fits = run_cli("plan", "--config", "r1-aqa", "--host-gib", "1024")
    assert fits.returncode == 0 and "verdict: fits" in fits.stdout
    too_small = run_cli("plan", "--config", "r1-aqa", "--gpu-gib", "24", "--host-gib", "1024")
    assert too_small.returncode == 1 and "DOES NOT FIT" in too_small.stdout
    train = run_cli(
        "train", "--config", "tiny-cpu", "--run-dir", str(tmp_path / "run"), "--no-progress",
        "--set", f"model.path={tiny_model_dir}", "--set", f"data.train={tmp_path}/d/train.jsonl",
        "--set", f"data.eval={tmp_path}/d/test.json", "--set", "data.synthetic_items=16",
        "--set", "hardware.host_gib=1",
    )  # fmt: skip
    assert train.returncode == 2 and "does not fit its hardware" in train.stderr, train.stderr[-2000:]
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before anything started


def test_auto_micro_batch_is_the_most_questions_that_fit_and_a_given_one_is_honoured():
    """`auto`: the plan picks the most questions per micro-batch that fit (the allocator's reserve
    included), prints the choice on a line of its own with what limited it, and the run reads that
    number; a number given is honoured, and refused when it does not fit; on CPU `auto` is 1."""
    h200 = run_cli("plan", "--config", "r1-aqa-h200", "--gpu-gib", "141", "--host-gib", "1024")
    assert h200.returncode == 0, h200.stdout + h200.stderr
    line = next(
        x for x in h200.stdout.splitlines() if x.startswith("learner.parallel.micro_batch_questions:")
    )
    chosen = int(line.split(": ")[1].split(" ")[0])
    assert line == f"learner.parallel.micro_batch_questions: {chosen} (auto)" and chosen >= 2
    assert "limited by: GPU memory" in h200.stdout and "allocator reserve" in h200.stdout
    config = load_config("r1-aqa-h200")
    plan = make_plan(config, Hardware(1, 8, 141, 1024))
    assert plan.config.learner.parallel.micro_batch_questions == chosen and plan.fits
    # What limited it does not fit when given (the choice evens the passes: 3 of 4 would take 2 too).
    too_many = int(h200.stdout.split("limited by: GPU memory: ")[1].split(" ")[0])
    assert chosen < too_many <= 4
    over = load_config("r1-aqa-h200", [f"learner.parallel.micro_batch_questions={too_many}"])
    refused = make_plan(over, Hardware(1, 8, 141, 1024))
    assert not refused.fits and "micro_batch_questions" in refused.render()
    given = make_plan(
        load_config("r1-aqa-h200", ["learner.parallel.micro_batch_questions=1"]), Hardware(1, 8, 141, 1024)
    )
    assert given.config.learner.parallel.micro_batch_questions == 1 and given.fits
    assert not any("micro_batch_questions" in c for c in given.choices)
    # Gradient checkpointing on 80 GB: all of a rank's questions in one micro-batch.
    r1 = make_plan(load_config("r1-aqa"), Hardware(1, 8, 80, 1024))
    assert r1.config.learner.parallel.micro_batch_questions == 4 and r1.fits
    on_cpu = load_config("r1-aqa", ["learner.gpus_per_rank=0", "rollout.gpus_per_worker=0"])
    cpu = make_plan(on_cpu, Hardware(1, 0, 0, 1024))
    assert cpu.config.learner.parallel.micro_batch_questions == 1
    assert cpu.config.learner.parallel.no_grad_questions == 1


def test_gpu_actors_run_with_expandable_segments(monkeypatch):
    """The allocator reserve assumes expandable segments: every actor placed with GPUs gets them
    (a value the driver's environment sets is kept); CPU actors get no runtime env of their own."""
    from cluster.placement import Placement

    placement = Placement(None, [0], [1], [2], [])
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    gpu = placement.options(0, 4, 1)
    assert gpu["runtime_env"] == {"env_vars": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}}
    assert "runtime_env" not in placement.options(2, 0.1, 0)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    assert (
        placement.options(1, 2, 1)["runtime_env"]["env_vars"]["PYTORCH_CUDA_ALLOC_CONF"]
        == "max_split_size_mb:512"
    )

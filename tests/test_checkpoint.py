"""Checkpoints: HF folders that load in transformers and vLLM, exact resume, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_same_greedy, fp32_llm, hf_greedy, make_learner, pitch_batch, vllm_greedy
from safetensors import safe_open

import learner.checkpoint as checkpoint_module
from learner.checkpoint import latest_checkpoint, read_manifest


@pytest.fixture
def trained(tiny_model_dir, tmp_path):
    """A learner after two steps, and its checkpoint."""
    learner = make_learner(tiny_model_dir, dtype="float32")
    batch = pitch_batch(learner.processor.tokenizer)
    learner.train_step(batch)
    learner.train_step(batch)
    path = learner.save(str(tmp_path / "checkpoints" / "step-2"), {"data_position": 17})
    return learner, batch, path


def test_checkpoint_is_a_published_layout_hf_folder(trained):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    learner, _, path = trained
    with safe_open(f"{path}/model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert "language_model.lm_head.weight" in keys
    assert not any(k.startswith("language_model.model.model.") for k in keys)
    loaded = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    for (name, mine), theirs in zip(
        learner.model.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(mine, theirs), name  # the trained weights, not the initial ones
    AutoProcessor.from_pretrained(path)
    manifest = read_manifest(path)
    assert manifest["step"] == 2 and manifest["state"] == {"data_position": 17}
    assert json.loads((Path(path) / "generation_config.json").read_text())["eos_token_id"]


def test_zero3_checkpoint_gathers_group_by_group_and_shards_load_in_transformers(tiny_model_dir, tmp_path):
    """Under ZeRO-3 the HF folder is written from weights gathered one group at a time (never the
    whole model), streamed into shards; a sharded folder with its index loads in transformers."""
    from transformers import Qwen2AudioForConditionalGeneration

    from learner.hf_format import save_hf_folder, write_weights

    learner = make_learner(tiny_model_dir, dtype="float32", zero_stage=3)
    learner.train_step(pitch_batch(learner.processor.tokenizer))
    whole = torch.from_numpy(learner.flat_parameters())
    streamed = [(name, tensor.clone()) for name, tensor in learner.gathered_weights(group_bytes=64 << 10)]
    assert torch.equal(torch.cat([t.flatten() for _, t in streamed]), whole)
    path = learner.save(str(tmp_path / "checkpoints" / "step-1"))
    save_hf_folder(learner.model, learner.processor, tmp_path / "sharded", iter(streamed))
    (tmp_path / "sharded" / "model.safetensors").unlink()
    names = write_weights(iter(streamed), tmp_path / "sharded", shard_bytes=256 << 10)
    assert len(names) > 2 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    for folder in (Path(path), tmp_path / "sharded"):
        loaded = Qwen2AudioForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
        assert torch.equal(torch.cat([p.detach().flatten() for p in loaded.parameters()]), whole), folder


@pytest.mark.slow
def test_checkpoint_loads_in_vllm_with_hf_equal_greedy(trained):
    _, _, path = trained
    llm = fp32_llm(path)
    try:
        assert_same_greedy(hf_greedy(path), vllm_greedy(llm, path))
    finally:
        llm.llm_engine.engine_core.shutdown()


def test_resume_continues_exactly(tiny_model_dir, trained):
    learner, batch, path = trained
    learner.train_step(batch)
    learner.train_step(batch)
    straight = learner.flat_parameters()

    resumed = make_learner(tiny_model_dir, dtype="float32")  # built from the initial model (the reference)
    state = resumed.load(path)
    assert state == {"data_position": 17} and resumed.step == 2
    third = resumed.train_step(batch)
    resumed.train_step(batch)
    assert third["step"] == 3 and third["kl"] > 0  # the reference is still the initial model
    assert (resumed.flat_parameters() == straight).all()  # optimizer moments and scheduler restored


def test_a_crash_mid_save_leaves_no_checkpoint_that_looks_complete(trained, monkeypatch):
    learner, batch, path = trained
    root = Path(path).parent

    def full_disk(model, processor, out_dir, *args, **kwargs):
        (out_dir / "model.safetensors").write_bytes(b"\x00" * 100)  # half a file, then the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_hf_folder", full_disk)
    learner.train_step(batch)
    with pytest.raises(OSError, match="No space left"):
        learner.save(str(root / "step-3"))
    assert not (root / "step-3").exists() and (root / "step-3.partial").exists()
    assert latest_checkpoint(root) == Path(path)
    monkeypatch.undo()
    learner.save(str(root / "step-3"))  # the next save replaces the partial one
    assert latest_checkpoint(root) == root / "step-3" and not (root / "step-3.partial").exists()


def test_resume_refuses_a_decaying_schedule_of_another_length(tiny_model_dir, tmp_path):
    learner = make_learner(tiny_model_dir, lr_schedule="cosine", schedule_steps=10)
    learner.train_step(pitch_batch(learner.processor.tokenizer, n_questions=1, group=2))
    path = learner.save(str(tmp_path / "step-1"))
    longer = make_learner(tiny_model_dir, lr_schedule="cosine", schedule_steps=20)  # max_steps grew
    with pytest.raises(ValueError, match="schedule_steps=10"):
        longer.load(path)


def test_resume_refuses_a_different_world_size(trained, tiny_model_dir, tmp_path):
    _, _, path = trained
    manifest = read_manifest(path)
    manifest["world_size"] = 2
    (Path(path) / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="2 learner ranks"):
        make_learner(tiny_model_dir).load(path)


def test_retention_keeps_the_newest_complete_checkpoints_and_the_best_and_never_a_partial_one(tmp_path):
    from learner.checkpoint import MANIFEST, prune_checkpoints

    for step in (10, 20, 30, 40):
        (tmp_path / f"step-{step}").mkdir()
        (tmp_path / f"step-{step}" / MANIFEST).write_text("{}")
    (tmp_path / "step-50.partial").mkdir()  # a save in progress: neither counted nor the newest
    assert prune_checkpoints(tmp_path, keep=0) == []
    gone = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in gone] == ["step-10", "step-20"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-30", "step-40", "step-50.partial"]
    assert latest_checkpoint(tmp_path).name == "step-40"
    (tmp_path / "step-60").mkdir()
    (tmp_path / "step-60" / MANIFEST).write_text("{}")
    scores = {30: 75.0, 40: 50.0, 60: 62.5}  # held-out accuracy at the checkpointed steps
    assert [p.name for p in prune_checkpoints(tmp_path, keep=1, scores=scores)] == ["step-40"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-30", "step-50.partial", "step-60"]

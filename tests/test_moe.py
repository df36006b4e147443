"""The first mixture-of-experts family, Qwen3-Omni's thinker (families/qwen3_omni.py): checkpoints
in the published per-expert layout, fused expert tensors in weight updates, and vLLM's CPU experts
answering as the learner does after every update (its CPU kernels prepack expert weights at load)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_learner, pitch_batch
from safetensors import safe_open

from families import FAMILIES, adapter_for, load_processor
from rollout.prompt import render_prompt


def test_checkpoint_is_the_published_per_expert_layout_and_updates_send_fused_experts(moe_model_dir):
    from learner.config import LoraSettings
    from learner.lora import add_lora, engine_weights, lora_layers

    with safe_open(str(moe_model_dir / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
        gate = weights.get_tensor("thinker.model.layers.0.mlp.experts.3.gate_proj.weight")
    assert all(k.startswith("thinker.") for k in keys)
    config = json.loads((moe_model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen3_omni_moe" and config["enable_audio_output"] is False
    assert config["architectures"] == ["Qwen3OmniMoeForConditionalGeneration"]  # what vLLM registers
    text = config["thinker_config"]["text_config"]
    experts, hidden, inner = text["num_experts"], text["hidden_size"], text["moe_intermediate_size"]
    assert hidden % 32 == 0 and inner % 32 == 0 and text["head_dim"] >= 32  # vLLM's CPU kernels
    for e in range(experts):
        assert {
            f"thinker.model.layers.1.mlp.experts.{e}.{k}_proj.weight" for k in ("gate", "up", "down")
        } <= set(keys)
    assert not any(k.endswith(("experts.gate_up_proj", "experts.down_proj")) for k in keys)

    processor = load_processor(moe_model_dir)  # no torchvision here: families/omni_compat.py
    assert type(processor).__name__ == "Qwen3OmniMoeProcessor" and processor.video_processor.patch_size == 16
    prompt = render_prompt(processor, "Is the tone high or low?", ["high", "low"])
    assert "<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>Is the tone high or low?" in prompt
    model = adapter_for(moe_model_dir).load(str(moe_model_dir), torch.float32)
    assert adapter_for(model) is FAMILIES["qwen3-omni"]
    # In memory the experts are fused ([E, 2I, H], gate half first); files hold them per expert.
    fused = model.model.layers[0].mlp.experts.gate_up_proj
    assert fused.shape == (experts, 2 * inner, hidden) and torch.equal(fused[3, :inner], gate)
    # One module holds every expert (no module per expert): ZeRO-3 gathers them together.
    experts = model.model.layers[0].mlp.experts
    assert [n for n, _ in experts.named_parameters()] == ["gate_up_proj", "down_proj"]
    assert not any(isinstance(m, torch.nn.Linear) for m in experts.modules())
    adapter = adapter_for(model)
    written = [
        n
        for name, t in model.state_dict().items()
        for n, _ in adapter.checkpoint_tensors(adapter.published_name(name), t)
    ]
    assert sorted(written) == sorted(keys)
    # Updates: fused experts whole (vLLM's fused-MoE loader takes them), never the vision tower.
    adapter.freeze_unused(model)
    sent = {w.name for w in engine_weights(model)}
    assert (
        "thinker.model.layers.0.mlp.experts.gate_up_proj" in sent
        and "thinker.model.layers.0.mlp.gate.weight" in sent
    )
    assert not any(n.startswith("thinker.visual.") for n in sent)
    # LoRA's default targets find attention only: experts are parameters, not Linear modules.
    lora = add_lora(adapter.load(str(moe_model_dir), torch.float32), LoraSettings(rank=4))
    layers = len(adapter.decoder(lora).layers)
    assert sorted({n.rsplit(".", 1)[-1] for n in lora_layers(lora)}) == [
        "k_proj",
        "o_proj",
        "q_proj",
        "v_proj",
    ]
    assert len(lora_layers(lora)) == 4 * layers


@pytest.mark.slow
def test_vllm_experts_answer_as_the_learner_after_each_weight_update(
    moe_model_dir, ray_cluster, clip_questions
):
    """After each update a vLLM engine (CPU experts) gives the learner's greedy output, and its
    log-probs of those tokens equal the learner's: a wrong expert weight shows in either."""
    ray = ray_cluster
    from cluster.actors import RolloutActor
    from cluster.network import free_port
    from cluster.sync_client import ReceiverClient
    from learner.batch import LearnerBatch
    from rollout.audio import load_audio
    from rollout.hf_engine import hf_generate
    from rollout.sampling import SamplingConfig
    from rollout.vllm_engine import EngineConfig

    sampling = SamplingConfig(max_tokens=16)
    worker = RolloutActor.remote(str(moe_model_dir), EngineConfig(dtype="float32"), weight_transfer="gloo")
    before = ray.get(worker.generate.remote(clip_questions, sampling, greedy=True))
    learner = make_learner(moe_model_dir, lr=5e-3, beta=0.0)
    batch = pitch_batch(learner.processor.tokenizer)
    init = {
        "master_address": "127.0.0.1",
        "master_port": free_port(),
        "world_size": 2,
        "bucket_bytes": 1 << 16,
        "timeout_s": 60.0,
    }
    learner.init_weight_transfer("gloo", init, ReceiverClient([worker], [1], 60.0), "float32")
    texts = [(q.question, q.choices) for q in clip_questions]
    waves = [load_audio(q.audio_path) for q in clip_questions]
    for version in (1, 2):
        for _ in range(2):
            learner.train_step(batch)
        assert learner.send_weights(version)["ok"]
        after = ray.get(worker.generate.remote(clip_questions, sampling, greedy=True, want_logprobs=True))
        tokens = [r.completions[0].token_ids for r in after]
        assert tokens == [
            g[0] for g in hf_generate(learner.model, learner.processor, texts, waves, sampling, greedy=True)
        ]
        assert tokens != [r.completions[0].token_ids for r in before]  # the weights really changed
        scored = LearnerBatch(texts, waves, tokens, [0, 1, 2], [0.0, 0.0, 0.0])
        encoded = learner.encode(scored)
        micro = learner.micro_batches(scored, encoded)  # one completion per question: row = question
        theirs = {
            q: row
            for m, values in zip(micro, learner.old_logprobs(scored, micro, encoded), strict=True)
            for q, row in zip(m.questions, values, strict=True)
        }
        for i, result in enumerate(after):
            engine = torch.tensor(result.completions[0].logprobs)
            assert torch.allclose(engine, theirs[i][: len(engine)].float(), atol=1e-3), (version, i)
    ray.kill(worker)

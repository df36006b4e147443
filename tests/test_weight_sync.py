"""Weight transfer through vLLM's API: chunk plans, the policy gate, a real learner -> two vLLM
workers (Ray actors; one engine tensor-parallel over two processes) update in bounded memory with
greedy output equal to the learner's."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import make_learner, pitch_batch

from cluster.network import free_port
from rollout.hf_engine import hf_generate
from rollout.policy_gate import PolicyGate
from rollout.sampling import SamplingConfig
from rollout.weight_transfer import plan_chunks


def test_chunks_close_after_the_tensor_that_crosses_the_bucket():
    assert plan_chunks([40, 40, 40, 10, 200, 5], bucket_bytes=100) == [range(0, 3), range(3, 5), range(5, 6)]
    assert plan_chunks([], 100) == []
    assert plan_chunks([100, 1], 100) == [range(0, 2)]  # exactly full stays open (vLLM's rule)


def test_gate_keeps_requests_away_from_an_update_and_stays_shut_after_a_failed_one():
    gate = PolicyGate()
    order: list[str] = []

    def request():
        with gate.generating(timeout_s=10):
            order.append("generate")

    gate.open_update(timeout_s=1)
    waiting = threading.Thread(target=request)
    waiting.start()
    time.sleep(0.3)
    assert order == []  # the request waits for the whole update
    order.append("update done")
    gate.close_update()
    waiting.join(5)
    assert order == ["update done", "generate"]

    with gate.generating(timeout_s=1), pytest.raises(TimeoutError, match="generations still running"):
        gate.open_update(timeout_s=0.2)  # an update waits for generations in flight
    gate.open_update(timeout_s=1)
    gate.fail_update("receiver failed half-way")
    with pytest.raises(RuntimeError, match="cannot be trusted: receiver failed half-way"):
        with gate.generating(timeout_s=5):
            pass


def _greedy_ids(results) -> list[list[int]]:
    return [r.completions[0].token_ids for r in results]


@pytest.mark.slow
def test_learner_streams_weights_to_two_workers_in_bounded_memory(
    tiny_model_dir, ray_cluster, clip_questions
):
    ray = ray_cluster
    from cluster.actors import RolloutActor
    from cluster.sync_client import ReceiverClient
    from rollout.audio import load_audio
    from rollout.vllm_engine import EngineConfig

    sampling = SamplingConfig(max_tokens=16)
    # The second engine runs over two tensor-parallel workers (their own processes, on CPU too):
    # each joins the transfer group with its own rank and loads its shard of every tensor.
    engines = [
        EngineConfig(dtype="float32"),
        EngineConfig(dtype="float32", tensor_parallel_size=2, in_process=False),
    ]
    workers = [RolloutActor.remote(str(tiny_model_dir), e, weight_transfer="gloo") for e in engines]
    learner = make_learner(tiny_model_dir, lr=2e-2, beta=0.0)  # trains while the engines start
    batch = pitch_batch(learner.processor.tokenizer)
    for _ in range(3):
        learner.train_step(batch)
    before = ray.get(workers[0].generate.remote(clip_questions, sampling, greedy=True))  # no update yet
    bucket = 64 * 1024
    init = {
        "master_address": "127.0.0.1",
        "master_port": free_port(),
        "world_size": 4,  # the learner, then 1 + 2 engine workers
        "bucket_bytes": bucket,
        "timeout_s": 60.0,
    }
    learner.init_weight_transfer("gloo", init, ReceiverClient(workers, [1, 2], 60.0), "float32")
    outcome = learner.send_weights(1)
    assert outcome["ok"], outcome
    assert ray.get([w.get_policy_version.remote() for w in workers]) == [1, 1]

    waves = [load_audio(q.audio_path) for q in clip_questions]
    texts = [(q.question, q.choices) for q in clip_questions]

    def learner_greedy() -> list[list[int]]:
        groups = hf_generate(learner.model, learner.processor, texts, waves, sampling, greedy=True)
        return [g[0] for g in groups]

    after = [ray.get(w.generate.remote(clip_questions, sampling, greedy=True)) for w in workers]
    expected = learner_greedy()
    assert [_greedy_ids(a) for a in after] == [expected, expected]
    assert expected != _greedy_ids(before)  # the weights really changed
    assert all(r.policy_version == 1 for a in after for r in a) and all(r.policy_version == 0 for r in before)

    # Memory: no buffer the size of the model on either side, only a few chunks at a time.
    model_bytes = outcome["bytes"]
    largest = max(p.numel() * 4 for p in learner.model.parameters())
    few_chunks = 3 * (bucket + largest)
    stats = [ray.get(w.transfer_stats.remote()) for w in workers]
    assert [s["workers"] for s in stats] == [1, 2]  # the second engine received on both its workers
    receivers = [s["peak_bytes"] for s in stats]
    assert model_bytes > 8 * bucket
    for peak in [outcome["sender_peak_bytes"], *receivers]:
        assert 0 < peak <= few_chunks and peak / model_bytes < 0.5, (peak, model_bytes)

    # A second update goes through the same group.
    for _ in range(3):
        learner.train_step(batch)
    assert learner.send_weights(2)["ok"]
    again = ray.get(workers[1].generate.remote(clip_questions, sampling, greedy=True))
    assert _greedy_ids(again) == learner_greedy() and again[0].policy_version == 2
    for w in workers:
        ray.kill(w)


@pytest.mark.slow
def test_policy_source_streams_whole_tensors_group_by_group_under_zero3(tiny_model_dir):
    """Under ZeRO-3 each group is gathered, yielded whole (published names, full shapes) and released
    before the next: the source never holds more than a group. Frozen weights (the encoder's fixed
    positional table) never change, so they are not sent: every engine holds them."""
    import torch

    from families import adapter_for
    from learner.weight_source import PolicySource

    learner = make_learner(tiny_model_dir, zero_stage=3)
    with learner.gathered():
        whole = {
            adapter_for(learner.model).published_name(n): p.detach().clone()
            for n, p in learner.model.named_parameters()
            if p.requires_grad
        }
    assert "audio_tower.embed_positions.weight" not in whole  # frozen in Qwen2-Audio's encoder
    group_bytes = 64 * 1024
    source = PolicySource(learner, torch.float32, group_bytes)
    assert [(m.name, m.shape) for m in source.metadata()] == [(n, tuple(t.shape)) for n, t in whole.items()]
    streamed = {name: tensor.clone() for name, tensor in source}  # consumed before the next group
    assert list(streamed) == list(whole)
    assert all(torch.equal(streamed[n], whole[n]) for n in whole)
    largest = max(t.numel() * 4 for t in whole.values())
    model_bytes = sum(t.numel() * 4 for t in whole.values())
    assert 0 < source.stats.peak <= group_bytes + largest < model_bytes / 4


@pytest.mark.slow
def test_lora_updates_carry_only_the_layers_lora_touches(tiny_model_dir, ray_cluster, clip_questions):
    """Adapters on q and v: an update sends the merged q, k (their fused sibling in vLLM) and v of
    each layer, nothing else; the engine keeps the base elsewhere and generates what the learner does."""
    ray = ray_cluster
    from cluster.actors import RolloutActor
    from cluster.sync_client import ReceiverClient
    from learner.config import LoraSettings
    from learner.lora import published_weights
    from learner.weight_source import PolicySource
    from rollout.audio import load_audio
    from rollout.vllm_engine import EngineConfig
    from rollout.weight_transfer import nbytes

    sampling = SamplingConfig(max_tokens=16)
    worker = RolloutActor.remote(str(tiny_model_dir), EngineConfig(dtype="float32"), weight_transfer="gloo")
    lora = LoraSettings(rank=8, alpha=16.0, target_modules="q_proj,v_proj")
    learner = make_learner(tiny_model_dir, lr=5e-2, beta=0.0, lora=lora)  # trains while the engine starts
    batch = pitch_batch(learner.processor.tokenizer)
    for _ in range(3):
        learner.train_step(batch)
    before = ray.get(worker.generate.remote(clip_questions, sampling, greedy=True))  # no update yet
    import torch

    sent = PolicySource(learner, torch.float32, 1 << 20).metadata()
    kinds = {m.name.split(".")[-2] for m in sent}
    assert kinds == {"q_proj", "k_proj", "v_proj"}
    assert all(m.name.startswith("language_model.model.layers.") for m in sent)
    everything = sum(int(torch.Size(w.shape).numel()) * 4 for w in published_weights(learner.model))

    init = {
        "master_address": "127.0.0.1",
        "master_port": free_port(),
        "world_size": 2,
        "bucket_bytes": 64 * 1024,
        "timeout_s": 60.0,
    }
    learner.init_weight_transfer("gloo", init, ReceiverClient([worker], [1], 60.0), "float32")
    outcome = learner.send_weights(1)
    assert outcome["ok"], outcome
    assert outcome["bytes"] == sum(nbytes(m.shape, m.dtype) for m in sent) < everything / 4

    waves = [load_audio(q.audio_path) for q in clip_questions]
    texts = [(q.question, q.choices) for q in clip_questions]
    groups = hf_generate(learner.model, learner.processor, texts, waves, sampling, greedy=True)
    after = ray.get(worker.generate.remote(clip_questions, sampling, greedy=True))
    assert _greedy_ids(after) == [g[0] for g in groups]
    assert _greedy_ids(after) != _greedy_ids(before)  # the adapters changed what it says
    ray.kill(worker)

"""Weight broadcast: bucket plans, and a real learner -> vLLM (Ray actor) sync equal to HF greedy."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch
from helpers import make_learner, pitch_batch, tone

from cluster.network import free_port
from learner.hf_format import published_state
from rollout.audio import SAMPLE_RATE
from rollout.hf_engine import hf_generate
from rollout.question import AudioQuestion
from rollout.sampling import SamplingConfig
from rollout.weight_sync import make_plan, pack_buckets, plan_from_wire, plan_to_wire, unpack_buckets


def test_plan_packs_per_dtype_into_bounded_buckets_and_unpacks_to_views():
    tensors = {
        "a": torch.randn(10, 10),
        "b": torch.randn(300),
        "c": torch.randn(5).bfloat16(),
        "d": torch.randn(2, 3, 4),
        "e": torch.randn(7).bfloat16(),
    }
    plan = plan_from_wire(plan_to_wire(make_plan(tensors.items(), bucket_bytes=1600)))
    # a + b fill the first float32 bucket exactly; d opens a second; c and e share the bfloat16 one.
    assert plan.buckets == [("float32", 400), ("bfloat16", 12), ("float32", 24)]
    buckets = pack_buckets(plan, tensors, torch.device("cpu"))
    for name, view in unpack_buckets(plan, buckets):
        assert torch.equal(view, tensors[name])
        assert view.untyped_storage().data_ptr() in {b.untyped_storage().data_ptr() for b in buckets}
    assert plan.nbytes == sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.fixture(scope="module")
def clip_questions(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    questions = []
    for i, freq in enumerate([300.0, 2000.0, 800.0]):
        sf.write(root / f"{i}.wav", tone(freq, 1.0 + 0.3 * i), SAMPLE_RATE)
        questions.append(
            AudioQuestion(str(i), str(root / f"{i}.wav"), "Is the tone high or low?", ["high", "low"], "high")
        )
    return questions


@pytest.mark.slow
@pytest.mark.parametrize("bucket_bytes", [256 * 1024**2, 64 * 1024])
def test_pool_greedy_after_sync_equals_the_learners_own_greedy(
    tiny_model_dir, ray_cluster, clip_questions, bucket_bytes
):
    ray = ray_cluster
    from cluster.actors import RolloutActor
    from rollout.audio import load_audio
    from rollout.vllm_engine import EngineConfig

    sampling = SamplingConfig(max_tokens=16)
    worker = RolloutActor.remote(str(tiny_model_dir), EngineConfig(dtype="float32"))
    before = ray.get(worker.generate.remote(clip_questions, sampling, greedy=True))

    learner = make_learner(tiny_model_dir, lr=2e-2, beta=0.0)
    batch = pitch_batch(learner.processor.tokenizer)
    for _ in range(3):
        learner.train_step(batch)
    port = free_port()
    joined = worker.init_weight_sync.remote("127.0.0.1", port, 1, 2, "gloo", 60.0)
    learner.init_weight_sync("127.0.0.1", port, 2, "gloo", 60.0, bucket_bytes)
    ray.get(joined)
    received = worker.receive_weights.remote(1)  # the plan reaches the worker over the group itself
    sent = learner.send_weights()
    timing = ray.get(received)
    assert timing["version"] == 1 and ray.get(worker.get_policy_version.remote()) == 1
    assert sent["bytes"] == pytest.approx(sum(t.numel() * 4 for _, t in published_state(learner.model)))
    if bucket_bytes < 1024**2:
        assert sent["buckets"] > 5  # fused q/k/v and gate/up land in different buckets

    after = ray.get(worker.generate.remote(clip_questions, sampling, greedy=True))
    waves = [load_audio(q.audio_path) for q in clip_questions]
    texts = [(q.question, q.choices) for q in clip_questions]

    def learner_greedy() -> list[list[int]]:
        groups = hf_generate(learner.model, learner.processor, texts, waves, sampling, greedy=True)
        return [g[0] for g in groups]

    pool_ids = [r.completions[0].token_ids for r in after]
    assert pool_ids == learner_greedy()
    assert pool_ids != [r.completions[0].token_ids for r in before]  # the weights really changed
    assert all(r.policy_version == 1 for r in after) and all(r.policy_version == 0 for r in before)
    assert timing["receive_s"] > 0 and timing["reload_s"] > 0

    # A second update goes through the same (reused) buckets on both sides.
    for _ in range(3):
        learner.train_step(batch)
    received = worker.receive_weights.remote(2)
    learner.send_weights()
    assert ray.get(received)["version"] == 2
    again = ray.get(worker.generate.remote(clip_questions, sampling, greedy=True))
    assert [r.completions[0].token_ids for r in again] == learner_greedy()
    ray.kill(worker)

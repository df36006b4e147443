"""A weight update that fails ends in a recovered step or a clear error, within its deadline, never
a hang and never wrong weights. Real learner and rollout actors on Ray; the faults are our own
hooks (`rollout.weight_transfer.set_fault`): a receiver that raises half-way, one that hangs, a
sender whose transport reports itself disabled (as vLLM's PyNccl does when NCCL cannot load)."""

from __future__ import annotations

import time

import pytest
import soundfile as sf
from helpers import pitch_batch, tone

from rollout.audio import SAMPLE_RATE
from rollout.question import AudioQuestion
from rollout.sampling import SamplingConfig

pytestmark = pytest.mark.slow
TIMEOUT_S = 15.0
SAMPLING = SamplingConfig(max_tokens=12)


@pytest.fixture(scope="module")
def actors(tiny_model_dir, ray_cluster, tmp_path_factory):
    """One learner rank and two rollout workers (1 MB chunks: the tiny model is three of them)."""
    ray = ray_cluster
    from transformers import AutoProcessor

    from cluster.config import load_config
    from cluster.learner_group import LearnerGroup
    from cluster.placement import make_placement
    from cluster.pool import RolloutPool

    config = load_config(
        "tiny-cpu",
        [
            f"model.path={tiny_model_dir}",
            "sync.bucket_mb=1",
            f"sync.timeout_s={TIMEOUT_S}",
            "train.max_retries=2",
            "learner.optimizer.lr=2e-2",
            "learner.loss.beta=0",
        ],
    )
    placement = make_placement(config)
    learner = LearnerGroup(config, placement, str(tiny_model_dir), wait=False)  # loads as the engines start
    pool = RolloutPool(config, placement, str(tiny_model_dir))
    learner.wait_ready()
    pool.connect(learner)
    root = tmp_path_factory.mktemp("clips")
    questions = []
    for i, freq in enumerate([300.0, 2000.0]):
        sf.write(root / f"{i}.wav", tone(freq, 1.0), SAMPLE_RATE)
        clip = str(root / f"{i}.wav")
        questions.append(AudioQuestion(str(i), clip, "High or low?", ["high", "low"], "high"))
    batch = pitch_batch(AutoProcessor.from_pretrained(tiny_model_dir).tokenizer)
    yield learner, pool, questions, batch
    for actor in pool.workers + learner.ranks:
        ray.kill(actor)
    ray.util.remove_placement_group(placement.group)


def learner_greedy(learner, questions) -> list[list[int]]:
    import ray

    def run(actor, questions, sampling):  # inside the learner actor: its own weights, HF generate
        from rollout.audio import load_audio
        from rollout.hf_engine import hf_generate

        texts = [(q.question, q.choices) for q in questions]
        waves = [load_audio(q.audio_path) for q in questions]
        return [g[0] for g in hf_generate(actor.model, actor.processor, texts, waves, sampling, greedy=True)]

    return ray.get(learner.ranks[0].__ray_call__.remote(run, questions, SAMPLING))


def worker_greedy(pool, questions) -> list[tuple[list[list[int]], set[int]]]:
    import ray

    answers = ray.get([w.generate.remote(questions, SAMPLING, greedy=True) for w in pool.workers])
    return [([r.completions[0].token_ids for r in a], {r.policy_version for r in a}) for a in answers]


def assert_pool_holds(learner, pool, questions, version: int) -> None:
    expected = learner_greedy(learner, questions)
    assert pool.versions() == [version] * len(pool.workers)
    assert worker_greedy(pool, questions) == [(expected, {version})] * len(pool.workers)


def test_a_receiver_that_raises_half_way_is_replaced_and_the_update_rerun_whole(actors):
    import ray

    learner, pool, questions, batch = actors
    ray.get(pool.workers[1].set_sync_fault.remote("raise", after_chunks=1))
    learner.train_step(batch)
    restarts = pool.restarts
    pool.broadcast(1)
    assert pool.restarts == restarts + 1  # only the failed receiver was replaced
    assert_pool_holds(learner, pool, questions, 1)


def test_a_receiver_that_hangs_is_replaced_within_the_deadline(actors):
    import ray

    learner, pool, questions, batch = actors
    ray.get(pool.workers[0].set_sync_fault.remote("hang", after_chunks=1))
    learner.train_step(batch)
    started, restarts = time.monotonic(), pool.restarts
    pool.broadcast(2)
    assert time.monotonic() - started < 4 * TIMEOUT_S + 120  # deadlines plus one engine start
    assert pool.restarts > restarts
    assert_pool_holds(learner, pool, questions, 2)


def test_a_disabled_sender_transport_is_a_clear_error_before_any_weight_moves(actors):
    import ray

    learner, pool, questions, batch = actors

    def disable(_actor, kind):
        from rollout.weight_transfer import set_fault

        set_fault(kind)

    before = worker_greedy(pool, questions)
    ray.get(learner.ranks[0].__ray_call__.remote(disable, "disable"))
    learner.train_step(batch)
    try:
        with pytest.raises(RuntimeError, match="version 3 cannot work: TransportError: .*disabled"):
            pool.broadcast(3)
        assert pool.versions() == [2, 2]
        assert worker_greedy(pool, questions) == before  # untouched, and still serving
    finally:
        ray.get(learner.ranks[0].__ray_call__.remote(disable, None))
    pool.broadcast(3)
    assert_pool_holds(learner, pool, questions, 3)

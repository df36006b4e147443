"""The `learner` case of `bench/gpu_check.py`: the project's own `Learner` (DeepSpeed, a frozen
reference, the run's wiring) on a Qwen2-Audio of the 7B widths with --layers layers and random
weights (the tiny model's tokenizer and processor, its token ids in the config), one rank: a
rank's share of a step (--questions x 8 completions of --completion-tokens, 30 s clips) with the
micro-batch sizes the plan picks (`auto`), timed per phase as `metrics.jsonl` reports them, and
the CUDA peaks against the plan. One ZeRO stage per process (DeepSpeed joins one process group).
`--tiny` runs it on the tiny model in float32 (what the test does on a CPU)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from bench.gpu_measure import Meter, error_pct, free, gib
from bench.gpu_model import reduced_config

PHASES = ("learner_reference_s", "learner_forward_s", "learner_backward_s", "learner_optimizer_s")


def model_folder(args, device: torch.device, workdir: Path) -> Path:
    """The model the learner loads: the tiny one, or a 7B-wide one written in the published layout
    with the tiny tokenizer's token ids (its vocabulary stays the 7B one)."""
    import json

    from transformers import Qwen2AudioForConditionalGeneration

    from assets.tiny_model import make_tiny
    from families import load_processor
    from learner.hf_format import save_hf_folder

    tiny = make_tiny(workdir / "learner-tiny", size="tiny", seed=0)
    if args.tiny:
        return tiny
    tiny_config = json.loads((tiny / "config.json").read_text())
    config = reduced_config(args.layers, args.audio_layers)
    config.audio_token_index = tiny_config["audio_token_index"]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, key, tiny_config["text_config"][key])
    with torch.device(device):
        model = Qwen2AudioForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = tiny_config["text_config"]["eos_token_id"]
    folder = workdir / "wide"
    save_hf_folder(model, load_processor(tiny), folder)
    del model
    free(device)
    return folder


def rank_batch(learner, questions: int, group: int, length: int, seed: int = 0):
    """A rank's share of a step: 30 s noise clips, completions of ordinary tokens, advantages +-1."""
    from learner.batch import LearnerBatch

    rng = np.random.default_rng(seed)
    low = len(learner.processor.tokenizer) // 4  # ordinary tokens: never an end or audio token
    completions = [rng.integers(low, 2 * low, length).tolist() for _ in range(questions * group)]
    return LearnerBatch(
        [("Which sound is in the clip?", ["a dog", "a car", "rain", "speech"])] * questions,
        [(0.1 * rng.standard_normal(16000 * 30)).astype(np.float32) for _ in range(questions)],
        completions,
        [q for q in range(questions) for _ in range(group)],
        [1.0 if i % 2 == 0 else -1.0 for i in range(questions * group)],
    )


def learner_case(args, _setup, device: torch.device, meter: Meter, workdir: Path) -> dict:
    from cluster.config import learner_config, load_config
    from cluster.network import free_port
    from cluster.plan_learner import learner_needs, resolve_auto
    from cluster.plan_units import model_shape
    from learner.learner import Learner

    folder = model_folder(args, device, workdir)
    dtype = "float32" if args.tiny else "bfloat16"
    overrides = [
        f"model.path={folder}",
        "learner.num_ranks=1",
        f"learner.gpus_per_rank={1 if meter.cuda else 0}",
        f"learner.parallel.zero_stage={args.zero}",
        f"learner.parallel.gradient_checkpointing={str(args.checkpointing).lower()}",
        f"learner.parallel.dtype={dtype}",
        "learner.parallel.micro_batch_questions=auto",
        "learner.parallel.no_grad_questions=auto",
        f"sampling.max_tokens={args.completion_tokens}",
        f"sampling.n={args.group}",
        f"train.questions_per_step={args.questions}",
    ]
    shape = model_shape(str(folder))
    capacity = meter.total() or 64 * 2**30
    config, choices = resolve_auto(load_config("r1-aqa-h200", overrides), shape, capacity)
    out: dict = {
        "zero_stage": args.zero,
        "gradient_checkpointing": args.checkpointing,
        "plan_choices": choices,
    }
    out["params"] = shape.params
    learner = Learner(str(folder), learner_config(config), master_port=free_port())
    optimizer = getattr(learner.optimizer, "optimizer", learner.optimizer)  # under DeepSpeed's wrapper
    out["optimizer"] = (
        f"{type(optimizer).__name__} (fused: {getattr(optimizer, 'defaults', {}).get('fused')})"
    )
    out["micro_batch_questions"] = learner.micro_batch_questions
    out["no_grad_questions"] = learner.no_grad_questions
    batch = rank_batch(learner, args.questions, args.group, args.completion_tokens)
    for _ in range(args.warmup_steps):  # kernels chosen, ZeRO-3's trace recorded, state made
        learner.train_step(batch)
    meter.start()
    steps = []
    for _ in range(args.repeats):
        meter.sync()
        begin = time.perf_counter()
        record = learner.train_step(batch)
        meter.sync()
        steps.append({"step_s": time.perf_counter() - begin, **{k: record[k] for k in PHASES}})
    for key in ("step_s", *PHASES):
        out[key] = round(sum(s[key] for s in steps) / len(steps), 4)
    allocated, reserved = meter.totals()
    needs = learner_needs(config, shape)
    planned = sum(n.nbytes for n in needs if n.where == "gpu")
    reserve = next(n.nbytes for n in needs if n.item.startswith("allocator reserve")) if meter.cuda else 0.0
    out["planner_items_gib"] = {n.item: gib(n.nbytes) for n in needs}
    out["planner_total_gib"] = gib(planned)
    out["allocated_peak_gib"], out["reserved_peak_gib"] = gib(allocated), gib(reserved)
    out["reserved_over_allocated"] = round(reserved / allocated, 3) if allocated else None
    out["planner_error_pct_allocated"] = error_pct(planned - reserve, allocated)  # the plan less its reserve
    out["planner_error_pct_reserved"] = error_pct(planned, reserved)
    return out

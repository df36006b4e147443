"""The memory plan (`cluster.plan`) against a real learner's memory on this CPU, per model size.

    python bench/plan_check.py --models tiny=DIR,small=DIR [--completion-tokens 64] [--out F.json]

For each model, a fresh process builds a float32 ZeRO-0 learner with its reference (as tiny-cpu)
and takes one step on one question with 8 completions of --completion-tokens and a 30 s clip,
the shape the plan assumes. Two comparisons:
- state: weights + Adam state + reference, the tensors the learner holds, against the plan's items;
- step peak: the growth of the process's peak RSS during the first step (gradients, Adam state
  made on first use, activations, logits) against the plan's gradients + optimizer + activations +
  logits. RSS also counts allocator slack and library buffers, so this error is the honest one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GIB = 2**30
STEP_ITEMS = ("gradients", "optimizer state", "activations", "prompt KV", "audio encoder", "logits")


def measure(model_dir: str, completion_tokens: int, lora_rank: int = 0) -> dict:
    """In this process: the learner's held state bytes and its peak RSS growth over one step."""
    import resource

    import numpy as np
    import torch

    from cluster.network import free_port
    from learner.batch import LearnerBatch
    from learner.config import LearnerConfig, LoraSettings, ParallelConfig
    from learner.learner import Learner
    from learner.lora import engine_weights
    from rollout.sampling import SamplingConfig

    config = LearnerConfig(
        parallel=ParallelConfig(dtype="float32", micro_batch_questions=1),
        sampling=SamplingConfig(max_tokens=completion_tokens),
        lora=LoraSettings(rank=lora_rank),
    )
    learner = Learner(model_dir, config, master_port=free_port())
    rng = np.random.default_rng(0)
    low = len(learner.processor.tokenizer) // 4  # ordinary tokens: never an end or audio token
    completions = [rng.integers(low, 2 * low, completion_tokens).tolist() for _ in range(8)]
    batch = LearnerBatch(
        [("Which sound is in the clip?", ["a dog", "a car", "rain", "speech"])],
        [(0.1 * rng.standard_normal(16000 * 30)).astype(np.float32)],
        completions,
        [0] * 8,
        [1.0, -1.0] * 4,
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    learner.train_step(batch)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def tensors(model) -> int:
        return sum(p.numel() * p.element_size() for p in model.parameters())

    adam = sum(
        t.numel() * t.element_size()
        for state in learner.optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    reference = tensors(learner.reference) if learner.reference is not None else 0
    sent = sum(
        w.params[0].element_size() * int(torch.Size(w.shape).numel()) for w in engine_weights(learner.model)
    )
    return {"state": tensors(learner.model) + adam + reference, "step_peak": after - before, "sent": sent}


def estimate(model_dir: str, completion_tokens: int, lora_rank: int = 0) -> dict:
    from cluster.config import load_config
    from cluster.plan_learner import learner_needs
    from cluster.plan_units import model_shape

    config = load_config(
        "tiny-cpu",
        [
            f"model.path={model_dir}",
            f"sampling.max_tokens={completion_tokens}",
            "learner.parallel.micro_batch_questions=1",
            f"learner.lora.rank={lora_rank}",
        ],
    )
    needs = learner_needs(config, model_shape(model_dir))
    state = sum(n.nbytes for n in needs if n.item.startswith(("weights", "optimizer", "reference")))
    step = sum(n.nbytes for n in needs if n.item.startswith(STEP_ITEMS))
    return {"state": state, "step_peak": step, "items": {n.item: n.nbytes for n in needs}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", required=True, help="label=DIR,... (e.g. tiny=A,small=B)")
    parser.add_argument("--completion-tokens", type=int, default=64)
    parser.add_argument("--lora-ranks", default="0,16", help="0 = full fine-tuning")
    parser.add_argument("--out", default="bench/results/plan_check.json")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.completion_tokens, int(args.lora_ranks))))
        return 0
    rows = []
    print(f"{'model':8} {'lora':>4} {'what':10} {'estimate MiB':>13} {'measured MiB':>13} {'error':>7}")
    for label, model_dir in (item.split("=", 1) for item in args.models.split(",")):
        for rank in (int(r) for r in args.lora_ranks.split(",")):
            child = [
                sys.executable,
                __file__,
                "--models",
                "-",
                "--measure",
                model_dir,
                "--lora-ranks",
                str(rank),
            ]
            child += ["--completion-tokens", str(args.completion_tokens)]
            done = subprocess.run(child, capture_output=True, text=True, cwd=ROOT, check=True)
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            planned = estimate(model_dir, args.completion_tokens, rank)
            for what in ("state", "step_peak"):
                error = (planned[what] - measured[what]) / measured[what] * 100
                mib = planned[what] / 2**20, measured[what] / 2**20
                print(f"{label:8} {rank:4} {what:10} {mib[0]:13.1f} {mib[1]:13.1f} {error:+6.1f}%")
                row = {"model": label, "lora_rank": rank, "what": what, "estimate": planned[what]}
                rows.append({**row, "measured": measured[what]})
            sent = measured["sent"] / 2**20
            print(f"{label:8} {rank:4} {'sent':10} {'':13} {sent:13.1f}  (weight-transfer bytes)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"completion_tokens": args.completion_tokens, "rows": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end benchmark: `audio-grpo train` against a single-process baseline, same everything.

    python bench/e2e.py --model DIR --data-dir DIR [--steps 5] [--rounds 2] [--out F.json]

The baseline does what R1-AQA's trainer does, in one process: HF `generate` with n return sequences,
then the rewards, the loss and the DeepSpeed step (`learner.local_loop`, the same learner code, so
its update gets every learner speed-up too). The distributed system runs the same model, data,
group size, batch, completion budget and dtype on Ray (2 vLLM rollout workers, 1 learner rank, a
reward actor, weight broadcast every step), as is in every round and with `train.overlap_rollout`
in the last. Runs alternate; each reports the median seconds per step over the steps after the first two
(warm-up); the table gives completions/s, generated tokens/s and the ratio, and where each
distributed step's time goes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from train_run import run_train  # bench/ is on sys.path: these scripts run as files

ROOT = Path(__file__).resolve().parents[1]

BASELINE = r"""
import json, sys
sys.path.insert(0, {root!r})
from learner.config import LearnerConfig, OptimizerConfig, ParallelConfig
from learner.learner import Learner
from learner.local_loop import LoopConfig, run_local_grpo
from rollout.audio import load_audio
from rollout.datasets import load_questions
from rollout.sampling import SamplingConfig
train, _ = load_questions({train!r})
waves = {{q.id: load_audio(q.audio_path) for q in train}}
config = LearnerConfig(
    optimizer=OptimizerConfig(lr=1e-5),
    parallel=ParallelConfig(dtype="float32", micro_batch_questions={batch}),
    sampling=SamplingConfig(n={n}, temperature=1.0, max_tokens={tokens}),
)
learner = Learner({model!r}, config, master_port={port})
loop = LoopConfig(steps={steps}, questions_per_step={batch}, eval_every=0)
history = run_local_grpo(learner, train, [], waves, loop)
print("RESULT " + json.dumps(history))
"""


def median_after_warmup(records: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in records[2:] or records)


def run_baseline(args, port: int) -> dict:
    code = BASELINE.format(
        root=str(ROOT),
        train=str(Path(args.data_dir) / "train.jsonl"),
        model=args.model,
        batch=args.batch,
        tokens=args.max_tokens,
        port=port,
        n=args.n,
        steps=args.steps,
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    history = json.loads(out.stdout.split("RESULT ", 1)[1])
    step_s = median_after_warmup(history, "step_s")
    tokens = median_after_warmup(history, "response_length") * args.batch * args.n
    return {
        "system": "baseline (1 process, HF generate)",
        "step_s": step_s,
        "generate_s": median_after_warmup(history, "generate_s"),
        "completions_per_s": args.batch * args.n / step_s,
        "tokens_per_s": tokens / step_s,
    }


def run_distributed(args, run_dir: Path, overlap: bool) -> dict:
    overrides = {
        "model.path": args.model,
        "data.train": Path(args.data_dir) / "train.jsonl",
        "data.eval": Path(args.data_dir) / "test-mmau.json",
        "train.eval_every": 0,
        "train.save_every": 0,
        "train.questions_per_step": args.batch,
        "train.overlap_rollout": overlap,
        "sampling.n": args.n,
        "sampling.max_tokens": args.max_tokens,
        "learner.optimizer.lr": 1e-5,
        "learner.parallel.micro_batch_questions": args.batch,
        "model.warm_start_steps": 0,
    }
    records = run_train(run_dir, args.steps, overrides, timeout_s=1800)
    summary = json.loads((run_dir / "summary.json").read_text())
    step_s = median_after_warmup(records, "step_s")
    parts = {
        k: median_after_warmup(records, k)
        for k in ("generate_s", "reward_s", "batch_s", "learner_s", "rollout_wait_s", "weight_sync_s")
    }
    parts["other_s"] = max(0.0, step_s - sum(parts.values()))
    tokens = median_after_warmup(records, "response_length") * args.batch * args.n
    return {
        "system": "audio-grpo train" + (", overlap_rollout" if overlap else ""),
        "step_s": step_s,
        **parts,
        "completions_per_s": args.batch * args.n / step_s,
        "tokens_per_s": tokens / step_s,
        "peak_rss_mib": summary.get("peak_rss_mib"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="e.g. the `small` model from make-tiny")
    parser.add_argument("--data-dir", required=True, help="a make-data folder")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each system")
    parser.add_argument("--batch", type=int, default=8, help="questions per step")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", default="bench/results/e2e.json")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {"baseline": [], "distributed": [], "overlap": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):  # alternate, so drift on the machine hits every system alike
            runs["baseline"].append(run_baseline(args, 29700 + i))
            runs["distributed"].append(run_distributed(args, Path(tmp) / f"run{i}", overlap=False))
            if i == args.rounds - 1:  # the secondary figure: once, to keep `make bench` short
                runs["overlap"].append(run_distributed(args, Path(tmp) / f"overlap{i}", overlap=True))
    summary = {}
    for name, results in runs.items():
        merged = {
            k: statistics.median(r[k] for r in results) for k, v in results[0].items() if isinstance(v, float)
        }
        summary[name] = {"system": results[0]["system"], **merged, "runs": results}
    base = summary["baseline"]["completions_per_s"]
    ratios = {name: summary[name]["completions_per_s"] / base for name in ("distributed", "overlap")}
    print(f"{'system':<36} {'s/step':>7} {'compl/s':>8} {'tokens/s':>9} {'ratio':>6}")
    for s in summary.values():
        print(
            f"{s['system']:<36} {s['step_s']:>7.2f} {s['completions_per_s']:>8.2f} "
            f"{s['tokens_per_s']:>9.1f} {s['completions_per_s'] / base:>5.2f}x"
        )
    print(
        f"goal: >= 2x the baseline's completions/s; measured {ratios['distributed']:.2f}x "
        f"(overlap {ratios['overlap']:.2f}x)"
    )
    print(
        f"baseline step (median s): generate {summary['baseline']['generate_s']:.2f}, "
        f"loss and update {summary['baseline']['step_s'] - summary['baseline']['generate_s']:.2f}"
    )
    for name in ("distributed", "overlap"):
        d = summary[name]
        print(
            f"{d['system']} step breakdown (median s): "
            + ", ".join(
                f"{k[:-2]} {d[k]:.3f}"
                for k in (
                    "generate_s",
                    "reward_s",
                    "batch_s",
                    "learner_s",
                    "rollout_wait_s",
                    "weight_sync_s",
                    "other_s",
                )
            )
        )
    d = summary["distributed"]
    if d["runs"][-1].get("peak_rss_mib"):
        print("peak RSS MiB by actor kind: " + json.dumps(d["runs"][-1]["peak_rss_mib"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "ratios": ratios, **summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

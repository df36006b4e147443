"""End-to-end benchmark: `audio-grpo train` against a single-process baseline, same everything.

    python bench/e2e.py --model DIR --data-dir DIR [--steps 8] [--rounds 2] [--out F.json]

The baseline does what R1-AQA's trainer does, in one process: HF `generate` with n return sequences,
then the rewards, the loss and the DeepSpeed step (`learner.local_loop`). The distributed system
runs the same model, data, group size, batch, completion budget and dtype on Ray (2 vLLM rollout
workers, 1 learner rank, a reward actor, weight broadcast every step). Runs alternate; each reports
the median seconds per step over the steps after the first two (warm-up); the table gives
completions/s, generated tokens/s and the ratio, and where the distributed step's time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BASELINE = r"""
import json, sys
sys.path.insert(0, {root!r})
from cluster.datasets import load_questions
from learner.learner import Learner, LearnerConfig
from learner.local_loop import LoopConfig, run_local_grpo
from rollout.audio import load_audio
from rollout.sampling import SamplingConfig
train, _ = load_questions({train!r})
waves = {{q.id: load_audio(q.audio_path) for q in train}}
learner = Learner({model!r}, LearnerConfig(lr=1e-5, dtype="fp32", micro_batch_questions={batch},
                  max_completion_length={tokens}), master_port={port})
sampling = SamplingConfig(n={n}, temperature=1.0, max_tokens={tokens})
loop = LoopConfig(steps={steps}, questions_per_step={batch}, eval_every=0)
history = run_local_grpo(learner, train, [], waves, sampling, loop)
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
    tokens = median_after_warmup(history, "completion_tokens") * args.batch * args.n
    return {
        "system": "baseline (1 process, HF generate)",
        "step_s": step_s,
        "generate_s": median_after_warmup(history, "generate_s"),
        "completions_per_s": args.batch * args.n / step_s,
        "tokens_per_s": tokens / step_s,
    }


def run_distributed(args, run_dir: Path) -> dict:
    overrides = [
        f"model.path={args.model}",
        f"data.train={Path(args.data_dir) / 'train.jsonl'}",
        f"data.eval={Path(args.data_dir) / 'test-mmau.json'}",
        "train.eval_every=0",
        "train.save_every=0",
        f"train.questions_per_step={args.batch}",
        f"rollout.sampling.n={args.n}",
        f"rollout.sampling.max_tokens={args.max_tokens}",
        "learner.optim.lr=1e-5",
        f"learner.optim.micro_batch_questions={args.batch}",
        "model.warm_start_steps=0",
    ]
    command = [
        sys.executable,
        "-m",
        "cluster.cli",
        "train",
        "--config",
        "tiny-cpu",
        "--no-progress",
        "--max-steps",
        str(args.steps),
        "--run-dir",
        str(run_dir),
    ]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    step_s = median_after_warmup(records, "step_s")
    parts = {
        k: median_after_warmup(records, k)
        for k in ("generate_s", "reward_s", "batch_s", "learner_s", "weight_sync_s")
    }
    parts["other_s"] = max(0.0, step_s - sum(parts.values()))
    tokens = median_after_warmup(records, "response_length") * args.batch * args.n
    return {
        "system": "audio-grpo train (Ray, vLLM, DeepSpeed)",
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
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each system")
    parser.add_argument("--batch", type=int, default=8, help="questions per step")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", default="bench/results/e2e.json")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {"baseline": [], "distributed": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            runs["baseline"].append(run_baseline(args, 29700 + i))
            runs["distributed"].append(run_distributed(args, Path(tmp) / f"run{i}"))
    summary = {}
    for name, results in runs.items():
        merged = {
            k: statistics.median(r[k] for r in results) for k, v in results[0].items() if isinstance(v, float)
        }
        summary[name] = {"system": results[0]["system"], **merged, "runs": results}
    ratio = summary["distributed"]["completions_per_s"] / summary["baseline"]["completions_per_s"]
    print(f"{'system':<42} {'s/step':>7} {'compl/s':>8} {'tokens/s':>9}")
    for s in summary.values():
        print(
            f"{s['system']:<42} {s['step_s']:>7.2f} {s['completions_per_s']:>8.2f} {s['tokens_per_s']:>9.1f}"
        )
    print(f"ratio (distributed / baseline, completions/s): {ratio:.2f}x  (goal: >= 2x)")
    d = summary["distributed"]
    print(
        "distributed step breakdown (median s): "
        + ", ".join(
            f"{k[:-2]} {d[k]:.3f}"
            for k in ("generate_s", "reward_s", "batch_s", "learner_s", "weight_sync_s", "other_s")
        )
    )
    if d["runs"][-1].get("peak_rss_mib"):
        print("peak RSS MiB by actor kind: " + json.dumps(d["runs"][-1]["peak_rss_mib"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "ratio": ratio, **summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

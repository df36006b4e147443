"""Learning curve of the full distributed system on the synthetic task, against the sign-flipped control.

    python bench/learning_curve.py [--steps 60] [--eval-every 5] [--out-dir bench/results]

Two `audio-grpo train --config tiny-cpu` runs (the embedded default: Ray, vLLM rollout workers,
DeepSpeed learner), one with the advantages' sign flipped (`train.flip_advantages=true`). Prints
held-out accuracy (MMAU metric) and mean reward per evaluation step, writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from train_run import run_train  # bench/ is on sys.path: these scripts run as files


def run(flip: bool, steps: int, eval_every: int, run_dir: Path) -> list[dict]:
    overrides = {"train.eval_every": eval_every, "train.save_every": 0, "train.flip_advantages": flip}
    return run_train(run_dir, steps, overrides)


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, records in curves.items():
        evals = [r for r in records if "eval_accuracy" in r]
        left.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], marker="o", label=name)
        right.plot([r["step"] for r in records], [r["reward_mean"] for r in records], label=name)
    left.set(title="held-out accuracy (MMAU metric)", xlabel="step", ylabel="%", ylim=(-2, 102))
    right.set(title="mean reward (accuracy + format)", xlabel="step", ylabel="reward", ylim=(-0.05, 2.05))
    left.axhline(50, color="grey", linestyle=":", label="chance")
    left.legend()
    right.legend()
    fig.suptitle("GRPO on the synthetic pitch task, tiny Qwen2-Audio, tiny-cpu preset")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--out-dir", default="bench/results")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        curves = {
            "GRPO": run(False, args.steps, args.eval_every, Path(tmp) / "grpo"),
            "flipped advantages (control)": run(True, args.steps, args.eval_every, Path(tmp) / "flip"),
        }
    print(f"{'step':>5} {'GRPO acc %':>11} {'reward':>7} {'control acc %':>14} {'reward':>7}")
    grpo, control = curves.values()
    for a, b in zip(grpo, control, strict=True):
        if "eval_accuracy" in a:
            print(
                f"{a['step']:>5} {a['eval_accuracy']:>11.1f} {a['reward_mean']:>7.2f} "
                f"{b['eval_accuracy']:>14.1f} {b['reward_mean']:>7.2f}"
            )
    (out / "learning_curve.json").write_text(json.dumps(curves, indent=1))
    plot(curves, out / "learning_curve.png")
    print(f"wrote {out / 'learning_curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Runs side by side: `audio-grpo report RUN_DIR... [--out DIR]`.

For each run directory (GRPO from `train`, SFT from `sft`, any mix): MMAU's metric on its held-out
predictions (`eval/step-N.json`) in total, per task and per difficulty (caption runs: CIDEr-D,
BLEU-4 and ROUGE-L), at the best and at the
last evaluated step, with the training samples seen (questions drawn: `data_position`) and the
wall time up to each; then where a step's time went (seconds per step, averaged over the run:
generation, reward, the learner split into its reference pass, forward, backward and optimizer
step, the weight sync). One Markdown file (`report.md`, both tables) and one picture (`report.png`:
held-out accuracy against step and against samples seen, one line per run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reward.held_out import held_out_scores


@dataclass
class RunSummary:
    name: str
    kind: str  # "grpo" or "sft"
    evals: dict[int, dict[str, Any]]  # step -> held-out scores (MMAU's, or the caption metrics)
    seen: dict[int, int] = field(default_factory=dict)  # step -> training questions drawn
    seconds: dict[int, float] = field(default_factory=dict)  # step -> wall seconds of the steps so far
    phases: dict[str, float] = field(default_factory=dict)  # metrics.jsonl key -> mean seconds per step

    @property
    def best(self) -> int:
        return max(self.evals, key=lambda s: (self.evals[s]["total"], -s))

    @property
    def last(self) -> int:
        return max(self.evals)


def read_run(run_dir: str | Path) -> RunSummary:
    """A run's held-out scores per evaluated step and its progress per step."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (not a run directory)")
    config = (
        yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    )
    records = [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    evals = {}
    for path in sorted((run_dir / "eval").glob("step-*.json")):
        step = int(path.stem.split("-")[1])
        evals[step] = held_out_scores(json.loads(path.read_text()))
    if not evals:
        raise ValueError(f"{run_dir}: no evaluated step (eval/step-N.json)")
    seen, seconds, total = {}, {}, 0.0
    for record in records:
        total += float(record.get("step_s", 0.0))
        seen[record["step"]], seconds[record["step"]] = int(record.get("data_position", 0)), total
    kind = "grpo" if any("reward_mean" in r for r in records) else "sft"
    phases = {
        key: sum(float(r[key]) for r in records if key in r) / sum(1 for r in records if key in r)
        for key, _ in STEP_PHASES
        if any(key in r for r in records)
    }
    return RunSummary(config.get("name", run_dir.name), kind, evals, seen, seconds, phases)


# Where a step goes: metrics.jsonl key -> column (the learner's four parts add up to about learner_s).
STEP_PHASES = (
    ("generate_s", "generate"),
    ("reward_s", "reward"),
    ("learner_s", "learner"),
    ("learner_reference_s", "reference"),
    ("learner_forward_s", "forward"),
    ("learner_backward_s", "backward"),
    ("learner_optimizer_s", "optimizer"),
    ("weight_sync_s", "weight sync"),
    ("step_s", "step"),
)


def phase_table(runs: list[RunSummary]) -> str:
    """Seconds per step of each phase, averaged over each run's steps ("-": not logged)."""
    header = ["run", *(name for _, name in STEP_PHASES)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for run in runs:
        cells = [f"{run.phases[key]:.3f}" if key in run.phases else "-" for key, _ in STEP_PHASES]
        lines.append("| " + " | ".join([run.name, *cells]) + " |")
    return "\n".join(lines) + "\n"


CAPTION_COLUMNS = {"cider_d": "CIDEr-D", "bleu_4": "BLEU-4", "rouge_l": "ROUGE-L"}


def markdown_table(runs: list[RunSummary]) -> str:
    """One row per run and point (best, last): total, per task, per difficulty, samples, time."""
    tasks = sorted({t for r in runs for s in r.evals.values() for t in s["task"]})
    levels = sorted({d for r in runs for s in r.evals.values() for d in s["difficulty"]})
    captions = [k for k in CAPTION_COLUMNS if any(k in s for r in runs for s in r.evals.values())]
    header = ["run", "kind", "point", "step", "MMAU %", *tasks, *levels]
    header += [CAPTION_COLUMNS[k] for k in captions] + ["questions seen", "wall"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for run in runs:
        for point, step in (("best", run.best), ("last", run.last)):
            scores = run.evals[step]
            mmau = f"{scores['total']:.1f}" if scores["metric"] == "accuracy" else "-"
            cells = [run.name, run.kind, point, str(step), mmau]
            cells += [f"{scores['task'].get(t, float('nan')):.1f}" for t in tasks]
            cells += [f"{scores['difficulty'].get(d, float('nan')):.1f}" for d in levels]
            cells += [f"{scores[k]:.3f}" if k in scores else "-" for k in captions]
            cells += [str(run.seen.get(step, "")), f"{run.seconds.get(step, 0.0) / 60:.1f} min"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[RunSummary], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_seen) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for run in runs:
        steps = sorted(run.evals)
        accuracy = [run.evals[s]["total"] for s in steps]
        label = f"{run.name} ({run.kind})"
        by_step.plot(steps, accuracy, marker="o", label=label)
        by_seen.plot([run.seen.get(s, 0) for s in steps], accuracy, marker="o", label=label)
    if all(s["metric"] == "accuracy" for r in runs for s in r.evals.values()):
        by_step.set(ylabel="held-out accuracy (MMAU metric, %)", ylim=(0, 100))
    else:
        by_step.set(ylabel="held-out score (MMAU %, or CIDEr-D for captions)")
    by_step.set(xlabel="training step")
    by_seen.set(xlabel="training questions seen")
    for axis in (by_step, by_seen):
        axis.grid(alpha=0.3)
    by_step.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def write_report(run_dirs: list[str | Path], out_dir: str | Path) -> tuple[Path, Path]:
    """`report.md` and `report.png` for the runs, in `out_dir`."""
    runs = [read_run(d) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table, picture = out / "report.md", out / "report.png"
    table.write_text(
        markdown_table(runs)
        + "\nWhere a step goes (seconds per step, mean over the run):\n\n"
        + phase_table(runs)
    )
    plot(runs, picture)
    return table, picture

"""Step metrics, written three ways: metrics.jsonl, TensorBoard, and Ray's metrics API (which the
Ray dashboard and its Prometheus endpoint show)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# Metric name -> description; each becomes the Ray gauge `audio_grpo_<name>`, which a node's Prometheus
# endpoint exports as `ray_audio_grpo_<name>` (Ray prefixes application metrics).
GAUGES = {
    "reward_mean": "mean total reward of the step's completions",
    "accuracy": "fraction of completions whose answer is right (questions)",
    "format_rate": "fraction of completions in the <answer></answer> format",
    "kl": "mean per-token k3 KL to the reference",
    "loss": "GRPO loss",
    "grad_norm": "gradient norm before clipping",
    "response_length": "mean completion length in tokens",
    "generated_tokens_per_s": "completion tokens generated per second of generation",
    "step_s": "seconds per training step",
    "weight_sync_s": "seconds to broadcast the weights to every rollout worker",
    "policy_version": "version of the policy the rollout pool holds",
    "rollout_version": "policy version that generated the step's completions (one behind with overlap)",
    "clip_ratio": "fraction of tokens whose importance ratio was clipped",
    "skipped_rows": "data rows skipped by validation",
    "eval_accuracy": "held-out accuracy (MMAU metric, percent)",
    "cider_d": "mean CIDEr-D reward of the step's captions",
    "eval_cider_d": "held-out CIDEr-D of greedy captions",
    "similarity": "mean reward-model score of the step's captions (reward.models)",
    "worker_restarts": "rollout and reward actors replaced after dying",
}


class MetricsSink:
    def __init__(self, run_dir: Path, run_name: str, start_step: int = 0):
        self.path = run_dir / "metrics.jsonl"
        self._truncate_after(start_step)  # a resumed run re-does the steps after its checkpoint
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None
            )
        except ImportError:  # tensorboard is optional
            pass
        from ray.util.metrics import Gauge

        self._tags = {"run": run_name}
        self._gauges = {
            name: Gauge(f"audio_grpo_{name}", description=text, tag_keys=("run",))
            for name, text in GAUGES.items()
        }

    def rewind(self, step: int) -> None:
        """Drop what was logged after `step`: those steps are about to be redone (a learner rebuilt
        from its checkpoint), and each step is on record once."""
        self._truncate_after(step)
        if self._tb is not None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self._tb.log_dir
            self._tb.close()
            self._tb = SummaryWriter(log_dir, purge_step=step + 1)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        step = int(record["step"])
        for key, value in record.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
                continue
            if self._tb is not None and key != "step":
                self._tb.add_scalar(key, value, step)
            if key in self._gauges:
                self._gauges[key].set(float(value), tags=self._tags)
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def logged_eval_scores(run_dir: Path) -> dict[int, float]:
    """{step: held-out headline score (accuracy, or CIDEr-D for captions)} from the run's
    metrics.jsonl (empty for a new run)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {
        r["step"]: r.get("eval_accuracy", r.get("eval_cider_d"))
        for r in records
        if "eval_accuracy" in r or "eval_cider_d" in r
    }

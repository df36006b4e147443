"""Run `audio-grpo train` as a process on a private local Ray cluster; return its step records."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from cli.main import train_command

ROOT = Path(__file__).resolve().parents[1]


def run_train(run_dir: Path, steps: int, overrides: dict[str, Any], timeout_s: float = 3600) -> list[dict]:
    command = train_command(run_dir, max_steps=steps, overrides=overrides, extra=("--no-progress",))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)  # a cluster of its own, never the caller's
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

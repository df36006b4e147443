"""`make bench`: every benchmark in one go (about 18 minutes on 2 cores).

Builds the `small` model and a synthetic data set once under bench/results/assets, then runs the
weight-sync, rollout, end-to-end, learning-curve and HTTP-load benchmarks; each prints its table
and writes JSON (and the learning curve a PNG) into bench/results/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli.main import cli_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ASSETS = RESULTS / "assets"


def step(title: str, *command: str) -> None:
    print(f"\n=== {title} ===\n$ {' '.join(command)}", flush=True)
    started = time.time()
    script = command[0].endswith(".py")  # a benchmark script, else an `audio-grpo` subcommand
    subprocess.run([sys.executable, *command] if script else cli_command(*command), cwd=ROOT, check=True)
    print(f"({time.time() - started:.0f} s)", flush=True)


def main() -> int:
    small, tiny, data = ASSETS / "small", ASSETS / "tiny", ASSETS / "data"
    if not (small / "config.json").exists():
        step("build the small model", "make-tiny", str(small), "--size", "small")
    if not (tiny / "config.json").exists():
        step("build the tiny model", "make-tiny", str(tiny), "--size", "tiny")
    if not (data / "train.jsonl").exists():
        step("build synthetic data", "make-data", str(data), "--n", "256")
    medium = ASSETS / "medium"
    if not (medium / "config.json").exists():
        step("build the medium model (about 400 MB)", "make-tiny", str(medium), "--size", "medium")
    models = f"tiny={tiny},small={small},medium={medium}"
    step("weight transfer", "bench/weight_sync.py", "--models", models, "--repeats", "3")
    step(
        "memory plan against a real learner", "bench/plan_check.py", "--models", f"tiny={tiny},small={small}"
    )
    step("live serving during training", "bench/live_serving.py", "--steps", "40")
    step(
        "rollout engines",
        "bench/rollout_engines.py",
        "--model",
        str(small),
        "--batches",
        "1,4,8",
        "--repeats",
        "2",
    )
    step(
        "end to end",
        "bench/e2e.py",
        "--model",
        str(small),
        "--data-dir",
        str(data),
        "--steps",
        "5",
        "--rounds",
        "2",
    )
    step("learning curve", "bench/learning_curve.py", "--steps", "80", "--eval-every", "10")
    port = "8799"
    server = subprocess.Popen(
        cli_command("serve", "--model", str(tiny), "--dtype", "float32", "--port", port),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        import httpx

        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        step(
            "HTTP load",
            "bench/http_load.py",
            "--url",
            f"http://127.0.0.1:{port}",
            "--concurrency",
            "1,4,16",
            "--requests",
            "64",
            "--out",
            str(RESULTS / "http_load.json"),
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
    print(f"\nall figures in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

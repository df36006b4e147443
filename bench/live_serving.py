"""Live serving during training: how far behind the learner the endpoint answers, and how fast.

    python bench/live_serving.py [--steps 40] [--out bench/results/live_serving.json] [-- --set k=v ...]

Runs `audio-grpo train --config tiny-cpu --serve` (a local Ray cluster), and, once the endpoint is
up, one client asks `/v1/answer` back to back until training ends. For each answer: the steps the
learner had logged when the request was sent and when it returned, the `policy_version` that
answered, and the latency. Lag = steps logged before the request minus the version (0: the newest
policy; the sync of step k comes before step k is logged, so a version can also be one ahead of
the log). Latency is split by whether the request overlapped a weight update (it waits for it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FORM = {"question": "Is the tone high or low?", "choices": '["high", "low"]'}


def tone_wav(seconds: float = 1.0, freq: float = 2000.0) -> bytes:
    import io

    import numpy as np
    import soundfile as sf

    from rollout.audio import SAMPLE_RATE

    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    out = io.BytesIO()
    sf.write(out, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SAMPLE_RATE, format="WAV")
    return out.getvalue()


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def main(argv: list[str] | None = None) -> int:
    import httpx

    from cli.main import train_command
    from cluster.network import free_port

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default="bench/results/live_serving.json")
    parser.add_argument("extra", nargs="*", help="more train arguments (after --)")
    args = parser.parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="live-")) / "run"
    port = free_port()
    extra = ["--serve", "--serve-port", str(port), "--max-steps", str(args.steps), "--no-progress"]
    extra += ["--set", "train.eval_every=0", "--set", "train.save_every=0", *args.extra]
    log = open(run_dir.parent / "train.log", "w")
    training = subprocess.Popen(
        train_command(run_dir, extra=extra), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = run_dir / "endpoint.json"
    while not endpoint.exists():
        if training.poll() is not None:
            raise SystemExit(f"training ended before the endpoint started; see {log.name}")
        time.sleep(0.5)
    url, clip, rows = json.loads(endpoint.read_text())["url"], tone_wav(), []
    while training.poll() is None:
        before, sent = logged_steps(run_dir), time.perf_counter()
        try:
            response = httpx.post(
                f"{url}/v1/answer", files={"audio": ("a.wav", clip)}, data=FORM, timeout=120
            )
        except httpx.HTTPError:
            break  # the job is ending
        if response.status_code != 200:
            break
        rows.append(
            {
                "before": before,
                "after": logged_steps(run_dir),
                "version": response.json()["policy_version"],
                "latency_s": time.perf_counter() - sent,
            }
        )
    training.wait(timeout=300)
    trained = [r for r in rows if r["before"] >= 1]
    lags = [r["before"] - r["version"] for r in trained]
    quiet = [r["latency_s"] for r in trained if r["before"] == r["after"]]
    crossing = [r["latency_s"] for r in trained if r["before"] != r["after"]]

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    summary = {
        "answers": len(trained),
        "steps": args.steps,
        "versions_seen": len({r["version"] for r in trained}),
        "lag_max": max(lags) if lags else None,
        "lag_counts": {str(k): lags.count(k) for k in sorted(set(lags))},
        "latency_p50_s": statistics.median(quiet) if quiet else None,
        "latency_p99_s": pct(quiet, 0.99),
        "latency_across_an_update_p50_s": statistics.median(crossing) if crossing else None,
        "rows": rows,
    }
    print(
        f"{summary['answers']} answers over {args.steps} steps, "
        f"{summary['versions_seen']} policy versions seen; "
        f"lag (steps logged - version) counts {summary['lag_counts']}, max {summary['lag_max']}; latency "
        f"p50 {summary['latency_p50_s']:.3f} s, p99 {summary['latency_p99_s']:.3f} s; across an update "
        f"p50 {summary['latency_across_an_update_p50_s'] or float('nan'):.3f} s"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

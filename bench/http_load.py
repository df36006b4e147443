"""HTTP load test: concurrent clients against a running `audio-grpo serve`, bounded in count and time.

    python bench/http_load.py --url http://127.0.0.1:8000 --concurrency 1,4,16 --requests 64 [--token T]

Prints requests/s and p50/p99 latency per concurrency level and writes them as JSON (--out).
Only loopback or your own hosts: it sends `--requests` requests per level and stops.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import soundfile as sf


def clip_bytes(seconds: float = 2.0, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    buffer = io.BytesIO()
    sf.write(buffer, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000, format="WAV")
    return buffer.getvalue()


def run_level(
    url: str, concurrency: int, requests: int, token: str | None, audio: bytes, timeout_s: float
) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    form = {"question": "Is the tone high or low?", "choices": json.dumps(["high", "low"])}

    def one(_: int) -> tuple[float, int]:
        started = time.perf_counter()
        with httpx.Client(timeout=timeout_s) as client:
            response = client.post(
                f"{url}/v1/answer", data=form, files={"audio": ("clip.wav", audio)}, headers=headers
            )
        return time.perf_counter() - started, response.status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    latencies = sorted(t for t, status in results if status == 200)
    errors = sum(1 for _, status in results if status != 200)

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(round(p * (len(latencies) - 1))))]
            if latencies
            else float("nan")
        )

    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": errors,
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_s": pct(0.50),
        "p99_s": pct(0.99),
        "mean_s": statistics.fmean(latencies) if latencies else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--token", default=None)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    audio = clip_bytes()
    rows = [
        run_level(args.url, int(c), args.requests, args.token, audio, args.timeout_s)
        for c in args.concurrency.split(",")
    ]
    print(f"{'clients':>7} {'req/s':>8} {'p50 s':>8} {'p99 s':>8} {'errors':>6}")
    for r in rows:
        figures = f"{r['requests_per_s']:>8.2f} {r['p50_s']:>8.3f} {r['p99_s']:>8.3f}"
        print(f"{r['concurrency']:>7} {figures} {r['errors']:>6}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"url": args.url, "levels": rows}, handle, indent=1)
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

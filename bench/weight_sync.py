"""Weight-transfer benchmark: seconds per update against the one-copy floor, and peak memory.

    python bench/weight_sync.py --models tiny=DIR,small=DIR,medium=DIR [--workers 1,2]
                                [--bucket-mb 64] [--repeats 5] [--out F.json]

End to end, the real thing: a learner actor sends through vLLM's weight-transfer API (our gloo
trainer engine; `learner.weight_source`) to W vLLM rollout actors, which receive chunk by chunk
and reload layer by layer (`rollout.weight_transfer`), then reset their caches. For each model:
seconds (median), the floor (one in-memory copy of the model's bytes), and the peak bytes of
transfer buffers alive at once on the sender (gathered group, cast copies, packed chunk) and on
each receiver (chunks still referenced by a layer being loaded), against the model's bytes and
the bucket. `make-tiny --size medium` builds the few-hundred-MB model (about 400 MB in float32).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def copy_floor(nbytes: int, repeats: int) -> float:
    """Median seconds of one in-memory copy of `nbytes` (the floor)."""
    source = torch.randn(nbytes // 4)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        source.clone()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def end_to_end(model_dir: str, label: str, workers: int, bucket_mb: int, repeats: int) -> dict:
    """A real LearnerGroup and RolloutPool (Ray actors, vLLM engines) updating `workers` engines."""
    import ray

    from cluster.config import load_config
    from cluster.learner_group import LearnerGroup
    from cluster.placement import make_placement
    from cluster.pool import RolloutPool

    config = load_config(
        "tiny-cpu",
        [f"model.path={model_dir}", f"rollout.num_workers={workers}", f"sync.bucket_mb={bucket_mb}"],
    )
    placement = make_placement(config)
    learner = LearnerGroup(config, placement, model_dir)
    pool = RolloutPool(config, placement, model_dir)
    pool.connect(learner)
    times, syncs, receivers = [], [], []
    for version in range(1, repeats + 2):
        times.append(pool.broadcast(version))
        syncs.append(dict(pool.last_sync))
        receivers.append(
            max(ray.get([w.transfer_stats.remote() for w in pool.workers]), key=lambda s: s["peak_bytes"])
        )
    times, syncs, receivers = times[1:], syncs[1:], receivers[1:]  # the first round connects
    for actor in pool.workers + learner.ranks:
        ray.kill(actor)
    ray.util.remove_placement_group(placement.group)
    nbytes = syncs[0]["bytes"]
    floor_s = copy_floor(int(nbytes), repeats)
    seconds = statistics.median(times)
    return {
        "model": label,
        "mb": nbytes / 1024**2,
        "workers": workers,
        "bucket_mb": bucket_mb,
        "seconds": seconds,
        "floor_s": floor_s,
        "ratio_to_floor": seconds / floor_s,
        "sender_peak_mb": max(s["sender_peak_bytes"] for s in syncs) / 1024**2,
        "receiver_peak_mb": max(r["peak_bytes"] for r in receivers) / 1024**2,
        "breakdown_s": {
            **{
                k: statistics.median(s[k] for s in syncs)
                for k in syncs[0]
                if k.startswith("sender_") and k.endswith("_s")
            },
            **{
                f"receiver_{k}": statistics.median(r[k] for r in receivers)
                for k in receivers[0]
                if k.endswith("_s")
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", required=True, help="label=DIR,... (e.g. tiny=A,small=B,medium=C)")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--bucket-mb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench/results/weight_sync.json")
    args = parser.parse_args(argv)
    import ray

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    rows = []
    for item in args.models.split(","):
        label, path = item.split("=", 1)
        for w in (int(x) for x in args.workers.split(",")):
            rows.append(end_to_end(path, label, w, args.bucket_mb, args.repeats))
    ray.shutdown()
    print(
        f"{'model':<8} {'MB':>7} {'workers':>7} {'bucket MB':>9} {'seconds':>8} {'x floor':>7} "
        f"{'per worker':>10} {'sender peak MB':>14} {'receiver peak MB':>16}"
    )
    for r in rows:
        r["ratio_per_worker"] = r["ratio_to_floor"] / r["workers"]
        print(
            f"{r['model']:<8} {r['mb']:>7.1f} {r['workers']:>7} {r['bucket_mb']:>9} {r['seconds']:>8.3f} "
            f"{r['ratio_to_floor']:>7.2f} {r['ratio_per_worker']:>10.2f} {r['sender_peak_mb']:>14.1f} "
            f"{r['receiver_peak_mb']:>16.1f}"
        )
    for r in rows:
        parts = ", ".join(f"{k[:-2]} {v:.3f}" for k, v in r["breakdown_s"].items())
        print(f"{r['model']} x{r['workers']} (median s): {parts}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

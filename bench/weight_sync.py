"""Weight-sync benchmark: seconds per broadcast against bytes moved, next to the floor.

    python bench/weight_sync.py [--sizes-mb 2.4,132,400] [--workers 1,2] [--repeats 5] [--out F.json]

Part 1 (raw): the same bucketed gloo broadcast the system uses (`rollout.weight_sync.SyncGroup`),
learner process -> W receiver processes, for the tiny model's bytes, the small model's and a
synthetic state of a few hundred MB; the floor is one in-memory copy of the same bytes.
Part 2 (end to end): the real thing for the tiny and small checkpoints, learner actor -> vLLM
rollout actors, including vLLM's reload and cache resets (`RolloutPool.broadcast`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.network import free_port  # noqa: E402
from rollout.weight_sync import SyncGroup  # noqa: E402

BUCKET = 256 * 1024**2


def _receiver(port: int, rank: int, world: int, sizes: list[int], repeats: int) -> None:
    group = SyncGroup("127.0.0.1", port, rank, world, "gloo", 300)
    for numel in sizes:
        buckets = [
            torch.empty(min(BUCKET // 4, numel - i), dtype=torch.float32)
            for i in range(0, numel, BUCKET // 4)
        ]
        for _ in range(repeats + 1):
            for bucket in buckets:
                group.broadcast(bucket)


def raw_broadcast(sizes_mb: list[float], workers: int, repeats: int) -> list[dict]:
    numels = [int(mb * 1024**2 / 4) for mb in sizes_mb]
    port = free_port()
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_receiver, args=(port, r + 1, workers + 1, numels, repeats))
        for r in range(workers)
    ]
    for p in procs:
        p.start()
    group = SyncGroup("127.0.0.1", port, 0, workers + 1, "gloo", 300)
    rows = []
    for mb, numel in zip(sizes_mb, numels, strict=True):
        buckets = [torch.randn(min(BUCKET // 4, numel - i)) for i in range(0, numel, BUCKET // 4)]
        times, floors = [], []
        for attempt in range(repeats + 1):
            started = time.perf_counter()
            for bucket in buckets:
                group.broadcast(bucket)
            elapsed = time.perf_counter() - started
            started = time.perf_counter()
            for bucket in buckets:
                bucket.clone()
            floor = time.perf_counter() - started
            if attempt:  # the first round sets up connections
                times.append(elapsed)
                floors.append(floor)
        seconds, floor = statistics.median(times), statistics.median(floors)
        rows.append(
            {
                "kind": "raw",
                "mb": mb,
                "workers": workers,
                "seconds": seconds,
                "floor_s": floor,
                "ratio_to_floor": seconds / floor,
                "gb_per_s": mb / 1024 / seconds,
            }
        )
    for p in procs:
        p.join(timeout=120)
    return rows


def _state(model_dir: str) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    return [t for f in sorted(Path(model_dir).glob("*.safetensors")) for t in load_file(f).values()]


def copy_floor(numel: int, repeats: int) -> float:
    """Median seconds of one in-memory copy of `numel` float32 values (the floor)."""
    source = torch.randn(numel)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        source.clone()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def end_to_end(model_dir: str, label: str, workers: int, repeats: int) -> dict:
    """A real LearnerGroup and RolloutPool (Ray actors, vLLM engines) broadcasting `model_dir`."""
    import ray

    from cluster.config import load_config
    from cluster.placement import make_placement
    from cluster.pool import LearnerGroup, RolloutPool

    nbytes = sum(t.numel() * t.element_size() for t in _state(model_dir))
    floor_s = copy_floor(nbytes // 4, repeats)  # before any engine starts, on a quiet machine
    config = load_config("tiny-cpu", [f"model.path={model_dir}", f"rollout.num_workers={workers}"])
    placement = make_placement(config)
    learner = LearnerGroup(config, placement, model_dir)
    pool = RolloutPool(config, placement, model_dir)
    pool.connect(learner)
    times, parts = [], []
    for version in range(1, repeats + 2):
        times.append(pool.broadcast(version))
        parts.append(dict(pool.last_sync))
    times, parts = times[1:], parts[1:]  # the first round sets up connections and buckets
    for actor in pool.workers + learner.ranks:
        ray.kill(actor)
    ray.util.remove_placement_group(placement.group)
    seconds = statistics.median(times)
    return {
        "kind": f"end-to-end {label}",
        "mb": nbytes / 1024**2,
        "workers": workers,
        "seconds": seconds,
        "floor_s": floor_s,
        "ratio_to_floor": seconds / floor_s,
        "gb_per_s": nbytes / 1024**3 / seconds,
        "breakdown_s": {k: statistics.median(p[k] for p in parts) for k in parts[0]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes-mb", default="2.4,132,400")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="", help="tiny=DIR,small=DIR for the end-to-end part")
    parser.add_argument("--out", default="bench/results/weight_sync.json")
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes_mb.split(",")]
    rows = []
    for w in (int(x) for x in args.workers.split(",")):
        rows += raw_broadcast(sizes, w, args.repeats)
    if args.models:
        import ray

        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
        for item in args.models.split(","):
            label, path = item.split("=", 1)
            for w in (int(x) for x in args.workers.split(",")):
                rows.append(end_to_end(path, label, w, args.repeats))
        ray.shutdown()
    # x floor: against one copy of the model's bytes; per worker: against one copy per receiver
    # (each receiver gets, and vLLM reloads, its own copy of the bytes).
    print(
        f"{'kind':<18} {'MB':>8} {'workers':>7} {'seconds':>9} {'floor s':>9} {'x floor':>8} "
        f"{'per worker':>10} {'GB/s':>7}"
    )
    for r in rows:
        r["ratio_per_worker"] = r["ratio_to_floor"] / r["workers"]
        print(
            f"{r['kind']:<18} {r['mb']:>8.1f} {r['workers']:>7} {r['seconds']:>9.4f} {r['floor_s']:>9.4f} "
            f"{r['ratio_to_floor']:>8.2f} {r['ratio_per_worker']:>10.2f} {r['gb_per_s']:>7.2f}"
        )
    for r in rows:
        if "breakdown_s" in r:
            parts = ", ".join(f"{k[:-2]} {v:.4f}" for k, v in r["breakdown_s"].items())
            print(f"{r['kind']} x{r['workers']} breakdown (median s): {parts}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rollout benchmark: the vLLM engine against HF `generate` on the same prompts with audio.

    python bench/rollout_engines.py --model DIR [--batches 1,4,8] [--n 8] [--max-tokens 32] [--repeats 3]

Both engines get the same questions (2 s clips), the same n and token budget, greedy-free sampling
at temperature 1.0 and fp32; runs alternate between engines; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.audio import SAMPLE_RATE  # noqa: E402
from rollout.question import AudioQuestion  # noqa: E402
from rollout.sampling import SamplingConfig  # noqa: E402


def questions(count: int, folder: Path) -> list[AudioQuestion]:
    out = []
    for i in range(count):
        t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
        path = folder / f"q{i}.wav"
        sf.write(path, (0.5 * np.sin(2 * np.pi * (300 + 170 * i) * t)).astype(np.float32), SAMPLE_RATE)
        out.append(AudioQuestion(str(i), str(path), "Is the tone high or low?", ["high", "low"], "high"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/rollout.json")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from rollout.audio import load_audio
    from rollout.hf_engine import hf_generate
    from rollout.vllm_engine import EngineConfig, RolloutWorker

    torch.set_num_threads(2)
    sampling = SamplingConfig(n=args.n, temperature=1.0, max_tokens=args.max_tokens)
    worker = RolloutWorker(args.model, EngineConfig(dtype="float32"))
    processor = AutoProcessor.from_pretrained(args.model)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (int(b) for b in args.batches.split(",")):
            items = questions(batch, Path(tmp))
            waves = [load_audio(q.audio_path) for q in items]
            timings: dict[str, list[tuple[float, int]]] = {"vllm": [], "hf": []}
            for attempt in range(args.repeats + 1):  # the first round warms both engines up
                started = time.perf_counter()
                results = worker.generate(items, sampling)
                vllm = (
                    time.perf_counter() - started,
                    sum(len(c.token_ids) for r in results for c in r.completions),
                )
                started = time.perf_counter()
                groups = hf_generate(
                    model, processor, [(q.question, q.choices) for q in items], waves, sampling
                )
                hf = (time.perf_counter() - started, sum(len(c) for g in groups for c in g))
                if attempt:
                    timings["vllm"].append(vllm)
                    timings["hf"].append(hf)
            for engine, runs in timings.items():
                seconds = statistics.median(t for t, _ in runs)
                tokens = statistics.median(k for _, k in runs)
                rows.append(
                    {
                        "engine": engine,
                        "questions": batch,
                        "completions": batch * args.n,
                        "seconds": seconds,
                        "tokens_per_s": tokens / seconds,
                        "completions_per_s": batch * args.n / seconds,
                    }
                )
    print(f"{'engine':<6} {'questions':>9} {'seconds':>8} {'tokens/s':>9} {'compl/s':>8}")
    for r in rows:
        print(
            f"{r['engine']:<6} {r['questions']:>9} {r['seconds']:>8.3f} {r['tokens_per_s']:>9.1f} "
            f"{r['completions_per_s']:>8.1f}"
        )
    for batch in sorted({r["questions"] for r in rows}):
        v, h = (
            next(r for r in rows if r["engine"] == engine and r["questions"] == batch)
            for engine in ("vllm", "hf")
        )
        speedup = v["tokens_per_s"] / h["tokens_per_s"]
        print(f"  {batch} questions: vLLM is {speedup:.1f}x HF generate in tokens/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

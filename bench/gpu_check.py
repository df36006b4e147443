"""The learner on one GPU: speed and memory against the planner, no vLLM or Ray needed.

    python bench/gpu_check.py --layers 32 --audio-layers 32 [--points 1x256,2x256,...]
    python bench/gpu_check.py --cases learner --layers 8 --zero 3 [--checkpointing]
    python bench/gpu_check.py --tiny --device cpu [--cases ...]   (the code paths; what the test runs)

`bench/gpu_check.sh` runs them all as one command on a lent machine. A Qwen2-Audio-7B-shaped model
(the bundled config: hidden 4096, vocab 156032) with --layers decoder and --audio-layers encoder
layers, random weights made on the device in bfloat16. Cases (--cases; one failing still lets the
others run; the exit status is 0 only if all ran):

micro_batch_table  `CompletionScorer` as the learner builds it, forward + backward and a no-grad
                   pass, at each --points QxT (questions per micro-batch x completion tokens, 8
                   completions each, a 30 s clip = 750 audio tokens + the planner's prompt text),
                   gradient checkpointing off and on: seconds, completion tokens/s, useful MFU,
                   allocated peak over weights + gradients against the planner's activation items,
                   the allocator's reserved/allocated ratio; OOM is recorded, not fatal.
token_logprobs     logits [8, T, vocab] -> `learner.grpo.token_logprobs` against a naive float32
                   log_softmax: the extra peak of each, and that they agree.
optimizer_state    torch AdamW's state against the planner's bytes per parameter; a step's time
                   the default way and fused (as the learner runs on CUDA).
learner            the project's `Learner` with DeepSpeed (--zero, --checkpointing; needs
                   DeepSpeed): a rank's share of a step timed per phase, peaks against the plan
                   (`bench/gpu_learner.py`).

`--tiny` uses the tiny model (float32, with its processor); on a CPU nothing is measured ("n/a")
but every forward, backward, optimizer step and estimate runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub on the GPU machine: fail, never wait on a download
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from bench.gpu_cases import micro_batch_table, optimizer_case, token_logprobs_case  # noqa: E402
from bench.gpu_learner import learner_case  # noqa: E402
from bench.gpu_measure import Meter, device_header, fmt, free, gib, print_case  # noqa: E402
from bench.gpu_model import build_setup  # noqa: E402

CASES = {
    "micro_batch_table": micro_batch_table,
    "token_logprobs": token_logprobs_case,
    "optimizer_state": optimizer_case,
    "learner": learner_case,
}
DEFAULT_CASES = "micro_batch_table,token_logprobs,optimizer_state"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model folder (float32), not 7B-wide")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of the 7B-wide model")
    parser.add_argument("--audio-layers", type=int, default=8, help="audio encoder layers")
    parser.add_argument(
        "--points", default="", help="micro_batch_table: QxT,... (default: 1, 2, 4 x 256, 512)"
    )
    parser.add_argument("--completion-tokens", type=int, default=256)
    parser.add_argument("--group", type=int, default=8, help="completions per question (sampling.n)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (the fastest is kept)")
    parser.add_argument("--zero", type=int, default=0, help="learner: ZeRO stage")
    parser.add_argument("--checkpointing", action="store_true", help="learner: gradient checkpointing")
    parser.add_argument("--questions", type=int, default=4, help="learner: questions per rank and step")
    parser.add_argument("--warmup-steps", type=int, default=2, help="learner: untimed steps first")
    parser.add_argument("--out", default="bench/results/gpu_check.json")
    args = parser.parse_args(argv)
    unknown = set(args.cases.split(",")) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; known: {', '.join(CASES)}")
    if not args.points:  # the tiny model on a CPU: the same code, short completions
        args.points = "1x16,2x16" if args.tiny else "1x256,2x256,4x256,1x512,2x512,4x512"
    if args.tiny:  # seconds, not minutes, on a CPU
        args.completion_tokens = min(args.completion_tokens, 16)
        args.questions, args.warmup_steps, args.repeats = min(args.questions, 2), 1, 1
    return args


def _setup(args, device: torch.device, workdir: Path, report: dict):
    """The in-memory model the first three cases share (None if it failed: they then fail too)."""
    started = time.perf_counter()
    try:
        setup = build_setup(args, device, workdir)
    except Exception as error:  # reported; the exit status says it
        traceback.print_exc()
        report["setup_error"] = f"{type(error).__name__}: {error}"
        return None
    params = sum(p.numel() for p in setup.model.parameters())
    report["model"] = {**dataclasses.asdict(setup.shape), "real_params": params, "dtype": str(setup.dtype)}
    if device.type == "cuda":
        report["model"]["allocated_after_build_gib"] = gib(torch.cuda.memory_allocated())
    print(
        f"model: {params:,} params ({setup.shape.layers} decoder, {setup.shape.audio_layers} encoder "
        f"layers, hidden {setup.shape.hidden}, vocab {setup.shape.vocab}), {setup.dtype}, "
        f"built in {time.perf_counter() - started:.1f} s"
    )
    return setup


def run_case(name: str, args, setup, device: torch.device, meter: Meter, workdir: Path) -> dict:
    started = time.perf_counter()
    try:
        if name == "learner":
            result = {"status": "ok", **learner_case(args, setup, device, meter, workdir)}
        elif setup is None:
            result = {"status": "error", "error": "no model (setup failed)"}
        else:
            result = {"status": "ok", **CASES[name](args, setup, device, meter)}
    except Exception as error:  # one case failing leaves the others running
        traceback.print_exc()
        result = {"status": "error", "error": f"{type(error).__name__}: {error}"}
        free(device)
    result["case_s"] = round(time.perf_counter() - started, 2)
    print_case(name, result)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    torch.manual_seed(0)
    header = device_header(device)
    header["alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    print(
        f"gpu_check: torch {header['torch']}, transformers {header['transformers']}, {header['device']} "
        f"({header['name']}, {fmt(header['total_gib'])}), PYTORCH_CUDA_ALLOC_CONF={header['alloc_conf']!r}"
    )
    report: dict = {"header": header, "args": vars(args), "cases": {}}
    meter = Meter(device)
    names = args.cases.split(",")
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as workdir:
        setup = _setup(args, device, Path(workdir), report) if set(names) - {"learner"} else None
        for name in names:
            if name == "learner" and setup is not None:
                setup.model = None  # the learner loads its own model: free the device first
                free(device)
            report["cases"][name] = run_case(name, args, setup, device, meter, Path(workdir))
    report["wall_s"] = round(time.perf_counter() - started, 2)
    report["ok"] = ok = all(c["status"] == "ok" for c in report["cases"].values())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{'all cases ran' if ok else 'SOME CASES FAILED'}; wall {report['wall_s']:.1f} s; wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

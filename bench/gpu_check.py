"""The memory planner's estimates (`cluster.plan`) against real CUDA peaks, on one GPU, no weights.

    python bench/gpu_check.py [--layers 8] [--audio-layers 8] [--completion-tokens 256]
                              [--out bench/results/gpu_check.json]
    python bench/gpu_check.py --tiny --device cpu      (the code path only; what the test runs)

A Qwen2-Audio-7B-shaped model (the bundled config: hidden 4096, vocab 156032) with fewer decoder
and encoder layers, random weights made straight on the device in bfloat16. No vLLM, Ray,
DeepSpeed, network or model hub is needed. Three cases, each on its own (one failing still lets
the others run; the exit status is 0 only if all ran and agreed):

A  learner step: the learner's micro-batch (1 question, 8 completions of --completion-tokens, a
   30 s clip = 750 audio tokens + the planner's prompt text) through `CompletionScorer`, forward
   and backward, gradient checkpointing off and on; the peak allocated over weights + gradients
   against the planner's activation items (`cluster.plan_learner.activation_needs`).
B  token_logprobs: logits [8, T, vocab] -> `learner.grpo.token_logprobs` against a naive float32
   log_softmax + gather: the extra peak of each (forward + backward), and that they agree.
C  optimizer state: torch AdamW's state after one step over the model's parameters against the
   planner's 16 B/param (DeepSpeed's fp32 master, moments and gradient partition).

`--tiny` uses a tiny model folder (assets.tiny_model, float32, with its processor); on a CPU
nothing is measured ("n/a") but every forward, backward and estimate runs.
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

from bench.gpu_measure import Meter, device_header, error_pct, fmt, free, gib, print_case  # noqa: E402
from bench.gpu_model import Setup, build_setup, completions, planner_config  # noqa: E402
from cluster.plan_learner import activation_needs, learner_needs  # noqa: E402
from cluster.plan_units import GIB  # noqa: E402
from learner.grpo import token_logprobs  # noqa: E402
from learner.policy import CompletionBatch, CompletionScorer, build_rows  # noqa: E402

# -- case A: one learner micro-batch ----------------------------------------------------------------


def learner_step(args, setup: Setup, device: torch.device, meter: Meter) -> dict:
    model = setup.model
    generator = torch.Generator().manual_seed(1)
    rows: CompletionBatch = build_rows(
        [setup.prompt_ids],
        completions(setup, args.group, args.completion_tokens, generator),
        [0] * args.group,
        setup.pad_id,
        setup.eos_ids,
    )
    features = setup.input_features.to(device)
    feature_mask = setup.feature_attention_mask.to(device)
    scorer = CompletionScorer(model, temperature=1.0, share_prompt=True)  # as the learner builds it
    model.train()
    params = list(model.parameters())
    state_bytes = sum(p.numel() * p.element_size() for p in params)
    out: dict = {
        "prompt_tokens": rows.prompt_length,
        "prompt_source": setup.prompt_source,
        "completions": args.group,
        "completion_tokens": args.completion_tokens,
        "measured_weights_gib": gib(state_bytes),
        "measured_gradients_gib": gib(state_bytes),
        "runs": [],
    }
    needs = learner_needs(planner_config(args, setup.dtype, False), setup.shape)
    planned = {n.item.split(" (")[0]: n.nbytes for n in needs}  # "gradients (N M trainable params)"
    out["estimate_weights_gib"] = gib(planned["weights"])
    out["estimate_gradients_gib"] = gib(planned["gradients"])

    def step() -> tuple[torch.Tensor, int | None]:
        logp = scorer(rows, features, feature_mask)
        after_forward = meter.now()
        loss = -logp.mean()
        loss.backward()
        return loss.detach(), after_forward

    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable()
        else:
            model.gradient_checkpointing_disable()
        started = time.perf_counter()
        step()  # warm-up: gradients allocated (kept, zeroed), kernels and workspaces chosen
        meter.sync()
        warm_s = time.perf_counter() - started
        model.zero_grad(set_to_none=False)
        meter.start()  # weights + gradients (+ inputs) are the baseline
        started = time.perf_counter()
        loss, after_forward = step()
        peak = meter.peak()
        seconds = time.perf_counter() - started
        model.zero_grad(set_to_none=False)
        config = planner_config(args, setup.dtype, checkpointing)
        needs = activation_needs(config, setup.shape, setup.model.dtype.itemsize)
        estimate = sum(n.nbytes for n in needs)
        out["runs"].append(
            {
                "gradient_checkpointing": checkpointing,
                "estimate_gib": gib(estimate),
                "estimate_items_gib": {n.item: gib(n.nbytes) for n in needs},
                "measured_gib": gib(peak),
                "measured_after_forward_gib": gib(after_forward),
                "error_pct": error_pct(estimate, peak),
                "loss": round(float(loss), 4),
                "step_s": round(seconds, 3),
                "warmup_s": round(warm_s, 3),
            }
        )
        del loss
        free(device)
    model.gradient_checkpointing_disable()
    return out


# -- case B: token_logprobs against a naive float32 log_softmax -------------------------------------


def naive_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(2, ids.unsqueeze(-1)).squeeze(-1)


def token_logprobs_case(args, setup: Setup, device: torch.device, meter: Meter) -> dict:
    vocab = setup.model.config.text_config.vocab_size
    dtype = setup.model.dtype
    rows, length = args.group, args.completion_tokens
    generator = torch.Generator(device=device).manual_seed(2)
    logits_bytes = rows * length * vocab * dtype.itemsize
    config = planner_config(args, dtype, False)
    logit_need = next(n for n in activation_needs(config, setup.shape, dtype.itemsize) if "logits" in n.item)
    # The planner's logits item less the logits themselves: their gradient + one row's float32 pass.
    estimate = logit_need.nbytes - logits_bytes
    out: dict = {"logits_shape": [rows, length, vocab], "dtype": str(dtype), "logits_gib": gib(logits_bytes)}
    out["estimate_ours_extra_gib"] = gib(estimate)
    ids = torch.randint(0, vocab, (rows, length), device=device, generator=generator)
    results = {}
    for name, fn in (("ours", token_logprobs), ("naive", naive_logprobs)):
        logits = (
            3.0 * torch.randn(rows, length, vocab, device=device, generator=generator.manual_seed(3))
        ).to(dtype)
        logits.requires_grad_(True)
        fn(logits, ids).sum().backward()  # warm-up
        logits.grad = None
        meter.start()
        started = time.perf_counter()
        values = fn(logits, ids)
        after_forward = meter.now()
        values.sum().backward()
        peak = meter.peak()
        results[name] = (values.detach(), logits.grad.float().abs().max().item())
        out[f"{name}_peak_extra_gib"] = gib(peak)
        out[f"{name}_after_forward_gib"] = gib(after_forward)
        out[f"{name}_s"] = round(time.perf_counter() - started, 4)
        del logits, values
        free(device)
    diff = (results["ours"][0] - results["naive"][0]).abs().max().item()
    out["max_abs_diff"] = diff
    out["agree"] = bool(diff <= 1e-2)
    out["error_pct_ours"] = error_pct(estimate, (out["ours_peak_extra_gib"] or 0) * GIB)
    if not out["agree"]:
        raise AssertionError(f"token_logprobs and the naive log_softmax differ by {diff:.3g} (> 1e-2)")
    return out


# -- case C: optimizer state ------------------------------------------------------------------------


def optimizer_case(args, setup: Setup, device: torch.device, meter: Meter) -> dict:
    model = setup.model
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    count = sum(p.numel() for p in params)
    config = planner_config(args, setup.dtype, False)
    need = next(n for n in learner_needs(config, setup.shape) if n.item.startswith("optimizer"))
    optimizer = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), weight_decay=0.0)
    meter.start()
    started = time.perf_counter()
    optimizer.step()
    peak = meter.peak()
    seconds = time.perf_counter() - started
    state = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    )
    out = {
        "params": count,
        "param_dtype": str(params[0].dtype),
        "planner_params": setup.shape.params,
        "estimate_gib": gib(need.nbytes),
        "estimate_bytes_per_param": round(need.nbytes / setup.shape.params, 2),
        "estimate_item": need.item,
        "torch_adamw_state_gib": gib(state),
        "torch_adamw_bytes_per_param": round(state / count, 2),
        "step_peak_extra_gib": gib(peak),
        "step_s": round(seconds, 3),
        "note": "torch AdamW keeps both moments in the parameters' dtype; DeepSpeed's bf16 run keeps "
        "an fp32 master, fp32 moments and an fp32 gradient partition (the planner's 16 B/param)",
    }
    del optimizer
    free(device)
    return out


# -- the run ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model folder (float32), not 7B-wide")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of the 7B-wide model")
    parser.add_argument("--audio-layers", type=int, default=8, help="audio encoder layers")
    parser.add_argument("--completion-tokens", type=int, default=256)
    parser.add_argument("--group", type=int, default=8, help="completions per question (sampling.n)")
    parser.add_argument("--out", default="bench/results/gpu_check.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    torch.manual_seed(0)
    header = device_header(device)
    print(
        f"gpu_check: torch {header['torch']}, transformers {header['transformers']}, {header['device']} "
        f"({header['name']}, {fmt(header['total_gib'])})"
    )
    report: dict = {"header": header, "args": vars(args), "cases": {}}
    meter = Meter(device)
    cases = {
        "learner_step": learner_step,
        "token_logprobs": token_logprobs_case,
        "optimizer_state": optimizer_case,
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as workdir:
        try:
            setup = build_setup(args, device, Path(workdir))
            params = sum(p.numel() for p in setup.model.parameters())
            report["model"] = {
                **dataclasses.asdict(setup.shape),
                "real_params": params,
                "dtype": str(setup.dtype),
            }
            if device.type == "cuda":
                report["model"]["allocated_after_build_gib"] = gib(torch.cuda.memory_allocated())
            print(
                f"model: {params:,} params ({setup.shape.layers} decoder, {setup.shape.audio_layers} encoder "
                f"layers, hidden {setup.shape.hidden}, vocab {setup.shape.vocab}), {setup.dtype}, "
                f"built in {time.perf_counter() - started:.1f} s"
            )
        except Exception as error:  # reported; the exit status says it
            traceback.print_exc()
            report["setup_error"] = f"{type(error).__name__}: {error}"
            setup = None
        for name, case in cases.items():
            case_started = time.perf_counter()
            if setup is None:
                result = {"status": "error", "error": "no model (setup failed)"}
            else:
                try:
                    result = {"status": "ok", **case(args, setup, device, meter)}
                except Exception as error:  # one case failing leaves the others running
                    traceback.print_exc()
                    result = {"status": "error", "error": f"{type(error).__name__}: {error}"}
                    free(device)
            result["case_s"] = round(time.perf_counter() - case_started, 2)
            report["cases"][name] = result
            print_case(name, result)
    report["wall_s"] = round(time.perf_counter() - started, 2)
    ok = all(c["status"] == "ok" for c in report["cases"].values())
    report["ok"] = ok
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{'all cases ran' if ok else 'SOME CASES FAILED'}; wall {report['wall_s']:.1f} s; wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The cases of `bench/gpu_check.py` that need no DeepSpeed: the learner's micro-batch table, the
log-prob kernel and the optimizer. Each takes (args, setup, device, meter) and returns its figures;
on a CPU the memory figures are None but every forward, backward and estimate runs."""

from __future__ import annotations

import time
import traceback

import torch

from bench.gpu_measure import Meter, error_pct, free, gib
from bench.gpu_model import Setup, completions, planner_config
from cluster.plan_learner import activation_needs, learner_needs, no_grad_needs
from cluster.plan_units import ALLOCATOR_RESERVE, GIB
from learner.grpo import token_logprobs
from learner.policy import CompletionBatch, CompletionScorer, build_rows

PEAK_TFLOPS = 790.0  # bf16 dense matrix rate measured on the H200 (README, Measured on GPU)

# -- case A: the micro-batch table -----------------------------------------------------------------


def _rows(setup: Setup, questions: int, group: int, length: int) -> CompletionBatch:
    generator = torch.Generator().manual_seed(1)
    made = [c for _ in range(questions) for c in completions(setup, group, length, generator)]
    index = [q for q in range(questions) for _ in range(group)]
    return build_rows([setup.prompt_ids] * questions, made, index, setup.pad_id, setup.eos_ids)


def _timed(meter: Meter, fn, repeats: int) -> float:
    """The fastest of `repeats` calls, in seconds (device synchronised)."""
    best = float("inf")
    for _ in range(repeats):
        meter.sync()
        started = time.perf_counter()
        fn()
        meter.sync()
        best = min(best, time.perf_counter() - started)
    return best


def micro_batch_point(
    args, setup: Setup, device, meter: Meter, questions: int, length: int, ckpt: bool
) -> dict:
    """One micro-batch of `questions` x group x `length` through `CompletionScorer` as the learner
    builds it (prompt sharing; packed rows under checkpointing): forward + backward, and a no-grad
    pass (the reference's) the same way; peaks against the planner."""
    model, rows = setup.model, _rows(setup, questions, args.group, length)
    features = setup.input_features.repeat(questions, 1, 1).to(device)
    feature_mask = setup.feature_attention_mask.repeat(questions, 1).to(device)
    (model.gradient_checkpointing_enable if ckpt else model.gradient_checkpointing_disable)(
        **({"gradient_checkpointing_kwargs": {"use_reentrant": False}} if ckpt else {})
    )
    scorer = CompletionScorer(model, 1.0, share_prompt=True, packed=ckpt)
    config = planner_config(args.group, length, setup.dtype, ckpt)
    b = setup.dtype.itemsize
    planned = sum(n.nbytes for n in activation_needs(config, setup.shape, b, questions))
    planned_no_grad = sum(n.nbytes for n in no_grad_needs(config, setup.shape, b, questions))
    point = {"questions": questions, "completion_tokens": length, "checkpointing": ckpt}
    point["planner_gib"], point["planner_no_grad_gib"] = gib(planned), gib(planned_no_grad)

    def step() -> None:
        scorer(rows, features, feature_mask).mean().neg().backward()

    def no_grad() -> None:
        with torch.no_grad():
            scorer(rows, features, feature_mask)

    try:
        step()  # warm-up: kernels chosen, workspaces allocated
        model.zero_grad(set_to_none=False)
        meter.start()
        point["step_s"] = round(_timed(meter, step, args.repeats), 4)
        point["measured_gib"] = gib(meter.peak())
        allocated, reserved = meter.totals()
        point["allocated_total_gib"], point["reserved_total_gib"] = gib(allocated), gib(reserved)
        point["reserved_over_allocated"] = round(reserved / allocated, 3) if allocated else None
        model.zero_grad(set_to_none=False)
        meter.start()
        point["no_grad_s"] = round(_timed(meter, no_grad, 1), 4)
        point["measured_no_grad_gib"] = gib(meter.peak())
    except Exception as error:  # one point failing leaves the others running
        point["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        point["oom"] = "out of memory" in str(error).lower()  # the plan should say it cannot fit
        if not point["oom"]:
            traceback.print_exc()
    finally:
        model.zero_grad(set_to_none=False)
        free(device)
    tokens = questions * (rows.prompt_length + args.group * length)  # each prompt once
    params = sum(p.numel() for p in model.parameters())
    if "step_s" in point:
        point["completion_tokens_per_s"] = round(questions * args.group * length / point["step_s"], 1)
        point["useful_mfu_pct"] = round(100 * 6 * params * tokens / point["step_s"] / (PEAK_TFLOPS * 1e12), 1)
        point["error_pct"] = error_pct(planned, (point["measured_gib"] or 0) * GIB)
    return point


def micro_batch_table(args, setup: Setup, device: torch.device, meter: Meter) -> dict:
    """Every point of --points (QxT) with checkpointing off and on; weights + gradients held."""
    model = setup.model.train()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # held, as in training: the peaks count above them
    state = sum(p.numel() * p.element_size() for p in model.parameters())
    capacity = meter.total() or 0
    out: dict = {"prompt_tokens": len(setup.prompt_ids), "weights_gib": gib(state), "points": []}
    out["capacity_gib"] = gib(capacity) if capacity else None
    for ckpt in (False, True):
        for spec in args.points.split(","):
            questions, length = (int(x) for x in spec.split("x"))
            point = micro_batch_point(args, setup, device, meter, questions, length, ckpt)
            if capacity:  # would the plan have let it run? (weights + gradients + reserve)
                need = 2 * state + point["planner_gib"] * GIB * (1 + ALLOCATOR_RESERVE)
                point["plan_fits"] = bool(need <= capacity)
            out["points"].append(point)
            print(f"  {point}", flush=True)
    model.gradient_checkpointing_disable()
    for p in model.parameters():
        p.grad = None
    free(device)
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
    config = planner_config(args.group, length, dtype, False)
    needs = activation_needs(config, setup.shape, dtype.itemsize, 1)
    logit_need = next(n for n in needs if "logits" in n.item)
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
        results[name] = values.detach()
        out[f"{name}_peak_extra_gib"] = gib(peak)
        out[f"{name}_after_forward_gib"] = gib(after_forward)
        out[f"{name}_s"] = round(time.perf_counter() - started, 4)
        del logits, values
        free(device)
    diff = (results["ours"] - results["naive"]).abs().max().item()
    out["max_abs_diff"] = diff
    out["agree"] = bool(diff <= 1e-2)
    out["error_pct_ours"] = error_pct(estimate, (out["ours_peak_extra_gib"] or 0) * GIB)
    if not out["agree"]:
        raise AssertionError(f"token_logprobs and the naive log_softmax differ by {diff:.3g} (> 1e-2)")
    return out


# -- case C: optimizer state and step time ----------------------------------------------------------


def optimizer_case(args, setup: Setup, device: torch.device, meter: Meter) -> dict:
    """torch AdamW over the model's parameters: its state against the planner's bytes per
    parameter, and one step's time the default way (foreach) and fused, as the learner runs on
    CUDA (the same update: their weights are compared)."""
    from learner.config import OptimizerConfig
    from learner.deepspeed_setup import adamw

    model = setup.model
    params = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in params)
    need = next(n for n in learner_needs(planner_config(args.group, 256, setup.dtype, False), setup.shape)
                if n.item.startswith("optimizer"))  # fmt: skip
    out: dict = {
        "params": count,
        "param_dtype": str(params[0].dtype),
        "planner_params": setup.shape.params,
        "estimate_gib": gib(need.nbytes),
        "estimate_bytes_per_param": round(need.nbytes / setup.shape.params, 2),
        "estimate_item": need.item,
        "note": "torch AdamW keeps both moments in the parameters' dtype; DeepSpeed's bf16 run keeps "
        "an fp32 master, fp32 moments and an fp32 gradient partition (the planner's 16 B/param)",
    }
    start = [p.detach().clone() for p in params] if not meter.cuda else None  # CPU: compare the two
    after = {}
    for fused in (False, True):
        for p in params:
            p.grad = torch.full_like(p, 1e-3)
        optimizer = adamw(params, OptimizerConfig(lr=1e-6), fused=fused)
        optimizer.step()  # the state is made here
        meter.start()
        seconds = _timed(meter, optimizer.step, args.repeats)
        name = "fused" if fused else "foreach"
        out[f"adamw_{name}_step_s"] = round(seconds, 4)
        out[f"adamw_{name}_step_peak_extra_gib"] = gib(meter.peak())
        state = sum(
            t.numel() * t.element_size()
            for s in optimizer.state.values()
            for t in s.values()
            if torch.is_tensor(t)
        )
        out["torch_adamw_state_gib"], out["torch_adamw_bytes_per_param"] = gib(state), round(state / count, 2)
        if start is not None:
            after[name] = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, s in zip(params, start, strict=True):
                    p.copy_(s)
        del optimizer
        for p in params:
            p.grad = None
        free(device)
    if after:
        out["fused_equals_foreach"] = all(
            torch.allclose(a, b, atol=1e-6) for a, b in zip(after["foreach"], after["fused"], strict=True)
        )
    return out

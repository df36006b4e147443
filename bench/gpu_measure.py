"""Measuring and printing for `bench/gpu_check.py`: CUDA peaks over a baseline, and the report."""

from __future__ import annotations

import gc
import os
import platform

import torch

GIB = 2**30

# -- measuring --------------------------------------------------------------------------------------


class Meter:
    """CUDA's allocated-bytes counters; on a CPU every figure is None ("n/a")."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.base = 0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def start(self) -> None:
        """From here, peaks count above what is allocated now."""
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()

    def now(self) -> int | None:
        return torch.cuda.memory_allocated() - self.base if self.cuda else None

    def peak(self) -> int | None:
        self.sync()
        return torch.cuda.max_memory_allocated() - self.base if self.cuda else None


def gib(nbytes: float | None) -> float | None:
    return None if nbytes is None else round(nbytes / GIB, 4)


def error_pct(estimate: float, measured: float | None) -> float | None:
    return None if not measured else round(100.0 * (estimate - measured) / measured, 1)


def fmt(value: float | None, unit: str = " GiB") -> str:
    return "n/a" if value is None else f"{value:.3f}{unit}"


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_header(device: torch.device) -> dict:
    import transformers

    header = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        header.update(name=props.name, total_gib=gib(props.total_memory), cuda=torch.version.cuda)
    else:
        pages = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        header.update(name=platform.processor() or platform.machine(), total_gib=gib(pages))
    return header


def print_case(name: str, result: dict) -> None:
    if result.get("status") != "ok":
        print(f"\n[{name}] FAILED: {result.get('error')}")
        return
    print(f"\n[{name}]")
    if name == "learner_step":
        print(
            f"  weights {fmt(result['measured_weights_gib'])} "
            f"(planner {fmt(result['estimate_weights_gib'])}), "
            f"gradients {fmt(result['measured_gradients_gib'])}; prompt {result['prompt_tokens']} tokens "
            f"({result['prompt_source']}), {result['completions']} x {result['completion_tokens']} completion"
        )
        for run in result["runs"]:
            ckpt = "on " if run["gradient_checkpointing"] else "off"
            pct = "n/a" if run["error_pct"] is None else f"{run['error_pct']:+.1f}%"
            print(
                f"  checkpointing {ckpt}: activations estimate {fmt(run['estimate_gib'])}, measured "
                f"{fmt(run['measured_gib'])} (after forward {fmt(run['measured_after_forward_gib'])}), "
                f"error {pct}, step {run['step_s']:.2f} s"
            )
            for item, value in run["estimate_items_gib"].items():
                print(f"      {fmt(value):>12}  {item}")
    elif name == "token_logprobs":
        pct = "n/a" if result["error_pct_ours"] is None else f"{result['error_pct_ours']:+.1f}%"
        print(
            f"  logits {result['logits_shape']} {result['dtype']}: {fmt(result['logits_gib'])}; extra peak "
            f"(forward + backward) ours {fmt(result['ours_peak_extra_gib'])} (planner "
            f"{fmt(result['estimate_ours_extra_gib'])}, error {pct}), naive float32 "
            f"{fmt(result['naive_peak_extra_gib'])}; max |diff| {result['max_abs_diff']:.2e}, "
            f"agree {result['agree']}"
        )
    elif name == "optimizer_state":
        print(
            f"  {result['params']:,} {result['param_dtype']} params: torch AdamW state "
            f"{fmt(result['torch_adamw_state_gib'])} ({result['torch_adamw_bytes_per_param']} B/param), "
            f"planner {fmt(result['estimate_gib'])} ({result['estimate_bytes_per_param']} B/param); "
            f"step's extra peak {fmt(result['step_peak_extra_gib'])}"
        )

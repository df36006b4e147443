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

    def totals(self) -> tuple[int | None, int | None]:
        """(allocated, reserved) peaks since `start`, whole (not above the baseline): the caching
        allocator's slack is the second over the first."""
        if not self.cuda:
            return None, None
        self.sync()
        return torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()

    def total(self) -> int | None:
        """The device's memory (None on a CPU)."""
        return torch.cuda.get_device_properties(0).total_memory if self.cuda else None


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
    """A case's figures as a reader wants them: the micro-batch table as a table, the rest as
    `key: value` lines (the JSON file has everything)."""
    if result.get("status") != "ok":
        print(f"\n[{name}] FAILED: {result.get('error')}")
        return
    print(f"\n[{name}]")
    if name == "micro_batch_table":
        print(
            f"  prompt {result['prompt_tokens']} tokens, weights {fmt(result['weights_gib'])} (+ gradients)"
        )
        print(
            "  ckpt  QxT      step s  no-grad s  tok/s    MFU %  act GiB (plan)    no-grad GiB (plan)"
            "  reserved/alloc"
        )
        for p in result["points"]:
            head = (
                f"  {'on ' if p['checkpointing'] else 'off'}   {p['questions']}x{p['completion_tokens']:<5}"
            )
            if "step_s" not in p:
                what = "OOM" if p.get("oom") else f"failed: {p.get('error')}"
                print(
                    f"{head}  {what} (plan: {fmt(p['planner_gib'])}, fits by the plan: {p.get('plan_fits')})"
                )
                continue
            print(
                f"{head}  {p['step_s']:6.3f}  {p.get('no_grad_s', float('nan')):9.3f}  "
                f"{p['completion_tokens_per_s']:7.0f}  {p['useful_mfu_pct']:5.1f}  "
                f"{fmt(p['measured_gib'], '')} ({fmt(p['planner_gib'], '')})  "
                f"{fmt(p.get('measured_no_grad_gib'), '')} ({fmt(p['planner_no_grad_gib'], '')})  "
                f"{p.get('reserved_over_allocated')}"
            )
        return
    for key, value in result.items():
        if key != "status":
            print(f"  {key}: {value}")

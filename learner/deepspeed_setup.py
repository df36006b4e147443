"""DeepSpeed for the learner: the engine configs (policy, frozen reference), ZeRO-3 loading, the
process group, and the learning-rate schedule."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable
from typing import Any

from learner.config import LearnerConfig, OptimizerConfig


def lr_lambda(config: LearnerConfig):
    optim = config.optimizer
    if optim.lr_schedule != "constant" and optim.schedule_steps <= optim.warmup_steps:
        raise ValueError(
            f"a {optim.lr_schedule} schedule needs schedule_steps ({optim.schedule_steps}) > warmup_steps"
        )
    total = optim.schedule_steps

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / (optim.warmup_steps + 1)
        if optim.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - optim.warmup_steps) / max(1, total - optim.warmup_steps))
        if optim.lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def adamw(parameters: Iterable, optim: OptimizerConfig, fused: bool = False):
    """torch's AdamW over the parameters that train; `fused`: one kernel for the whole update (the
    same numbers to float rounding; on CUDA several times faster than the per-tensor loop)."""
    import torch

    return torch.optim.AdamW(
        [p for p in parameters if p.requires_grad],
        lr=optim.lr,
        betas=optim.adam_betas,
        weight_decay=optim.weight_decay,
        fused=fused,
    )


def deepspeed_config(config: LearnerConfig) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,  # set per step from the batch (set_train_batch_size)
        "gradient_clipping": config.optimizer.max_grad_norm,
        "zero_optimization": {"stage": config.parallel.zero_stage},
        "bf16": {"enabled": config.parallel.dtype == "bfloat16"},
        "zero_allow_untested_optimizer": True,  # a torch AdamW: no DeepSpeed op to compile
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def reference_deepspeed_config(config: LearnerConfig) -> dict[str, Any]:
    """The frozen reference under ZeRO-3: sharded like the policy (as TRL's `prepare_deepspeed`), no
    optimizer; with `reference_offload` its partitions stay in host memory."""
    zero: dict[str, Any] = {"stage": 3}
    if config.parallel.reference_offload:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": zero,
        "bf16": {"enabled": config.parallel.dtype == "bfloat16"},
        "steps_per_print": 10**9,
    }


@contextlib.contextmanager
def zero3_loading(ds_config: dict[str, Any]):
    """Inside, transformers' `from_pretrained` builds the model under `deepspeed.zero.Init` when the
    config is ZeRO-3: each rank materialises only its own partition, never the whole model. The
    setting is process-global in transformers, so it is cleared on the way out."""
    if ds_config["zero_optimization"]["stage"] != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    held = HfDeepSpeedConfig(ds_config)  # transformers keeps only a weak reference
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del held


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, backend: str) -> None:
    """Join the learner's process group (a no-op when this process already has one)."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if os.environ.get("TORCH_EXTENSIONS_DIR") == "":
        # torch reads an empty value as the current folder: DeepSpeed's CPU op would be JIT-built
        # into whatever folder the process runs in (the repository, under Ray). Use torch's default.
        del os.environ["TORCH_EXTENSIONS_DIR"]
    os.environ.update(
        {
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank if backend == "gloo" else 0),
            "WORLD_SIZE": str(world_size),
        }
    )
    deepspeed.init_distributed(
        dist_backend=backend, auto_mpi_discovery=False, rank=rank, world_size=world_size
    )


def build_reference(config: LearnerConfig, model_path: str, dtype, device):
    """The frozen reference scorer: under ZeRO-3 its own inference engine, sharded over the ranks
    (optionally offloaded); otherwise a whole copy on this rank's device."""
    from families import adapter_for
    from learner.policy import CompletionScorer

    parallel = config.parallel
    if parallel.reference_offload and parallel.zero_stage != 3:
        raise ValueError("learner.parallel.reference_offload needs learner.parallel.zero_stage: 3")
    ds_config = reference_deepspeed_config(config)
    with zero3_loading(ds_config) if parallel.zero_stage == 3 else contextlib.nullcontext():
        model = adapter_for(model_path).load(model_path, dtype)
    model.eval().requires_grad_(False)
    scorer = CompletionScorer(
        model, config.sampling.temperature, parallel.share_prompt, parallel.gradient_checkpointing
    )
    if parallel.zero_stage != 3:
        return scorer.to(device)
    import deepspeed

    engine, *_ = deepspeed.initialize(model=scorer, config=ds_config)
    engine.eval()
    return engine

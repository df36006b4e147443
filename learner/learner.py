"""The GRPO learner: the policy under a DeepSpeed engine, a frozen reference, one `train_step`.

A plain class; `cluster/` wraps it as a Ray actor (one actor per rank). Each rank receives its own
shard of the step's questions with all their completions; gradients are averaged across ranks by
DeepSpeed (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from families import adapter_for, load_processor
from learner.batch import LearnerBatch, MicroBatch, micro_batch, micro_batches, passes, split_rows
from learner.config import LearnerConfig
from learner.deepspeed_setup import (
    adamw,
    build_reference,
    deepspeed_config,
    init_distributed,
    lr_lambda,
    zero3_loading,
)
from learner.grpo_update import grpo_update
from learner.policy import CompletionScorer, EncodedQuestions, encode_questions
from learner.sft import sft_step

# Where an update's time goes, reported per step as learner_<phase>_s: the no-grad passes (the
# reference's, and the old policy's with several updates per batch), the policy's forward with its
# loss, backward, and the optimizer step (with the gradient norm and clipping).
PHASES = ("reference", "forward", "backward", "optimizer")


class Learner:
    """Policy (trainable, under DeepSpeed) and reference (frozen) built from one HF folder."""

    def __init__(
        self,
        model_path: str | Path,
        config: LearnerConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "127.0.0.1",
        master_port: int = 29500,
    ):
        import deepspeed

        self.config, self.rank, self.world_size = config, rank, world_size
        self.model_path = str(model_path)
        self.device = (
            torch.device(f"cuda:{torch.cuda.current_device()}")
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        init_distributed(
            rank, world_size, master_addr, master_port, "nccl" if self.device.type == "cuda" else "gloo"
        )
        torch.manual_seed(config.seed + rank)
        parallel, optim = config.parallel, config.optimizer
        if self.device.type == "cpu" and parallel.cpu_threads:
            threads = parallel.cpu_threads
            torch.set_num_threads((os.cpu_count() or 1) if threads < 0 else threads)

        self.processor = load_processor(self.model_path)
        # Loaded straight in the training dtype (DeepSpeed keeps the fp32 master copy of its own
        # partition only); under ZeRO-3 each rank materialises only its partition.
        dtype, ds_config = getattr(torch, parallel.dtype), deepspeed_config(config)
        with zero3_loading(ds_config):
            policy = adapter_for(self.model_path).load(self.model_path, dtype)
        adapter_for(policy).freeze_unused(policy)
        if config.lora.rank:
            from learner.lora import add_lora

            if parallel.zero_stage == 3:
                raise ValueError(
                    "learner.lora with learner.parallel.zero_stage 3 is not supported yet: use 0-2"
                )
            policy = add_lora(policy, config.lora)  # only the adapters train
        if parallel.gradient_checkpointing:
            # Non-reentrant: gradients reach adapters inside checkpointed layers whose inputs
            # (frozen embeddings) need none.
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # Fused on CUDA (one kernel for all of Adam's element-wise work); CPU keeps the default.
        optimizer = adamw(policy.parameters(), optim, fused=self.device.type == "cuda")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
        scorer = CompletionScorer(
            policy, config.sampling.temperature, parallel.share_prompt, parallel.gradient_checkpointing
        )
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=scorer, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        if parallel.zero_stage == 3:
            # Weights read outside their module's forward: ZeRO-3 gathers them for the module that
            # uses them once registered there.
            for module, param in adapter_for(self.model).zero3_external_parameters(self.model):
                deepspeed.zero.register_external_parameter(module, param)
        # With LoRA the reference is the policy with its adapters off: no second model.
        self.reference = (
            build_reference(config, self.model_path, dtype, self.device)
            if config.loss.beta and not config.lora.rank
            else None
        )
        generation = self.model.generation_config
        eos = generation.eos_token_id
        self.eos_ids = eos if isinstance(eos, list) else [eos]
        self.pad_id = self.processor.tokenizer.pad_token_id
        # `auto` is the run plan's to resolve (cluster/plan_learner.py); without a plan: 1 question
        # per micro-batch, one micro-batch per no-grad pass.
        micro, no_grad = parallel.micro_batch_questions, parallel.no_grad_questions
        self.micro_batch_questions = micro if isinstance(micro, int) else 1
        self.no_grad_questions = no_grad if isinstance(no_grad, int) else self.micro_batch_questions
        self.step = 0
        self.phases: dict[str, float] = {}  # seconds per phase of the current update
        self._sender = None  # the weight transfer's trainer engine (init_weight_transfer)

    @property
    def model(self):
        """The Hugging Face policy model (inside the DeepSpeed engine's scorer)."""
        return self.engine.module.model

    def zero3_traces(self) -> dict[str, str]:
        """ZeRO-3's parameter-trace state per engine ("complete" once a step's order is recorded and
        prefetching runs; "record"/"invalid" before); empty under other stages."""
        engines = {"policy": self.engine, "reference": self.reference}
        out = {}
        for name, engine in engines.items():
            offload = getattr(engine, "optimizer", None)
            offload = getattr(offload, "parameter_offload", offload)
            if offload is not None and hasattr(offload, "get_param_coordinator"):
                coordinator = offload.get_param_coordinator()
                states = ("complete", "record", "invalid")
                checks = (
                    coordinator.is_complete_trace,
                    coordinator.is_record_trace,
                    coordinator.is_invalid_trace,
                )
                out[name] = next(state for state, check in zip(states, checks, strict=True) if check())
        return out

    def gathered(self, params: list | None = None):
        """A context in which `params` (default: all) are whole on every rank (ZeRO-3 gathers their
        partitions; other stages hold them whole already). Collective: all ranks enter it together."""
        if self.config.parallel.zero_stage == 3:
            import deepspeed

            chosen = list(self.model.parameters()) if params is None else params
            return deepspeed.zero.GatheredParameters(chosen, modifier_rank=None)
        return contextlib.nullcontext()

    def gathered_weights(self, group_bytes: int = 1 << 30) -> Iterator[tuple[str, torch.Tensor]]:
        """(published name, whole tensor) for every weight, gathered about `group_bytes` at a time
        under ZeRO-3 (each tensor is valid until the next is asked for). Collective: every rank
        iterates it to the end."""
        from learner.lora import published_weights
        from rollout.weight_transfer import nbytes, plan_chunks

        weights = published_weights(self.model)  # adapters merged
        sizes = [nbytes(w.shape, w.params[0].dtype) for w in weights]
        for chunk in plan_chunks(sizes, group_bytes):
            group = [weights[i] for i in chunk]
            with self.gathered([p for w in group for p in w.params]):
                for weight in group:
                    yield weight.name, weight.value()

    # -- the pieces of one update (`learner/grpo_update.py`, `learner/sft.py`) -----------------------

    def encode(self, batch: LearnerBatch) -> EncodedQuestions:
        """The batch's prompts (the run's prompt style) and audio features, each question once."""
        return encode_questions(
            self.processor, batch.questions, batch.waveforms, thinking=self.config.prompt.thinking
        )

    def micro_batches(self, batch: LearnerBatch, encoded: EncodedQuestions) -> list[MicroBatch]:
        return micro_batches(batch, encoded, self.micro_batch_questions, self.pad_id, self.eos_ids)

    def logprobs(self, micro: MicroBatch, encoded: EncodedQuestions, scorer=None) -> torch.Tensor:
        """Completion log-probs [N, T] through `scorer` (default: the policy's DeepSpeed engine),
        one root forward per micro-batch (what closes ZeRO-3's parameter trace)."""
        return (scorer or self.engine)(micro.rows, *encoded.audio(micro.questions))

    @torch.no_grad()
    def reference_logprobs(self, batch: LearnerBatch, micro: list[MicroBatch], encoded) -> list:
        """The frozen reference's log-probs per micro-batch (None each when beta is 0): its own
        model, or with LoRA this policy with its adapters off."""
        if self.config.loss.beta == 0.0:
            return [None] * len(micro)
        if self.reference is not None:
            return self._no_grad_passes(batch, micro, encoded, self.reference)
        from learner.lora import adapters_disabled

        with adapters_disabled(self.model):
            return self._no_grad_passes(batch, micro, encoded, self.engine)

    @torch.no_grad()
    def old_logprobs(self, batch: LearnerBatch, micro: list[MicroBatch], encoded) -> list[torch.Tensor]:
        """This policy's log-probs before the update (the ratio's denominator for several updates)."""
        return self._no_grad_passes(batch, micro, encoded, self.engine)

    def _no_grad_passes(self, batch: LearnerBatch, micro: list[MicroBatch], encoded, scorer) -> list:
        """Log-probs per micro-batch from as few passes as `no_grad_questions` allows: consecutive
        micro-batches joined into one pass, its values cut back into theirs."""
        out = []
        for group in passes(micro, self.no_grad_questions):
            questions = [q for m in group for q in m.questions]
            joined = (
                micro_batch(batch, encoded, questions, self.pad_id, self.eos_ids)
                if len(group) > 1
                else group[0]
            )
            out += split_rows(self.logprobs(joined, encoded, scorer), group)
        return out

    def begin_update(self, n_micro: int) -> float:
        """Gradient accumulation over `n_micro` micro-batches; returns the learning rate it uses."""
        self.engine.set_train_batch_size(n_micro * self.world_size)
        self.engine.train()
        self.phases.clear()
        return float(self.optimizer.param_groups[0]["lr"])

    def backward(self, loss: torch.Tensor) -> None:
        with self.phase("backward"):
            self.engine.backward(loss, scale_wrt_gas=False)  # the loss carries its own weighting

    def optimizer_step(self, last: bool) -> float | None:
        """DeepSpeed's step (the optimizer runs at the last micro-batch); the pre-clipping gradient
        norm under ZeRO stage 0 when `last` (other stages report theirs in `finish_update`)."""
        with self.phase("optimizer"):
            norm = self._grad_norm() if last else None
            self.engine.step()
        return norm

    def finish_update(self, grad_norm: float | None) -> dict[str, float]:
        """The step count, the gradient norm and where the step's time went (seconds per phase)."""
        self.step += 1
        if self.engine.get_global_grad_norm() is not None:  # ZeRO >= 1 computes it in step()
            grad_norm = float(self.engine.get_global_grad_norm())
        return {
            "grad_norm": grad_norm if grad_norm is not None else float("nan"),
            "step": self.step,
            **{f"learner_{name}_s": self.phases.get(name, 0.0) for name in PHASES},
        }

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a part of the update into `phases[name]` (the device synchronised at both ends, so
        the seconds are the work's, not the launch's)."""
        synchronize = torch.cuda.synchronize if self.device.type == "cuda" else lambda: None
        synchronize()
        started = time.perf_counter()
        try:
            yield
        finally:
            synchronize()
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - started

    def sum_over_ranks(self, value: float) -> float:
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return float(total.item())

    def _grad_norm(self) -> float | None:
        """Pre-clipping gradient norm when DeepSpeed does not report one (ZeRO stage 0)."""
        if self.config.parallel.zero_stage != 0:
            return None
        grads = [p.grad.float() for p in self.model.parameters() if p.grad is not None]
        return (
            float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
            if grads
            else 0.0
        )

    def train_step(self, batch: LearnerBatch) -> dict[str, float]:
        """One GRPO update on this rank's share of the batch (`learner/grpo_update.py`)."""
        return grpo_update(self, batch)

    def sft_step(self, batch: LearnerBatch) -> dict[str, Any]:
        """One supervised update (the SFT baseline, `learner/sft.py`)."""
        return sft_step(self, batch)

    # -- weight transfer to the rollout pool (vLLM's trainer engines; rank 0 sends) ------------------

    def prepare_weight_transfer(self) -> None:
        """Import vLLM's weight transfer now (about 5 s on CPU), while the rollout engines start,
        rather than at the first `init_weight_transfer`, when the whole run waits for it."""
        from learner.weight_source import trainer_engine_factory

        trainer_engine_factory()

    def init_weight_transfer(self, backend: str, init: dict[str, Any], client, wire_dtype: str) -> None:
        """Build this rank's trainer engine (again after a receiver was replaced). `client` reaches
        the receivers (rank 0 only uses it); `wire_dtype` is the rollout engines' dtype."""
        from learner.weight_source import WeightSender

        if self._sender is not None:
            self._sender.shutdown()
        self._sender = WeightSender(self, backend, init, client, wire_dtype)

    def send_weights(self, version: int) -> dict[str, Any]:
        """Collective over the learner ranks (ZeRO-3 gathers group by group); rank 0 sends. Returns
        the outcome (`WeightSender.send`)."""
        if self._sender is None:
            raise RuntimeError("init_weight_transfer was not called")
        return self._sender.send(version)

    def flat_parameters(self) -> np.ndarray:
        """All weights as one float32 vector (tests compare ranks and runs with it). Collective."""
        with self.gathered():
            return torch.cat([p.detach().float().flatten() for p in self.model.parameters()]).numpy()

    def held_bytes(self) -> dict[str, int]:
        """Bytes of weights this rank holds, of the policy and of the reference, and their whole size:
        under ZeRO-3 a rank holds its partition only."""

        def held(model) -> tuple[int, int]:
            params = list(model.parameters()) if model is not None else []
            mine = sum(getattr(p, "ds_tensor", p).numel() * p.element_size() for p in params)
            return mine, sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in params)

        (policy, whole), (reference, _) = held(self.model), held(self.reference)
        return {"policy": policy, "reference": reference, "model": whole}

    def save(self, directory: str, state: dict[str, Any] | None = None) -> str:
        from learner.checkpoint import save_checkpoint

        return str(save_checkpoint(self, directory, state))

    def load(self, directory: str) -> dict[str, Any]:
        from learner.checkpoint import load_checkpoint

        return load_checkpoint(self, directory)

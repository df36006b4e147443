"""The GRPO learner: the policy under a DeepSpeed engine, a frozen reference, one `train_step`.

A plain class; `cluster/` wraps it as a Ray actor (one actor per rank). Each rank receives its own
shard of the step's questions with all their completions; gradients are averaged across ranks by
DeepSpeed (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from families import adapter_for, load_processor
from learner.config import LearnerConfig
from learner.deepspeed_setup import (
    build_reference,
    deepspeed_config,
    init_distributed,
    lr_lambda,
    zero3_loading,
)
from learner.grpo import grpo_loss
from learner.policy import CompletionScorer, build_rows, encode_questions


@dataclass
class LearnerBatch:
    """One rank's share of a step: questions (text, choices, 16 kHz audio) and their completions."""

    questions: list[tuple[str, list[str]]]
    waveforms: list[np.ndarray]
    completions: list[list[int]]  # token ids, grouped: completions of question q are consecutive
    question_index: list[int]  # completion -> index into questions
    advantages: list[float]  # one per completion
    # The sampling policy's log-prob of each completion token (from the rollout engine). Given, it is
    # the ratio's denominator: the off-policy correction for rollouts made one update behind.
    behaviour_logprobs: list[list[float]] | None = None

    def shard(self, rank: int, world_size: int) -> LearnerBatch:
        """This rank's questions (a contiguous slice) with all their completions."""
        n = len(self.questions)
        if n % world_size:
            raise ValueError(f"{n} questions do not split evenly over {world_size} learner ranks")
        lo, hi = rank * n // world_size, (rank + 1) * n // world_size
        rows = [i for i, q in enumerate(self.question_index) if lo <= q < hi]
        return LearnerBatch(
            self.questions[lo:hi],
            self.waveforms[lo:hi],
            [self.completions[i] for i in rows],
            [self.question_index[i] - lo for i in rows],
            [self.advantages[i] for i in rows],
            [self.behaviour_logprobs[i] for i in rows] if self.behaviour_logprobs else None,
        )


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
        optimizer = torch.optim.AdamW(
            [p for p in policy.parameters() if p.requires_grad],
            lr=optim.lr,
            betas=optim.adam_betas,
            weight_decay=optim.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
        scorer = CompletionScorer(policy, config.sampling.temperature, parallel.share_prompt)
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
        self.step = 0
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

    def _micro_batches(self, batch: LearnerBatch) -> list[list[int]]:
        """Question indices per micro-batch."""
        size = self.config.parallel.micro_batch_questions
        n = len(batch.questions)
        return [list(range(i, min(i + size, n))) for i in range(0, n, size)]

    @staticmethod
    def _picked(batch: LearnerBatch, questions: list[int]) -> list[int]:
        """Indices of these questions' completions, in batch order (the rows' order)."""
        return [i for i, q in enumerate(batch.question_index) if q in questions]

    def _rows(self, batch: LearnerBatch, encoded, questions: list[int]):
        picked = self._picked(batch, questions)
        local = {q: j for j, q in enumerate(questions)}
        rows = build_rows(
            [encoded.prompt_ids[q] for q in questions],
            [batch.completions[i] for i in picked],
            [local[batch.question_index[i]] for i in picked],
            self.pad_id,
            self.eos_ids,
        )
        advantages = torch.tensor([batch.advantages[i] for i in picked], dtype=torch.float32)
        return rows, advantages

    def _behaviour(self, batch: LearnerBatch, questions: list[int], width: int) -> torch.Tensor | None:
        """The rollout engine's log-probs for these questions' rows, padded like the rows: [N, T]."""
        if not batch.behaviour_logprobs:
            return None
        picked = self._picked(batch, questions)
        out = torch.zeros(len(picked), width)
        for row, i in enumerate(picked):
            values = batch.behaviour_logprobs[i]
            if len(values) != len(batch.completions[i]):
                raise ValueError(
                    f"completion {i}: {len(values)} log-probs for {len(batch.completions[i])} tokens"
                )
            out[row, : len(values)] = torch.tensor(values)
        return out

    @staticmethod
    def _logprobs(scorer, rows, encoded, questions: list[int]) -> torch.Tensor:
        """Through the scorer's (the DeepSpeed engine's) forward: one root forward per micro-batch."""
        return scorer(rows, *encoded.audio(questions))

    def train_step(self, batch: LearnerBatch) -> dict[str, float]:
        """One GRPO update (or `updates_per_batch` of them) on this rank's share of the batch."""
        cfg = self.config.loss
        if not batch.completions:
            raise ValueError("empty batch")
        encoded = encode_questions(
            self.processor, batch.questions, batch.waveforms, thinking=self.config.prompt.thinking
        )
        micro = self._micro_batches(batch)
        prepared = [(q, *self._rows(batch, encoded, q)) for q in micro]
        n_responses = sum(rows.completion_ids.size(0) for _, rows, _ in prepared)
        n_tokens = float(sum(rows.completion_mask.sum() for _, rows, _ in prepared))
        # dapo divides by the step's tokens on every rank (TRL's num_items_in_batch); DeepSpeed then
        # averages the ranks' gradients, hence / world_size: ranks with short completions are not
        # over-weighted.
        step_tokens = self._sum_over_ranks(n_tokens) / self.world_size
        self.engine.set_train_batch_size(len(micro) * self.world_size)  # gradient accumulation = len(micro)
        self.engine.train()
        lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step uses

        refs, olds = self._fixed_logprobs(batch, encoded, prepared)
        totals = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0}
        grad_norm = None
        for _ in range(cfg.updates_per_batch):
            for i, ((q, rows, advantages), ref, old) in enumerate(zip(prepared, refs, olds, strict=True)):
                logp = self._logprobs(self.engine, rows, encoded, q)
                out = grpo_loss(
                    logp,
                    ref,
                    advantages.to(logp.device),
                    rows.completion_mask.to(logp.device),
                    old_logp=old.to(logp.device) if old is not None else None,
                    beta=cfg.beta,
                    epsilon_low=cfg.epsilon_low,
                    epsilon_high=cfg.epsilon_high,
                    loss_type=cfg.loss_type,
                    max_completion_length=self.config.sampling.max_tokens,
                    num_items_in_batch=step_tokens,
                )
                weight, tokens_share = self._micro_weight(rows, n_responses, n_tokens, len(prepared))
                self.engine.backward(out.loss * weight, scale_wrt_gas=False)
                if i == len(prepared) - 1:
                    grad_norm = self._grad_norm()
                self.engine.step()
                totals["loss"] += out.loss.item() * weight / cfg.updates_per_batch
                totals["kl"] += out.kl * tokens_share / cfg.updates_per_batch
                totals["clip_ratio"] += out.clip_ratio * tokens_share / cfg.updates_per_batch
        self.step += 1
        if self.engine.get_global_grad_norm() is not None:  # ZeRO >= 1 computes it in step()
            grad_norm = float(self.engine.get_global_grad_norm())
        return {
            **totals,
            "grad_norm": grad_norm if grad_norm is not None else float("nan"),
            "lr": lr,
            "responses": n_responses,
            "tokens": n_tokens,
            "step": self.step,
        }

    def sft_step(self, batch: LearnerBatch) -> dict[str, Any]:
        """One supervised update (the SFT baseline, `learner.sft`)."""
        from learner.sft import sft_step

        return sft_step(self, batch)

    @torch.no_grad()
    def _fixed_logprobs(self, batch: LearnerBatch, encoded, prepared) -> tuple[list, list]:
        """Per micro-batch, the log-probs the update holds fixed: the reference's (for the KL), and
        the ratio's denominator: the sampling policy's when the rollouts came with them, else this
        policy before the update (which only matters for several updates per batch)."""
        refs = [self._reference_logprobs(rows, encoded, q) for q, rows, _ in prepared]
        olds = [
            self._behaviour(batch, q, rows.completion_ids.size(1))
            if batch.behaviour_logprobs
            else self._logprobs(self.engine, rows, encoded, q)
            if self.config.loss.updates_per_batch > 1
            else None
            for q, rows, _ in prepared
        ]
        return refs, olds

    def _reference_logprobs(self, rows, encoded, questions: list[int]) -> torch.Tensor | None:
        """The frozen reference's log-probs: its own model, or with LoRA this policy's adapters off."""
        if self.config.loss.beta == 0.0:
            return None
        if self.reference is not None:
            return self._logprobs(self.reference, rows, encoded, questions)
        from learner.lora import adapters_disabled

        with adapters_disabled(self.model):
            return self._logprobs(self.engine, rows, encoded, questions)

    def _micro_weight(self, rows, n_responses: int, n_tokens: float, n_micro: int) -> tuple[float, float]:
        """(loss weight, token share) of one micro-batch, as TRL weighs them: grpo and dr_grpo per
        response; bnpo each micro-batch's own token mean, averaged over the micro-batches (so it
        depends on the micro-batch size, as TRL documents); dapo already divided by the step's
        tokens (`num_items_in_batch`)."""
        tokens_share = float(rows.completion_mask.sum()) / max(n_tokens, 1.0)
        loss_type = self.config.loss.loss_type
        if loss_type in ("grpo", "dr_grpo"):
            return rows.completion_ids.size(0) / n_responses, tokens_share
        return (1.0 / n_micro if loss_type == "bnpo" else 1.0), tokens_share

    def _sum_over_ranks(self, value: float) -> float:
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

    # -- weight transfer to the rollout pool (vLLM's trainer engines; rank 0 sends) ------------------

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

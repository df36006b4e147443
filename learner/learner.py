"""The GRPO learner: the policy under a DeepSpeed engine, a frozen reference, one `train_step`.

A plain class; `cluster/` wraps it as a Ray actor (one actor per rank). Each rank receives its own
shard of the step's questions with all their completions; gradients are averaged across ranks by
DeepSpeed (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from learner.grpo import LossType, grpo_loss
from learner.policy import audio_embeddings, build_rows, completion_logprobs, encode_questions


@dataclass
class LearnerConfig:
    """Optimisation settings (R1-AQA's values as defaults)."""

    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    total_steps: int = 1000  # for the linear and cosine schedules
    beta: float = 0.04  # KL coefficient; 0 drops the reference model
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    loss_type: LossType = "grpo"
    updates_per_batch: int = 1  # > 1 re-uses a batch; the clipped ratio then matters
    max_completion_length: int = 256  # the dr_grpo normaliser
    temperature: float = 1.0  # the sampling temperature: log-probs are taken of logits / T
    zero_stage: int = 0  # 0 to 3
    dtype: Literal["bf16", "fp32"] = "bf16"
    micro_batch_questions: int = 1  # questions (with all their completions) per forward/backward
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    # Run each question's prompt (audio included) once and its completions on top of the cached
    # prompt: the same numbers as one row per completion, with ~1/n of the prompt compute.
    share_prompt: bool = True
    # torch threads on CPU: 0 keeps Ray's setting (the actor's num_cpus), -1 takes every core (the
    # rollout workers sit idle during the update unless train.overlap_rollout is on).
    cpu_threads: int = 0
    thinking: bool = False  # prompts ask for <think> first
    seed: int = 0


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


def _lr_lambda(config: LearnerConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        if config.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.total_steps - config.warmup_steps))
        if config.lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def deepspeed_config(config: LearnerConfig) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,  # set per step from the batch (set_train_batch_size)
        "gradient_clipping": config.max_grad_norm,
        "zero_optimization": {"stage": config.zero_stage},
        "bf16": {"enabled": config.dtype == "bf16"},
        "zero_allow_untested_optimizer": True,  # a torch AdamW: no DeepSpeed op to compile
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, backend: str) -> None:
    """Join the learner's process group (a no-op when this process already has one)."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
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
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

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
        if self.device.type == "cpu" and config.cpu_threads:
            torch.set_num_threads((os.cpu_count() or 1) if config.cpu_threads < 0 else config.cpu_threads)
        dtype = torch.bfloat16 if config.dtype == "bf16" else torch.float32

        self.processor = AutoProcessor.from_pretrained(self.model_path)
        policy = Qwen2AudioForConditionalGeneration.from_pretrained(self.model_path, dtype=torch.float32)
        if config.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        optimizer = torch.optim.AdamW(
            policy.parameters(), lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=policy, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(config)
        )
        if config.zero_stage == 3:
            # The audio encoder reads embed_positions.weight directly rather than through a forward
            # call, so ZeRO-3 would never gather it; register it with the encoder that uses it.
            tower = self.engine.module.model.audio_tower
            deepspeed.zero.register_external_parameter(tower, tower.embed_positions.weight)
        self.reference = None
        if config.beta != 0.0:
            self.reference = Qwen2AudioForConditionalGeneration.from_pretrained(self.model_path, dtype=dtype)
            self.reference.to(self.device).eval().requires_grad_(False)
        generation = self.engine.module.generation_config
        eos = generation.eos_token_id
        self.eos_ids = eos if isinstance(eos, list) else [eos]
        self.pad_id = self.processor.tokenizer.pad_token_id
        self.step = 0

    @property
    def model(self):
        return self.engine.module

    def _micro_batches(self, batch: LearnerBatch) -> list[list[int]]:
        """Question indices per micro-batch."""
        size = self.config.micro_batch_questions
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

    def _logprobs(self, model, rows, encoded, questions: list[int]) -> torch.Tensor:
        audio = audio_embeddings(
            model, encoded.input_features[questions], encoded.feature_attention_mask[questions]
        )
        return completion_logprobs(model, rows, audio, self.config.temperature, self.config.share_prompt)

    def train_step(self, batch: LearnerBatch) -> dict[str, float]:
        """One GRPO update (or `updates_per_batch` of them) on this rank's share of the batch."""
        cfg = self.config
        if not batch.completions:
            raise ValueError("empty batch")
        encoded = encode_questions(self.processor, batch.questions, batch.waveforms, thinking=cfg.thinking)
        micro = self._micro_batches(batch)
        prepared = [(q, *self._rows(batch, encoded, q)) for q in micro]
        n_responses = sum(rows.completion_ids.size(0) for _, rows, _ in prepared)
        n_tokens = float(sum(rows.completion_mask.sum() for _, rows, _ in prepared))
        self.engine.set_train_batch_size(len(micro) * self.world_size)  # gradient accumulation = len(micro)
        self.engine.train()
        lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step uses

        with torch.no_grad():
            refs = [
                self._logprobs(self.reference, rows, encoded, q) if self.reference is not None else None
                for q, rows, _ in prepared
            ]
            # The ratio's denominator: the sampling policy's log-probs when the rollouts came with
            # them, else this policy before the update (which only matters for several updates).
            olds = [
                self._behaviour(batch, q, rows.completion_ids.size(1))
                if batch.behaviour_logprobs
                else self._logprobs(self.model, rows, encoded, q)
                if cfg.updates_per_batch > 1
                else None
                for q, rows, _ in prepared
            ]
        totals = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0}
        grad_norm = None
        for _ in range(cfg.updates_per_batch):
            for i, ((q, rows, advantages), ref, old) in enumerate(zip(prepared, refs, olds, strict=True)):
                logp = self._logprobs(self.model, rows, encoded, q)
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
                    max_completion_length=cfg.max_completion_length,
                    num_items_in_batch=n_tokens,
                )
                # Weight each micro-batch by its share so the sum is the loss over the whole shard.
                share = rows.completion_ids.size(0) / n_responses
                tokens_share = float(rows.completion_mask.sum()) / max(n_tokens, 1.0)
                weight = share if cfg.loss_type in ("grpo", "dr_grpo") else 1.0
                if cfg.loss_type == "bnpo":
                    weight = tokens_share
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

    def _grad_norm(self) -> float | None:
        """Pre-clipping gradient norm when DeepSpeed does not report one (ZeRO stage 0)."""
        if self.config.zero_stage != 0:
            return None
        grads = [p.grad.float() for p in self.model.parameters() if p.grad is not None]
        return (
            float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
            if grads
            else 0.0
        )

    # -- weight broadcast to the rollout pool (rank 0 is the sender) ----------------------------------

    def weight_plan(self, bucket_bytes: int) -> dict:
        from learner.weight_sync import weight_plan

        return weight_plan(self, bucket_bytes)

    def init_weight_sync(
        self, host: str, port: int, world_size: int, backend: str | None = None, timeout_s: float = 300.0
    ) -> None:
        """Rank 0 joins the sync group as its rank 0 (other ranks hold no group)."""
        from learner.weight_sync import open_group

        self._sync_group = None
        if self.rank == 0:
            backend = backend or ("nccl" if self.device.type == "cuda" else "gloo")
            self._sync_group = open_group(host, port, world_size, backend, timeout_s)

    def send_weights(self, wire_plan: dict) -> dict[str, float]:
        from learner.weight_sync import send_weights

        return send_weights(self, getattr(self, "_sync_group", None), wire_plan)

    def flat_parameters(self) -> np.ndarray:
        """All weights as one float32 vector (tests compare ranks and runs with it)."""
        return torch.cat([p.detach().float().flatten() for p in self.model.parameters()]).numpy()

    def save(self, directory: str, state: dict[str, Any] | None = None) -> str:
        from learner.checkpoint import save_checkpoint

        return str(save_checkpoint(self, directory, state))

    def load(self, directory: str) -> dict[str, Any]:
        from learner.checkpoint import load_checkpoint

        return load_checkpoint(self, directory)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

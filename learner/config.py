"""The learner's settings, split by meaning: the optimiser, the loss, and precision/parallelism.

`LearnerConfig` is what a `Learner` reads. The run's other facts that the learner needs (sampling
temperature and completion budget, the prompt style, the seed; the schedule's length) are wired in
from their one place in the run's config (`cluster.config.learner_config`), never copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rollout.prompt import PromptConfig
from rollout.sampling import SamplingConfig

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]  # how the loss averages over tokens (learner/grpo.py)


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and its learning-rate schedule (R1-AQA: lr 1e-6, constant)."""

    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    schedule_steps: int = 0  # length of the linear/cosine decay; 0 = train.max_steps (set by the wiring)


@dataclass(frozen=True)
class LossConfig:
    """The GRPO objective (`learner.grpo.grpo_loss`)."""

    loss_type: LossType = "grpo"
    beta: float = 0.04  # k3 KL coefficient; 0 drops the reference model
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    updates_per_batch: int = 1  # > 1 re-uses a batch; the clipped ratio then matters


@dataclass(frozen=True)
class ParallelConfig:
    """Precision, ZeRO and how a rank's share is cut into forward/backward passes."""

    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    zero_stage: int = 0  # 0 to 3
    # ZeRO-3 only: the frozen reference's partitions live in host memory (DeepSpeed's param offload)
    # and stream to the device layer by layer; frees its share of GPU memory for activations.
    reference_offload: bool = False
    # Questions (with all their completions) per forward/backward. "auto": the most that fit, as the
    # run's memory plan picks them (`audio-grpo plan` prints the choice; on CPU 1). A Learner built
    # without a plan reads "auto" as 1.
    micro_batch_questions: int | Literal["auto"] = "auto"
    # Questions per no-grad pass (the reference's log-probs; the old policy's with several updates
    # per batch): whole micro-batches, as many as fit ("auto": the plan's choice; on CPU, and without
    # a plan, one micro-batch).
    no_grad_questions: int | Literal["auto"] = "auto"
    gradient_checkpointing: bool = False
    # Run each question's prompt (audio included) once for all its completions (on a key/value
    # cache, or under gradient checkpointing in packed rows): the same numbers as one row per
    # completion, with ~1/n of the prompt compute.
    share_prompt: bool = True
    # torch threads on CPU: 0 keeps Ray's setting (the actor's num_cpus), -1 takes every core (the
    # rollout workers sit idle during the update unless train.overlap_rollout is on).
    cpu_threads: int = 0


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters (the `peft` library) instead of full fine-tuning; rank 0 = off. The reference
    is then the same model with its adapters off (no second copy); checkpoints and rollout engines
    get merged weights."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # language model
    audio: bool = False  # also the audio encoder's attention and MLP, and the projector


@dataclass(frozen=True)
class LearnerConfig:
    """Everything a `Learner` reads; the last three are the run's own facts, wired in."""

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    # Log-probs are taken of logits / sampling.temperature; dr_grpo divides by sampling.max_tokens.
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    seed: int = 0

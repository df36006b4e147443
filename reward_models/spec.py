"""What configures one model reward (`reward.models` in a run's config): no heavy imports here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class RewardModelSpec:
    """One reward model: its kind and folder, its weight in the step's reward, and the actors that
    run it (their own Ray actor kind and placement bundles: a GPU share on GPU presets)."""

    kind: Literal["clap"] = "clap"  # the cosine similarity of caption and clip (reward_models/clap.py)
    path: str = ""  # an HF folder on disk ({cache}, ~ and $VARS expand)
    weight: float = 1.0
    # "tiny": build the tiny CLAP there if absent, trained on the run's training captions.
    build_if_missing: str = ""
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    gpu_memory_gib: float = 2.0  # what the planner books on its GPU (larger_clap_general: ~0.8 GB)
    batch_size: int = 64
    dtype: str = "float32"

    @property
    def name(self) -> str:
        """The part's name in metrics.jsonl and the logs (e.g. `similarity_clap`)."""
        return f"similarity_{self.kind}"

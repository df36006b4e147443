"""Model families: one adapter each (`families/base.py` says what an adapter holds), chosen from a
checkpoint's config.json `model_type`. May import nothing of the project (torch and transformers
only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from families.audioflamingo3 import AudioFlamingo3
from families.base import EncodedClip, ModelAdapter
from families.qwen2_5_omni import Qwen2_5Omni
from families.qwen2_audio import Qwen2Audio
from families.qwen3_omni import Qwen3Omni

ADAPTERS: tuple[ModelAdapter, ...] = (Qwen2Audio(), Qwen2_5Omni(), AudioFlamingo3(), Qwen3Omni())
FAMILIES = {adapter.family: adapter for adapter in ADAPTERS}

__all__ = [
    "ADAPTERS",
    "FAMILIES",
    "EncodedClip",
    "ModelAdapter",
    "adapter_for",
    "family_named",
    "install_runtime_support",
    "load_processor",
]


def install_runtime_support() -> None:
    """Every family's process-wide fixes (the Omni families without torchvision); vLLM's processes run
    this through our plugin, before any model is inspected."""
    for adapter in ADAPTERS:
        adapter.install_runtime_support()


def load_processor(model_dir: str | Path) -> Any:
    """The processor saved with a checkpoint folder, through its family's adapter."""
    return adapter_for(model_dir).load_processor(str(model_dir))


def family_named(family: str) -> ModelAdapter:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}: one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


def _by_model_type(model_type: str, where: str) -> ModelAdapter:
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    known = ", ".join(t for a in ADAPTERS for t in a.model_types)
    raise ValueError(f"{where}: model_type {model_type!r} is not a supported family ({known})")


def adapter_for(source: Any) -> ModelAdapter:
    """The adapter for a model or config (by `model_type`), a processor (by class), a checkpoint
    folder (its config.json) or a family name."""
    if isinstance(source, ModelAdapter):
        return source
    if isinstance(source, (str, Path)):
        if str(source) in FAMILIES:
            return FAMILIES[str(source)]
        config = Path(source) / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{config}: not a model folder (no config.json)")
        return _by_model_type(json.loads(config.read_text()).get("model_type", ""), str(config))
    config = getattr(source, "config", source)
    if hasattr(config, "model_type"):
        return _by_model_type(config.model_type, type(source).__name__)
    name = type(source).__name__
    for adapter in ADAPTERS:
        if name in adapter.processor_classes:
            return adapter
    raise ValueError(f"no model family serves a {name}")

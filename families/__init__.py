"""Model families: one adapter each (`families/base.py` says what an adapter holds), chosen from a
checkpoint's config.json `model_type`, each imported (with torch) on first use. May import nothing
of the project (torch and transformers only)."""

from __future__ import annotations

import importlib
import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from families.base import EncodedClip, ModelAdapter

# Each family's adapter class, by family name, imported on first use: the adapters import torch,
# which the command line's help, data checks, reward scoring and planning never need.
ADAPTER_CLASSES = {
    "qwen2-audio": "families.qwen2_audio:Qwen2Audio",
    "qwen2.5-omni": "families.qwen2_5_omni:Qwen2_5Omni",
    "audioflamingo3": "families.audioflamingo3:AudioFlamingo3",
    "qwen3-omni": "families.qwen3_omni:Qwen3Omni",
}
FAMILY_NAMES = tuple(ADAPTER_CLASSES)

__all__ = [
    "ADAPTERS",
    "FAMILIES",
    "FAMILY_NAMES",
    "EncodedClip",
    "ModelAdapter",
    "adapter_for",
    "family_named",
    "install_runtime_support",
    "load_processor",
]


@cache
def _families() -> dict[str, ModelAdapter]:
    found = {}
    for family, where in ADAPTER_CLASSES.items():
        module, name = where.split(":")
        found[family] = getattr(importlib.import_module(module), name)()
    return found


def __getattr__(name: str) -> Any:
    """`FAMILIES` (name -> adapter), `ADAPTERS` and the adapters' base types, loaded when first asked for."""
    if name == "FAMILIES":
        return _families()
    if name == "ADAPTERS":
        return tuple(_families().values())
    if name in ("EncodedClip", "ModelAdapter"):
        return getattr(importlib.import_module("families.base"), name)
    raise AttributeError(f"module 'families' has no attribute {name!r}")


def install_runtime_support() -> None:
    """Every family's process-wide fixes (the Omni families without torchvision); vLLM's processes run
    this through our plugin, before any model is inspected."""
    for adapter in _families().values():
        adapter.install_runtime_support()


def load_processor(model_dir: str | Path) -> Any:
    """The processor saved with a checkpoint folder, through its family's adapter."""
    return adapter_for(model_dir).load_processor(str(model_dir))


def family_named(family: str) -> ModelAdapter:
    if family not in ADAPTER_CLASSES:
        raise ValueError(f"unknown model family {family!r}: one of {', '.join(FAMILY_NAMES)}")
    return _families()[family]


def _by_model_type(model_type: str, where: str) -> ModelAdapter:
    for adapter in _families().values():
        if model_type in adapter.model_types:
            return adapter
    known = ", ".join(t for a in _families().values() for t in a.model_types)
    raise ValueError(f"{where}: model_type {model_type!r} is not a supported family ({known})")


def adapter_for(source: Any) -> ModelAdapter:
    """The adapter for a model or config (by `model_type`), a processor (by class), a checkpoint
    folder (its config.json) or a family name."""
    from families.base import ModelAdapter

    if isinstance(source, ModelAdapter):
        return source
    if isinstance(source, (str, Path)):
        if str(source) in ADAPTER_CLASSES:
            return family_named(str(source))
        config = Path(source) / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{config}: not a model folder (no config.json)")
        return _by_model_type(json.loads(config.read_text()).get("model_type", ""), str(config))
    config = getattr(source, "config", source)
    if hasattr(config, "model_type"):
        return _by_model_type(config.model_type, type(source).__name__)
    name = type(source).__name__
    for adapter in _families().values():
        if name in adapter.processor_classes:
            return adapter
    raise ValueError(f"no model family serves a {name}")

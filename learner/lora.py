"""LoRA for the learner (the `peft` library) and the weights it publishes.

`add_lora` injects adapters into the policy in place (the model stays the HF class, so every code
path that reads `model.model.language_model` still works) and leaves only them trainable. The
reference is the same model with its adapters switched off (`adapters_disabled`): no second copy.
`published_weights` is every weight under its published checkpoint name, a LoRA-wrapped linear
layer merged (`W + B A * scaling`): what checkpoints store and rollout engines receive (vLLM's
Qwen2-Audio has no LoRA support, so engines always get whole, merged weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from learner.config import LoraSettings
from learner.hf_format import published_name

LANGUAGE_MODEL = r".*language_model\.layers\.\d+\.(self_attn|mlp)\.({})"
AUDIO = (
    r".*audio_tower\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|fc1|fc2)"
    r"|.*multi_modal_projector\.linear"
)


def add_lora(model: torch.nn.Module, settings: LoraSettings) -> torch.nn.Module:
    """Adapters on the language model's `target_modules` (and the audio encoder and projector with
    `settings.audio`); everything else frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = LANGUAGE_MODEL.format("|".join(m.strip() for m in settings.target_modules.split(",")))
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=f"{targets}|{AUDIO}" if settings.audio else targets,
    )
    model = inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)
    return model


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module):
    """The base model: every adapter off inside (the frozen reference), back on after."""
    layers = list(lora_layers(model).values())
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


@dataclass
class PublishedWeight:
    """One weight as checkpoints and rollout engines see it, computed from `params` once they are
    whole (ZeRO-3 gathers them first)."""

    name: str
    shape: tuple[int, ...]
    params: list[torch.nn.Parameter]
    value: Callable[[], torch.Tensor]


def _merged(layer, base: torch.nn.Parameter) -> Callable[[], torch.Tensor]:
    def value() -> torch.Tensor:
        (adapter,) = layer.active_adapters
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        delta = (b.float() @ a.float()) * layer.scaling[adapter]
        return (base.float() + delta).to(base.dtype)

    return value


def published_weights(model: torch.nn.Module) -> list[PublishedWeight]:
    """Every weight under its published name; adapters merged into the layers they wrap."""
    layers = lora_layers(model)
    out = []
    for name, param in model.named_parameters():  # tied weights once
        if ".lora_" in name:
            continue
        shape = tuple(getattr(param, "ds_shape", param.shape))
        owner = name.rsplit(".base_layer.", 1)[0] if ".base_layer." in name else None
        if owner in layers and name.endswith(".weight"):
            layer = layers[owner]
            (adapter,) = layer.active_adapters
            params = [param, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
            out.append(
                PublishedWeight(
                    published_name(name.replace(".base_layer.", ".")), shape, params, _merged(layer, param)
                )
            )
        else:
            out.append(
                PublishedWeight(
                    published_name(name.replace(".base_layer.", ".")), shape, [param], param.detach
                )
            )
    return out

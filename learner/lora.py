"""LoRA for the learner (the `peft` library) and the weights it publishes.

`add_lora` injects adapters into the policy in place (the model stays the HF class, so every code
path that reads `model.model.language_model` still works) and leaves only them trainable. The
reference is the same model with its adapters switched off (`adapters_disabled`): no second copy.
`published_weights` is every weight under its published checkpoint name, a LoRA-wrapped linear
layer merged (`W + B A * scaling`): what checkpoints store. `engine_weights` is what a weight update
sends the rollout engines: vLLM's Qwen2-Audio has no LoRA support, so they get merged weights, but
only of the layers LoRA touches (the rest is the frozen base they already hold).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from families import adapter_for
from learner.config import LoraSettings


def add_lora(model: torch.nn.Module, settings: LoraSettings) -> torch.nn.Module:
    """Adapters on the language model's `target_modules` (and the audio encoder and projector with
    `settings.audio`); everything else frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = [m.strip() for m in settings.target_modules.split(",")]
    pattern = adapter_for(model).lora_pattern(targets, settings.audio)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=pattern,
        # For models whose weights transformers converts (mixture of experts) peft reduces a regex
        # to bare leaf names, which would catch the audio encoder's q_proj too: what the pattern
        # does not match stays excluded.
        exclude_modules=f"(?!(?:{pattern})$).*",
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
    module: str  # the in-memory module that owns it (a LoRA wrapper's name for its base layer)


def _merged(layer, base: torch.nn.Parameter) -> Callable[[], torch.Tensor]:
    def value() -> torch.Tensor:
        (adapter,) = layer.active_adapters
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        delta = (b.float() @ a.float()) * layer.scaling[adapter]
        return (base.float() + delta).to(base.dtype)

    return value


def published_weights(model: torch.nn.Module) -> list[PublishedWeight]:
    """Every weight under its published name; adapters merged into the layers they wrap."""
    layers, published_name = lora_layers(model), adapter_for(model).published_name
    out = []
    for name, param in model.named_parameters():  # tied weights once
        if ".lora_" in name:
            continue
        shape = tuple(getattr(param, "ds_shape", param.shape))
        plain = name.replace(".base_layer.", ".")
        module = plain.rsplit(".", 1)[0]
        if module in layers and name.endswith(".base_layer.weight"):
            layer = layers[module]
            (adapter,) = layer.active_adapters
            params = [param, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
            out.append(PublishedWeight(published_name(plain), shape, params, _merged(layer, param), module))
        else:
            out.append(PublishedWeight(published_name(plain), shape, [param], param.detach, module))
    return out


# vLLM loads these sibling projections into one fused layer (Qwen2's `packed_modules_mapping`), and
# its layer-wise reload leaves a fused layer that got only some of its parts uninitialised.
FUSED_IN_VLLM = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _with_fused_siblings(module: str) -> set[str]:
    parent, _, leaf = module.rpartition(".")
    for group in FUSED_IN_VLLM:
        if leaf in group:
            return {f"{parent}.{sibling}" for sibling in group}
    return {module}


def engine_weights(model: torch.nn.Module) -> list[PublishedWeight]:
    """What a weight update sends the rollout engines: the weights of every module that trains
    (with LoRA: the layers it wraps, merged) and of their vLLM-fused siblings. The rest is frozen
    (LoRA's base, a family's unused vision tower), and every engine already holds it: it starts
    from the base model or a checkpoint of this run (same base)."""
    weights = published_weights(model)
    trained = {w.module for w in weights if any(p.requires_grad for p in w.params)}
    touched = set().union(set(), *(_with_fused_siblings(module) for module in trained))
    return [w for w in weights if w.module in touched]

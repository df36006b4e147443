"""What the memory plan (`cluster/plan.py`) counts with: a model's shape (read from its config, no
weights), a need (bytes, and on the GPU or in host memory), one actor kind's plan."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cluster.config import ConfigError, cache_dir, expand_path

GIB = 2**30
MODEL_CONFIGS = Path(__file__).parent / "model_configs"
CUDA_CONTEXT = 1.0 * GIB  # CUDA context and NCCL per GPU process
# The caching allocator's slack on top of what a learner rank allocates (its reserved peak over its
# allocated peak, measured on an H200 with expandable segments; README "Measured on GPU").
ALLOCATOR_RESERVE = 0.10
PROMPT_TEXT_TOKENS = 160  # chat template, question and up to 8 choices
PROCESS_HOST = 2.0 * GIB  # a Python process with torch, transformers and vLLM imported


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know of a model: parameter counts and the widths that size activations."""

    params: int
    largest_layer: int  # parameters of the biggest decoder layer or single tensor (ZeRO-3 gathers it)
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    kv_width: int  # key/value heads x head size
    audio_hidden: int
    audio_intermediate: int
    audio_layers: int
    audio_positions: int  # encoder positions of a 30 s clip
    audio_tokens: int  # prompt tokens of a 30 s clip
    frozen: int = 0  # parameters of modules the family never runs (a vision tower): not trained
    # Mixture of experts: a token runs `experts_per_token` of `experts` per layer, so it uses
    # `active_params` of `params`; `intermediate` above is then what it runs (top-k x expert size).
    experts: int = 0
    experts_per_token: int = 0
    active_params: int = 0  # what one token runs (the unused vision tower left out); 0: dense
    largest_tensor: int = 0  # parameters of the biggest single tensor (a fused expert tensor)
    largest_tensor_name: str = ""

    @property
    def active(self) -> int:
        return self.active_params or self.params


def _config_file(model_path: str) -> Path:
    """The model's config.json, or the bundled copy for a hub name not on disk."""
    on_disk = expand_path(model_path) / "config.json"
    if on_disk.is_file():
        return on_disk
    bundled = MODEL_CONFIGS / f"{Path(model_path).name}.json"
    if bundled.is_file():
        return bundled
    known = ", ".join(sorted(p.stem for p in MODEL_CONFIGS.glob("*.json")))
    raise ConfigError(f"model.path {model_path}: no config.json there, and no bundled shape ({known})")


def _hf_config(model_path: str):
    from transformers import AutoConfig

    found = _config_file(model_path)
    if found.parent != MODEL_CONFIGS:
        return AutoConfig.from_pretrained(found.parent)
    values = {k: v for k, v in json.loads(found.read_text()).items() if not k.startswith("_")}
    return AutoConfig.for_model(**values)


def model_shape(model_path: str) -> ModelShape:
    """The shape of the model at `model_path`: measured once on the meta device (no weights are
    read), then read back from the cache (`{cache}/shapes`). Measuring imports the family's model
    code, seconds that every run's start would otherwise spend before any actor starts; the key
    is the config's text, the transformers version and the code that measures."""
    key = hashlib.sha256(_shape_inputs(model_path)).hexdigest()[:24]
    cached = cache_dir() / "shapes" / f"{key}.json"
    try:
        return ModelShape(**json.loads(cached.read_text()))
    except (OSError, TypeError, ValueError):  # not measured yet, or unreadable: measure again
        pass
    shape = _measured_shape(model_path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps(asdict(shape)))
    partial.replace(cached)  # whole or absent: runs starting together may both write it
    return shape


def _shape_inputs(model_path: str) -> bytes:
    from importlib.metadata import version

    code = [Path(__file__), *sorted((Path(__file__).parents[1] / "families").glob("*.py"))]
    text = _config_file(model_path).read_bytes()
    return b"\0".join([text, version("transformers").encode(), *(f.read_bytes() for f in code)])


def _measured_shape(model_path: str) -> ModelShape:
    import torch

    from families import adapter_for

    checkpoint_config = _hf_config(model_path)
    adapter = adapter_for(checkpoint_config)
    config = adapter.trained_config(checkpoint_config)
    with torch.device("meta"):
        model = adapter.model_class()(config)
    text, audio = config.text_config, config.audio_config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    layer = sum(p.numel() for p in adapter.decoder(model).layers[0].parameters())
    name, largest = max(((n, p.numel()) for n, p in model.named_parameters()), key=lambda item: item[1])
    params = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for m in adapter.unused_modules for p in model.get_submodule(m).parameters())
    experts, per_token = getattr(text, "num_experts", 0), getattr(text, "num_experts_per_tok", 0)
    intermediate, active = text.intermediate_size, 0
    if experts:
        expert_params = sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
        active = params - frozen - expert_params + expert_params * per_token // experts
        intermediate = per_token * text.moe_intermediate_size
    return ModelShape(
        params=params,
        largest_layer=max(layer, largest),
        hidden=text.hidden_size,
        intermediate=intermediate,
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        kv_width=text.num_key_value_heads * head_dim,
        audio_hidden=audio.d_model,
        audio_intermediate=audio.encoder_ffn_dim,
        audio_layers=audio.encoder_layers,
        audio_positions=audio.max_source_positions,
        audio_tokens=adapter.clip_tokens(audio),
        frozen=frozen,
        experts=experts,
        experts_per_token=per_token,
        active_params=active,
        largest_tensor=largest,
        largest_tensor_name=adapter.published_name(name),
    )


@dataclass(frozen=True)
class Need:
    item: str
    nbytes: float
    where: str = "gpu"  # or "host"


def dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def transfer_chunk(config, shape: ModelShape) -> tuple[float, str]:
    """Bytes of one weight-transfer chunk, and why when it is not `sync.bucket_mb`: a chunk closes
    after the tensor that crosses the bucket, so a tensor larger than the bucket (a fused expert
    tensor, a large vocabulary's embedding) travels whole and sets the buffers' size."""
    bucket = config.sync.bucket_mb * 2**20
    largest = shape.largest_tensor * dtype_bytes(config.rollout.engine.dtype)
    if largest <= bucket:
        return bucket, ""
    return largest, (
        f"{shape.largest_tensor_name} ({largest / GIB:.2f} GiB) is larger than sync.bucket_mb "
        f"({config.sync.bucket_mb} MiB): it travels whole, so each transfer buffer holds it"
    )


@dataclass
class ActorPlan:
    kind: str
    count: int
    needs: list[Need]
    capacity: float  # bytes of the device it lives on (GPU, or host on CPU runs)
    problems: list[str]
    notes: list[str]

    def total(self, where: str = "gpu") -> float:
        return sum(n.nbytes for n in self.needs if n.where == where)

"""Write a model as a Hugging Face folder in its family's published checkpoint key layout.

transformers' `save_pretrained` does not always write what published checkpoints (and vLLM) use
(Qwen2-Audio: `language_model.model.model.*` instead of `language_model.model.*`), so we write the
layout ourselves: each family's adapter maps in-memory names to published ones (`published_name`),
the one mapping shared with the weight transfer to vLLM, and splits what it keeps fused in memory
but files store in parts (`checkpoint_tensors`: Qwen3-Omni's experts).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from families import adapter_for

SHARD_BYTES = 4 * 1024**3


def published_state(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(published name, tensor) for every weight of the model, shared tensors once."""
    adapter, seen = adapter_for(model), set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen and tensor.numel() > 0:
            continue  # tied weights: the published layout stores them once
        seen.add(tensor.data_ptr())
        yield adapter.published_name(name), tensor


def write_weights(
    weights: Iterable[tuple[str, torch.Tensor]], out_dir: Path, shard_bytes: int = SHARD_BYTES
) -> list[str]:
    """Write (published name, tensor) pairs as safetensors shards of about `shard_bytes`, each
    written as soon as it is full (at most one shard in host memory), + an index when there are
    several; return the file names. Tensors are copied as they come, so a caller may release
    (ZeRO-3: re-partition) them once the next pair is asked for."""
    shard: dict[str, torch.Tensor] = {}
    size = 0  # bytes in `shard`
    written: list[tuple[Path, list[str], int]] = []  # (file, its keys, its bytes)

    def flush() -> None:
        nonlocal size
        path = out_dir / f"model-{len(written) + 1:05d}.safetensors.part"
        save_file(shard, str(path), metadata={"format": "pt"})
        written.append((path, list(shard), size))
        shard.clear()
        size = 0

    for name, tensor in weights:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > shard_bytes:
            flush()
        shard[name] = tensor.detach().to("cpu", copy=True).contiguous()
        size += nbytes
    if shard or not written:
        flush()
    n = len(written)
    names = (
        ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    for (path, _, _), name in zip(written, names, strict=True):
        path.rename(out_dir / name)
    if n > 1:
        index = {
            "metadata": {"total_size": sum(size for _, _, size in written)},
            "weight_map": {
                key: name for (_, keys, _), name in zip(written, names, strict=True) for key in keys
            },
        }
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return names


def save_hf_folder(
    model: Any, processor: Any, out_dir: str | Path, weights: Iterable[tuple[str, torch.Tensor]] | None = None
) -> Path:
    """Write weights (`weights`, default the model's own `published_state`), config, generation
    config and processor into `out_dir` (created if absent).

    The caller makes this atomic by writing into a temporary folder and renaming it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    adapter = adapter_for(model)
    weights = published_state(model) if weights is None else weights
    write_weights((part for pair in weights for part in adapter.checkpoint_tensors(*pair)), out)
    adapter.saved_config(model).save_pretrained(out)  # its architectures pick vLLM's class
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
    for path in out.iterdir():  # make the bytes durable before anyone renames the folder
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    return out

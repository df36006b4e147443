"""Build a model checkpoint offline (`make_tiny`): random weights, own tokenizer, own processor.

No model hub is reachable here, so tests and the embedded default run on a model we make: a
supported family's real architecture (Qwen2-Audio by default; Qwen2.5-Omni's thinker, Audio
Flamingo 3, Qwen3-Omni's mixture-of-experts thinker) at a small size, with a byte-level BPE
tokenizer trained on the project's prompt vocabulary, the family's special tokens and chat
template, and a 128-bin Whisper feature extractor. The folder loads exactly like the published
checkpoints in transformers and vLLM. This module is the family dispatch: the builders
(`tiny_<family>.py`) and their shared parts (`tiny_parts.py`) never import it.

Sizes: `tiny` (about 0.6 M parameters, for tests) and `small` (about 40 M, for benchmarks).
The same seed gives the same files.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from assets import tiny_audioflamingo3, tiny_qwen2_5_omni, tiny_qwen2_audio, tiny_qwen3_omni
from assets.tiny_parts import SIZES, build_tokenizer, parameter_count, widen_audio_weights
from learner.hf_format import save_hf_folder

__all__ = ["BUILDERS", "SIZES", "make_tiny", "parameter_count"]

# family -> its builder module: `build_processor(tokenizer)`, `build_model(size spec, tokenizer,
# seed)`, and `NAMED` (special tokens the tokenizer exposes by name) where the family has some.
BUILDERS = {
    "qwen2-audio": tiny_qwen2_audio,
    "qwen2.5-omni": tiny_qwen2_5_omni,
    "audioflamingo3": tiny_audioflamingo3,
    "qwen3-omni": tiny_qwen3_omni,
}


def make_tiny(out_dir: str | Path, size: str = "tiny", seed: int = 0, family: str = "qwen2-audio") -> Path:
    """Build and write the checkpoint folder atomically (a temp folder renamed into place)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {list(SIZES)}")
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; known: {list(BUILDERS)}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    builder = BUILDERS[family]
    processor = builder.build_processor(build_tokenizer(SIZES[size]["vocab"], getattr(builder, "NAMED", {})))
    model = builder.build_model(SIZES[size], processor.tokenizer, seed)
    widen_audio_weights(model, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    save_hf_folder(model, processor, staging)
    for path in [staging, *staging.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # mkdtemp makes 0700
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return out

"""The model `bench/gpu_check.py` measures, and the planner's view of it: the bundled
Qwen2-Audio-7B shape with fewer layers and random weights made on the device (or, with --tiny, the
tiny model folder with its processor), a prompt laid out as the processor does, completions, and
the run config the planner reads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from cluster.plan_units import MODEL_CONFIGS, PROMPT_TEXT_TOKENS, ModelShape, model_shape
from learner.policy import encode_questions

BUNDLED = "Qwen2-Audio-7B-Instruct"
QUESTION, CHOICES = "Which sound is in the clip?", ["a dog", "a car", "rain", "speech"]


@dataclasses.dataclass
class Setup:
    model: torch.nn.Module
    shape: ModelShape  # the planner's shape of this (reduced) model
    dtype: torch.dtype
    prompt_ids: list[int]
    input_features: torch.Tensor  # [1, 128, 3000]
    feature_attention_mask: torch.Tensor  # [1, 3000]
    pad_id: int
    eos_ids: list[int]
    prompt_source: str


def reduced_config(layers: int, audio_layers: int):
    """The bundled 7B config with fewer decoder and encoder layers (read as cluster.plan does)."""
    from transformers import Qwen2AudioConfig

    raw = json.loads((MODEL_CONFIGS / f"{BUNDLED}.json").read_text())
    values = {k: v for k, v in raw.items() if not k.startswith("_")}
    values["text_config"] = {**values["text_config"], "num_hidden_layers": layers}
    values["audio_config"] = {**values["audio_config"], "encoder_layers": audio_layers}
    return Qwen2AudioConfig(**values)


def random_model(layers: int, audio_layers: int, device: torch.device, dtype: torch.dtype):
    """Random weights made where they live, in `dtype` (no float32 copy, no host copy)."""
    from transformers import Qwen2AudioForConditionalGeneration

    config = reduced_config(layers, audio_layers)
    with torch.device(device):
        model = Qwen2AudioForConditionalGeneration._from_config(config, dtype=dtype)
    return model


def synthetic_prompt(config, audio_tokens: int, text_tokens: int, generator: torch.Generator) -> list[int]:
    """A prompt as the processor lays it out: text, <|AUDIO|> x audio_tokens, text (no tokenizer here)."""
    text = torch.randint(0, 151_000, (text_tokens,), generator=generator).tolist()
    head = text_tokens // 3  # system turn and "Audio 1: <|audio_bos|>" before the clip
    return text[:head] + [config.audio_token_id] * audio_tokens + text[head:]


def build_setup(args, device: torch.device, workdir: Path) -> Setup:
    import numpy as np

    generator = torch.Generator().manual_seed(0)
    seconds = 30.0
    if args.tiny:
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        from assets.tiny_model import make_tiny

        folder = make_tiny(workdir / "tiny", size="tiny", seed=0)
        dtype = torch.float32
        model = Qwen2AudioForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device)
        processor = AutoProcessor.from_pretrained(folder)
        t = np.arange(int(seconds * 16_000)) / 16_000
        wave = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        encoded = encode_questions(processor, [(QUESTION, CHOICES)], [wave])
        eos = model.generation_config.eos_token_id
        shape = model_shape(str(folder))
        return Setup(
            model,
            shape,
            dtype,
            encoded.prompt_ids[0],
            encoded.input_features,
            encoded.feature_attention_mask,
            processor.tokenizer.pad_token_id,
            eos if isinstance(eos, list) else [eos],
            "encode_questions (tiny processor)",
        )
    dtype = torch.bfloat16
    model = random_model(args.layers, args.audio_layers, device, dtype)
    full = model_shape(BUNDLED)
    shape = dataclasses.replace(
        full,
        layers=args.layers,
        audio_layers=args.audio_layers,
        params=sum(p.numel() for p in model.parameters()),
    )
    prompt = synthetic_prompt(model.config, shape.audio_tokens, PROMPT_TEXT_TOKENS, generator)
    features = torch.randn(1, 128, 3000, generator=generator)
    mask = torch.ones(1, 3000, dtype=torch.long)
    # Qwen2's <|endoftext|> (padding) and <|im_end|> (end of turn).
    return Setup(model, shape, dtype, prompt, features, mask, 151643, [151645], "synthetic ids")


def completions(setup: Setup, group: int, length: int, generator: torch.Generator) -> list[list[int]]:
    """`group` completions of exactly `length` ordinary tokens (no end, padding or audio token)."""
    vocab = setup.model.config.text_config.vocab_size
    special = set(setup.eos_ids) | {setup.pad_id, setup.model.config.audio_token_id}
    ids = torch.randint(0, min(vocab, 151_000), (group, length), generator=generator)
    for token in special:
        ids[ids == token] = 1 if token != 1 else 2
    return ids.tolist()


def planner_config(group: int, completion_tokens: int, dtype: torch.dtype, checkpointing: bool, *extra: str):
    """The run the learner would read: the H200 preset at this point, one rank, ZeRO off (`extra`:
    more `key=value` overrides)."""
    from cluster.config import load_config

    overrides = [
        f"sampling.n={group}",
        f"sampling.max_tokens={completion_tokens}",
        "learner.num_ranks=1",
        "learner.parallel.micro_batch_questions=1",
        "learner.parallel.zero_stage=0",
        "learner.parallel.share_prompt=true",
        f"learner.parallel.dtype={'bfloat16' if dtype == torch.bfloat16 else 'float32'}",
        f"learner.parallel.gradient_checkpointing={'true' if checkpointing else 'false'}",
        *extra,
    ]
    return load_config("r1-aqa-h200", overrides)

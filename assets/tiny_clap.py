"""The tiny CLAP (`make-tiny --family clap`): transformers' `ClapModel` at about 50 k parameters,
built offline (own tokenizer, HTSAT audio tower, 48 kHz features of at most 2 s), then trained
briefly and contrastively on synthetic captioned clips so that it knows something: which words go
with high or low tones (`assets/synthetic_captions.py`). The reward model of the
embedded default's caption runs, and what `retrieval-eval` is tested on.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from assets.synthetic_captions import PITCH, TEMPLATES
from assets.tiny_parts import build_tokenizer
from reward_models.clap import resample

CAPTION_WORDS = [t.format(pitch=p) for t in TEMPLATES for words in PITCH.values() for p in words]


def build_tiny_clap(out_dir: str | Path, seed: int = 0) -> Path:
    """Random weights: a 1-layer text tower and a 2-stage HTSAT, 32-wide projections."""
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        ClapTextConfig,
    )

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(640, extra_corpus=CAPTION_WORDS * 20)
    text = ClapTextConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        vocab_size=len(tokenizer), max_position_embeddings=66, projection_dim=32,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    # HTSAT folds the mel spectrogram into a spec_size x spec_size image: 128 (published: 256) is a
    # quarter of the patches, and trains 250 steps in about half the time 150 took at 256, as well.
    audio = ClapAudioConfig(
        patch_embeds_hidden_size=16,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        hidden_size=32,
        projection_dim=32,
        spec_size=128,
    )
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=32)
    # rand_trunc: one channel (the public unfused checkpoints' form); clips of at most 2 s.
    features = ClapFeatureExtractor(truncation="rand_trunc", max_length_s=2)
    processor = ClapProcessor(feature_extractor=features, tokenizer=tokenizer)
    out = Path(out_dir)
    ClapModel(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def contrastive_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Cross-entropy both ways against the positives spread evenly (`logits[t][a]`: text t, clip a)."""
    text_to_audio = -(positive / positive.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    audio_to_text = -(positive / positive.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (text_to_audio + audio_to_text) / 2


def train_clap(
    model_dir: str | Path,
    waves: list[np.ndarray],
    captions: list[list[str]],
    *,
    steps: int = 250,
    batch_size: int = 32,
    lr: float = 1e-3,
    warmup_steps: int = 20,
    seed: int = 0,
    threads: int = 0,
) -> None:
    """Symmetric contrastive training on (clip, one of its captions) pairs, written back in place.

    CLAP's own loss takes every other pair of a batch as a negative; with few kinds of clip (the
    synthetic set has two) most of those are the same kind, and the model learned a bias instead
    (every clip closer to "low"). Here a caption is a positive of every clip in the batch whose
    references hold it (`contrastive_loss`), so no same-kind pair is pushed apart."""
    from transformers import ClapModel, ClapProcessor

    if threads:
        torch.set_num_threads(threads)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    processor = ClapProcessor.from_pretrained(model_dir)
    model = ClapModel.from_pretrained(model_dir).train()
    extractor = processor.feature_extractor
    rate = extractor.sampling_rate
    features = extractor([resample(w, rate) for w in waves], sampling_rate=rate, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    # The first gradients are ~60x the later ones: at full rate from step 0 some seeds pushed
    # both towers to constant outputs within ten steps (loss stuck at log(batch)). A short
    # warm-up and 1e-3 trained every seed tried.
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps))
    for _ in range(steps):
        picked = rng.sample(range(len(waves)), min(batch_size, len(waves)))
        texts = [rng.choice(captions[i]) for i in picked]
        tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
        clips = {k: v[picked] for k, v in features.items()}  # input_features, is_longer
        positive = torch.tensor([[t in captions[j] for j in picked] for t in texts], dtype=torch.float32)
        audio = torch.nn.functional.normalize(model.get_audio_features(**clips).pooler_output, dim=-1)
        text = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        loss = contrastive_loss(text @ audio.T * model.logit_scale_a.exp(), positive)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        warmup.step()
    model.eval().save_pretrained(model_dir)


def make_tiny_clap(
    out_dir: str | Path, seed: int = 0, data: str | Path | None = None, steps: int = 250
) -> Path:
    """Build the tiny CLAP and train it on `data` (caption data, any supported form), or on a
    synthetic caption set made for it; written atomically."""
    from assets.synthetic_captions import make_caption_dataset
    from rollout.audio import load_audio
    from rollout.datasets import load_questions

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as scratch:
        if data is None:
            data = make_caption_dataset(Path(scratch) / "data", n=512, seed=seed)["train"]
        items = [q for q in load_questions(data)[0] if q.references]
        staging = build_tiny_clap(Path(scratch) / "model", seed)
        train_clap(staging, [load_audio(q.audio_path) for q in items], [q.references for q in items],
                   steps=steps, seed=seed)  # fmt: skip
        if out.exists():
            out.rmdir()
        staging.rename(out)
    return out

"""A CLAP audio-text model as a reward and as a retrieval system.

The reward of a caption is the cosine similarity of its text embedding and its clip's audio
embedding (both L2-normalised, as CLAP's projections are): about -1 to 1, higher when the text
says what the audio holds. A clip's embedding is computed once per run and kept (clips recur every
epoch); captions are embedded per step, in batches. Audio is read by the one loader
(`rollout.audio`, 16 kHz) and resampled to the model's rate (48 kHz for the public checkpoints).
Public checkpoints: `laion/larger_clap_general`, `laion/clap-htsat-unfused` (English captions; a
multilingual text tower is not among transformers' CLAP models).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from reward.retrieval import retrieval_metrics
from reward.rewards import extract_answer
from rollout.audio import SAMPLE_RATE, load_audio


def resample(wave: np.ndarray, rate: int) -> np.ndarray:
    """16 kHz (the project's rate) -> `rate`."""
    if rate == SAMPLE_RATE:
        return wave
    import soxr

    return soxr.resample(wave, SAMPLE_RATE, rate, quality="HQ").astype(np.float32)


class ClapReward:
    """A CLAP model (an HF folder) that embeds clips and captions and scores their agreement."""

    def __init__(self, path: str, device: str = "cpu", dtype: str = "float32", batch_size: int = 64):
        from transformers import ClapModel, ClapProcessor

        self.device, self.batch_size = torch.device(device), batch_size
        self.processor = ClapProcessor.from_pretrained(path)
        self.model = ClapModel.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device).eval()
        self.rate = self.processor.feature_extractor.sampling_rate
        self._clips: dict[str, torch.Tensor] = {}  # audio path -> its embedding, once per run

    def embed_waves(self, waves: Sequence[np.ndarray]) -> torch.Tensor:
        """Normalised audio embeddings of 16 kHz waveforms, [n, dim]."""
        out = []
        for i in range(0, len(waves), self.batch_size):
            chunk = [resample(w, self.rate) for w in waves[i : i + self.batch_size]]
            features = self.processor.feature_extractor(chunk, sampling_rate=self.rate, return_tensors="pt")
            with torch.no_grad():
                embedded = self.model.get_audio_features(**features.to(self.device))
            out.append(_normalised(embedded))
        return torch.cat(out)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings, [n, dim] (texts longer than the model's positions are cut)."""
        out = []
        limit = self.model.config.text_config.max_position_embeddings - 2
        for i in range(0, len(texts), self.batch_size):
            tokens = self.processor.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=limit,
                return_tensors="pt",
            )
            with torch.no_grad():
                embedded = self.model.get_text_features(**tokens.to(self.device))
            out.append(_normalised(embedded))
        return torch.cat(out)

    def clip_embeddings(self, audio_paths: Sequence[str]) -> torch.Tensor:
        """Embeddings of the clips, each computed on its first request of the run."""
        missing = sorted({p for p in audio_paths if p not in self._clips})
        if missing:
            for path, vector in zip(missing, self.embed_waves([load_audio(p) for p in missing]), strict=True):
                self._clips[path] = vector
        return torch.stack([self._clips[p] for p in audio_paths])

    def similarity(self, audio_paths: Sequence[str], texts: Sequence[str]) -> list[float]:
        """Cosine similarity of each text with its clip."""
        if len(audio_paths) != len(texts):
            raise ValueError(f"{len(audio_paths)} clips but {len(texts)} texts")
        if not texts:
            return []
        clips, captions = self.clip_embeddings(audio_paths), self.embed_texts(texts)
        return (clips * captions).sum(-1).float().tolist()

    def score(self, audio_paths: Sequence[str], responses: Sequence[str]) -> list[float]:
        """The reward: similarity of each response's answer (inside `<answer>`) with its clip."""
        return self.similarity(audio_paths, [extract_answer(r) for r in responses])

    def retrieval(self, waves: Sequence[np.ndarray], captions: Sequence[Sequence[str]]) -> dict[str, float]:
        """DCASE Task 6B's metrics over clips and their captions (`reward.retrieval`)."""
        texts = [t for refs in captions for t in refs]
        clip_of_text = [a for a, refs in enumerate(captions) for _ in refs]
        similarity = self.embed_texts(texts) @ self.embed_waves(waves).T
        return retrieval_metrics(similarity.float().tolist(), clip_of_text)


def _normalised(output) -> torch.Tensor:
    """The projection of a get_*_features output (a ModelOutput or a tensor), L2-normalised."""
    vector = getattr(output, "pooler_output", output)
    return torch.nn.functional.normalize(vector.float(), dim=-1)

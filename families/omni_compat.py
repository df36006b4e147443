"""Qwen2.5-Omni and Qwen3-Omni without torchvision (the CPU profile uninstalls it: ../shared/STACK.md).

Two things break there, both about vision, which audio training never uses:
- transformers exports no `VideoProcessorMixin` and cannot build Qwen2-VL's video processor, and the
  Omni processors insist on a video processor (its class check, and `__call__` reads `merge_size`);
- vLLM's Qwen2-VL module (imported by its Omni model) takes `smart_resize` from the torchvision
  image processor module, whose import fails.

`install()` fixes both for this process: the Omni processors get a video processor that carries
the published sizes and refuses video, and the torchvision image-processor module is stood in by
its PIL twin (same `smart_resize`). It changes nothing where torchvision imports, and is called by
our vLLM plugin (every vLLM process, the model-inspection subprocess included) and before we build
or load an Omni processor ourselves.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from transformers.video_processing_utils import VideoProcessorMixin

_INSTALLED = False
_TV_IMAGE_MODULE = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
_PIL_IMAGE_MODULE = "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl"


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def install() -> None:
    """Idempotent; a no-op when torchvision is installed."""
    global _INSTALLED
    if _INSTALLED or torchvision_available():
        return
    import transformers
    from transformers.models.qwen2_5_omni import processing_qwen2_5_omni
    from transformers.models.qwen3_omni_moe import processing_qwen3_omni_moe

    if _TV_IMAGE_MODULE not in sys.modules:
        sys.modules[_TV_IMAGE_MODULE] = importlib.import_module(_PIL_IMAGE_MODULE)
    # The processor's class check looks these names up on the transformers module.
    transformers.VideoProcessorMixin = VideoProcessorMixin
    transformers.AudioOnlyVideoProcessor = AudioOnlyVideoProcessor
    omni_processors = (
        processing_qwen2_5_omni.Qwen2_5OmniProcessor,
        processing_qwen3_omni_moe.Qwen3OmniMoeProcessor,
    )
    for processor in omni_processors:
        processor.video_processor_class = "AudioOnlyVideoProcessor"
    _INSTALLED = True


class AudioOnlyVideoProcessor(VideoProcessorMixin):
    """Qwen2-VL's video processor sizes without its torchvision pipeline: it refuses video.
    Qwen3-Omni's patch is 16 (`AudioOnlyVideoProcessor(patch_size=16)`, saved with it)."""

    merge_size = 2
    temporal_patch_size = 2
    patch_size = 14

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("merge_size", "temporal_patch_size", "patch_size"):
            setattr(self, name, getattr(self, name))  # saved with the processor

    def preprocess(self, videos, **kwargs):
        raise NotImplementedError("video input needs torchvision, which this install does not have")

    def to_dict(self) -> dict:
        # Saved as the processor it stands in for, so an install with torchvision loads the real one.
        return super().to_dict() | {"video_processor_type": "Qwen2VLVideoProcessor"}

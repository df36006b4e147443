"""Generation: the question and completion units, data sets and the epoch sampler, the one audio
loader and prompt, sampling settings, the vLLM rollout worker and its weight-receiving side (HF's
engine for reference). May import reward and families."""

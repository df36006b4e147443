"""Model families beyond Qwen2-Audio (families/): each family's tiny checkpoint loads in
transformers and vLLM with equal greedy output, the learner's log-probs equal the model's own
forward (Audio Flamingo 3's long clips in several 30 s windows included), and GRPO trains it."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from helpers import FAST, ROOT, steps_logged
from safetensors import safe_open

from families import FAMILIES, adapter_for
from rollout.prompt import render_prompt


@pytest.fixture(scope="module")
def af3_dir(tmp_path_factory):
    from assets.tiny_model import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "af3", family="audioflamingo3")


def test_the_family_comes_from_config_json_and_unknown_ones_are_refused(tiny_model_dir, af3_dir, tmp_path):
    assert adapter_for(tiny_model_dir) is FAMILIES["qwen2-audio"]
    assert adapter_for(af3_dir) is FAMILIES["audioflamingo3"]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ValueError, match="model_type 'whisper' is not a supported family"):
        adapter_for(tmp_path)


def test_af3_checkpoint_has_published_names_sound_placeholder_and_template(af3_dir):
    from transformers import AutoProcessor

    with safe_open(str(af3_dir / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    prefixes = (
        "audio_tower.",
        "multi_modal_projector.linear_",
        "language_model.model.",
        "language_model.lm_head.",
    )
    assert all(k.startswith(prefixes) for k in keys), [k for k in keys if not k.startswith(prefixes)]
    processor = AutoProcessor.from_pretrained(af3_dir)
    assert type(processor).__name__ == "AudioFlamingo3Processor"
    config = json.loads((af3_dir / "config.json").read_text())
    assert config["audio_token_id"] == processor.tokenizer.convert_tokens_to_ids("<sound>")
    prompt = render_prompt(processor, "Is the tone high or low?", ["high", "low"])
    assert "<|im_start|>user\n<sound>Is the tone high or low?" in prompt  # the sound before the text


def test_af3_learner_logprobs_equal_the_models_forward_with_long_clips_in_windows(af3_dir):
    from transformers import AutoProcessor

    from learner.policy import audio_embeddings, build_rows, completion_logprobs, encode_questions

    processor = AutoProcessor.from_pretrained(af3_dir)
    model = adapter_for(af3_dir).load(str(af3_dir), torch.float32).eval()
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(16000 * s).astype(np.float32) for s in (2, 40)]  # 40 s: 2 windows
    encoded = encode_questions(processor, [("Is the tone high or low?", ["high", "low"])] * 2, waves)
    assert encoded.windows == [1, 2] and encoded.input_features.shape[0] == 3
    tokenizer, end = processor.tokenizer, processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    completions = [tokenizer("<answer>high</answer>").input_ids + [end]] * 2
    rows = build_rows(encoded.prompt_ids, completions, [0, 1], tokenizer.pad_token_id, [end])
    with torch.no_grad():
        ours = completion_logprobs(model, rows, audio_embeddings(model, *encoded.audio([0, 1])))
        for q in (0, 1):
            ids = torch.tensor([encoded.prompt_ids[q] + completions[q]])
            features, mask, _ = encoded.audio([q])
            logits = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                input_features=features,
                input_features_mask=mask,
            ).logits[0, len(encoded.prompt_ids[q]) - 1 : -1]
            theirs = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(completions[q])[:, None])[
                :, 0
            ]
            assert torch.allclose(ours[q, : len(completions[q])], theirs, atol=1e-5)


@pytest.mark.slow
def test_af3_greedy_output_in_vllm_equals_transformers(af3_dir, tmp_path):
    import soundfile as sf
    from helpers import tone

    from rollout.audio import SAMPLE_RATE, load_audio
    from rollout.hf_engine import hf_generate
    from rollout.question import AudioQuestion
    from rollout.sampling import SamplingConfig
    from rollout.vllm_engine import EngineConfig, RolloutWorker

    questions = []
    for i, freq in enumerate([300.0, 2000.0, 800.0]):
        sf.write(tmp_path / f"{i}.wav", tone(freq, 1.0 + 0.3 * i), SAMPLE_RATE)
        questions.append(
            AudioQuestion(str(i), str(tmp_path / f"{i}.wav"), "High or low?", ["high", "low"], "high")
        )
    sampling = SamplingConfig(max_tokens=16)
    worker = RolloutWorker(str(af3_dir), EngineConfig(dtype="float32", in_process=True))
    ours = [r.completions[0].token_ids for r in worker.generate(questions, sampling, greedy=True)]
    from transformers import AutoProcessor

    model = adapter_for(af3_dir).load(str(af3_dir), torch.float32).eval()
    texts = [(q.question, q.choices) for q in questions]
    waves = [load_audio(q.audio_path) for q in questions]
    theirs = hf_generate(model, AutoProcessor.from_pretrained(af3_dir), texts, waves, sampling, greedy=True)
    assert ours == [g[0] for g in theirs]


@pytest.mark.slow
def test_af3_grpo_learns_and_its_checkpoint_loads(service_env, tmp_path):
    """The embedded default on Audio Flamingo 3's architecture (tiny-cpu-af3): held-out accuracy
    leaves chance; the checkpoint loads in transformers as AF3."""
    from transformers import AudioFlamingo3ForConditionalGeneration

    from cli.main import train_command

    run_dir = tmp_path / "af3"
    command = train_command(run_dir, config="tiny-cpu-af3", max_steps=60, extra=tuple(FAST))
    done = subprocess.run(command, cwd=ROOT, env=service_env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    records = steps_logged(run_dir)
    assert [r["step"] for r in records] == list(range(1, 61))
    assert max(r["eval_accuracy"] for r in records if "eval_accuracy" in r) > 75.0, records[-1]  # chance: 50
    AudioFlamingo3ForConditionalGeneration.from_pretrained(run_dir / "checkpoints" / "step-60")

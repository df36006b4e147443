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
    # The engine core in its own process: in this one it would set up torch.distributed, which
    # later tests' learners set up themselves.
    worker = RolloutWorker(str(af3_dir), EngineConfig(dtype="float32", in_process=False))
    ours = [r.completions[0].token_ids for r in worker.generate(questions, sampling, greedy=True)]
    worker.llm.llm_engine.engine_core.shutdown()
    del worker
    from transformers import AutoProcessor

    model = adapter_for(af3_dir).load(str(af3_dir), torch.float32).eval()
    texts = [(q.question, q.choices) for q in questions]
    waves = [load_audio(q.audio_path) for q in questions]
    theirs = hf_generate(model, AutoProcessor.from_pretrained(af3_dir), texts, waves, sampling, greedy=True)
    assert ours == [g[0] for g in theirs]


@pytest.mark.slow
def test_af3_trains_serves_live_and_serves_its_checkpoint(service_env, tmp_path):
    """The embedded default on Audio Flamingo 3's architecture (tiny-cpu-af3) with `--serve`: the
    live endpoint answers during training; held-out accuracy leaves chance; the checkpoint loads
    in transformers as AF3 and `serve` answers from it."""
    import httpx
    from helpers import FORM, start_server, wait_for
    from helpers import wav_bytes as wav
    from transformers import AudioFlamingo3ForConditionalGeneration

    from cli.main import train_command
    from cluster.network import free_port

    run_dir = tmp_path / "af3"
    serve = ("--serve", "--serve-port", str(free_port()))
    command = train_command(run_dir, config="tiny-cpu-af3", max_steps=60, extra=(*FAST, *serve))
    with open(tmp_path / "train.log", "w") as log:
        training = subprocess.Popen(command, cwd=ROOT, env=service_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for((run_dir / "endpoint.json").exists, 600, "the live endpoint to start", training)
            url = json.loads((run_dir / "endpoint.json").read_text())["url"]
            live = httpx.post(f"{url}/v1/answer", files={"audio": ("a.wav", wav())}, data=FORM, timeout=120)
            assert live.status_code == 200, live.text
            assert live.json()["checkpoint"] == "(live)" or live.json()["policy_version"] == 0
            assert training.wait(timeout=1500) == 0, (tmp_path / "train.log").read_text()[-4000:]
        finally:
            if training.poll() is None:
                training.kill()
    records = steps_logged(run_dir)
    assert [r["step"] for r in records] == list(range(1, 61))
    assert max(r["eval_accuracy"] for r in records if "eval_accuracy" in r) > 75.0, records[-1]  # chance: 50
    checkpoint = run_dir / "checkpoints" / "step-60"
    AudioFlamingo3ForConditionalGeneration.from_pretrained(checkpoint)
    server, url = start_server(["--model", str(checkpoint), "--dtype", "float32"], env=service_env)
    try:
        answer = httpx.post(f"{url}/v1/answer", files={"audio": ("a.wav", wav())}, data=FORM, timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["step"] == 60 and answer.json()["answer"] in json.loads(FORM["choices"])
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.mark.slow
def test_af3_sft_learns_and_resumes_from_its_checkpoint(service_env, tmp_path):
    """`sft` on a tiny AF3 built for it (model.family): held-out accuracy leaves chance; `--resume`
    continues from the step-20 checkpoint to step 30 with each step logged once."""
    from cli.main import cli_command

    run_dir = tmp_path / "sft"
    first = cli_command(
        "sft", "--config", "tiny-cpu-sft", "--run-dir", str(run_dir), "--max-steps", "20", "--no-progress",
        "--set", f"model.path={tmp_path / 'model'}", "--set", "model.family=audioflamingo3",
        "--set", "train.eval_every=10", "--set", "train.save_every=10",
    )  # fmt: skip
    resume = cli_command("sft", "--resume", str(run_dir), "--max-steps", "30", "--no-progress")
    for command in (first, resume):
        done = subprocess.run(command, cwd=ROOT, env=service_env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-4000:]
    records = steps_logged(run_dir)
    assert [r["step"] for r in records] == list(range(1, 31))
    assert records[-1]["data_position"] == 240
    assert max(r["eval_accuracy"] for r in records if "eval_accuracy" in r) > 75.0  # chance: 50
    assert adapter_for(run_dir / "checkpoints" / "step-30") is FAMILIES["audioflamingo3"]

"""Model families beyond Qwen2-Audio (families/): each family's tiny checkpoint loads in
transformers and vLLM with equal greedy output, the learner's log-probs equal the model's own
forward (Audio Flamingo 3's long clips in several 30 s windows included), GRPO trains it and both
serving modes answer, SFT learns and resumes. Qwen2.5-Omni's thinker is checked in its published
layout (full omni config, `thinker.` names) and without torchvision (the CPU profile). Qwen3-Omni's
(mixture of experts) joins the checks that hold for it; its own are in tests/test_moe.py."""

from __future__ import annotations

import json
import re
import subprocess
import time

import httpx
import numpy as np
import pytest
import torch
from helpers import FAST, FORM, ROOT, answer_of, launch_server, steps_logged, wait_for, wait_for_server
from safetensors import safe_open

from families import FAMILIES, FAMILY_NAMES, adapter_for, load_processor
from rollout.prompt import render_prompt

TOKEN = "live-secret"  # guards the family runs' live endpoint
SAVE_EVERY = 5  # their checkpoints, which `serve --run-dir` follows


@pytest.fixture(scope="module")
def af3_dir(tmp_path_factory):
    from assets.tiny_model import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "af3", family="audioflamingo3")


@pytest.fixture(scope="module")
def omni_dir(tmp_path_factory):
    from assets.tiny_model import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "omni", family="qwen2.5-omni")


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    from assets.tiny_model import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "qwen3", family="qwen3-omni")


@pytest.fixture(scope="module")
def family_dirs(af3_dir, omni_dir, qwen3_dir):
    return {"audioflamingo3": af3_dir, "qwen2.5-omni": omni_dir, "qwen3-omni": qwen3_dir}


def test_the_family_comes_from_config_json_and_unknown_ones_are_refused(
    tiny_model_dir, af3_dir, omni_dir, tmp_path
):
    assert adapter_for(tiny_model_dir) is FAMILIES["qwen2-audio"]
    assert [a.family for a in FAMILIES.values()] == list(FAMILY_NAMES)  # each class under its own name
    assert adapter_for(af3_dir) is FAMILIES["audioflamingo3"]
    assert adapter_for(omni_dir) is FAMILIES["qwen2.5-omni"]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ValueError, match="model_type 'whisper' is not a supported family"):
        adapter_for(tmp_path)
    # A named model.family must agree with the folder's config.json: the weights decide the class.
    from assets.build import ensure_model

    common = dict(warm_start_steps=0, train_data=tmp_path, audio_root=None, seed=0)
    ensure_model(omni_dir, "", family="qwen2.5-omni", **common)
    ensure_model(omni_dir, "", family="", **common)
    with pytest.raises(ValueError, match="model.family is 'audioflamingo3' but .* holds a qwen2.5-omni"):
        ensure_model(omni_dir, "", family="audioflamingo3", **common)


def test_af3_checkpoint_has_published_names_sound_placeholder_and_template(af3_dir):
    with safe_open(str(af3_dir / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    prefixes = (
        "audio_tower.",
        "multi_modal_projector.linear_",
        "language_model.model.",
        "language_model.lm_head.",
    )
    assert all(k.startswith(prefixes) for k in keys), [k for k in keys if not k.startswith(prefixes)]
    processor = load_processor(af3_dir)
    assert type(processor).__name__ == "AudioFlamingo3Processor"
    config = json.loads((af3_dir / "config.json").read_text())
    assert config["audio_token_id"] == processor.tokenizer.convert_tokens_to_ids("<sound>")
    prompt = render_prompt(processor, "Is the tone high or low?", ["high", "low"])
    assert "<|im_start|>user\n<sound>Is the tone high or low?" in prompt  # the sound before the text


def test_omni_checkpoint_is_the_full_omni_layout_without_talker_and_loads_as_the_thinker(omni_dir):
    from learner.lora import engine_weights

    with safe_open(str(omni_dir / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert all(k.startswith("thinker.") for k in keys) and any(k.startswith("thinker.visual.") for k in keys)
    config = json.loads((omni_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_omni" and config["enable_audio_output"] is False
    assert config["architectures"] == ["Qwen2_5OmniForConditionalGeneration"]  # what vLLM registers
    # HF ties the head to the embeddings by one flag, vLLM by the other: both must say no.
    assert config["thinker_config"]["text_config"]["tie_word_embeddings"] is False
    processor = load_processor(omni_dir)  # no torchvision here: families/omni_compat.py
    assert type(processor).__name__ == "Qwen2_5OmniProcessor"
    prompt = render_prompt(processor, "Is the tone high or low?", ["high", "low"])
    assert "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>Is the tone high or low?" in prompt
    model = adapter_for(omni_dir).load(str(omni_dir), torch.float32)
    assert type(model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    assert sorted(adapter_for(model).published_name(n) for n in model.state_dict()) == sorted(keys)
    # The vision tower never runs: frozen, and weight updates leave it out (vLLM does not build it).
    adapter_for(model).freeze_unused(model)
    sent = {w.name for w in engine_weights(model)}
    assert sent == {k for k in keys if not k.startswith("thinker.visual.")}


@pytest.mark.parametrize("family", ["audioflamingo3", "qwen2.5-omni"])
def test_lora_targets_the_decoder_and_with_audio_the_encoder_never_the_vision_tower(family, family_dirs):
    from learner.config import LoraSettings
    from learner.lora import add_lora, lora_layers

    model_dir = family_dirs[family]
    language = add_lora(adapter_for(model_dir).load(str(model_dir), torch.float32), LoraSettings(rank=4))
    both = add_lora(
        adapter_for(model_dir).load(str(model_dir), torch.float32), LoraSettings(rank=4, audio=True)
    )
    decoder_layers = len(adapter_for(language).decoder(language).layers)
    assert len(lora_layers(language)) == decoder_layers * 7  # q, k, v, o, gate, up, down
    audio = [name for name in lora_layers(both) if name not in lora_layers(language)]
    assert audio and all("audio_tower" in n or "multi_modal_projector" in n for n in audio), audio
    assert not any(n.startswith("visual") for n in lora_layers(both))


@pytest.mark.parametrize("family", ["audioflamingo3", "qwen2.5-omni", "qwen3-omni"])
def test_learner_logprobs_equal_the_models_forward(family, family_dirs):
    """Omni's encoder runs on each clip's real frames in 2 s chunks; AF3 cuts 40 s into 2 windows."""
    from learner.policy import audio_embeddings, build_rows, completion_logprobs, encode_questions

    model_dir = family_dirs[family]
    processor = load_processor(model_dir)
    model = adapter_for(model_dir).load(str(model_dir), torch.float32).eval()
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(16000 * s).astype(np.float32) for s in (2, 40)]
    encoded = encode_questions(processor, [("Is the tone high or low?", ["high", "low"])] * 2, waves)
    assert encoded.windows == ([1, 2] if family == "audioflamingo3" else [1, 1])
    tokenizer, end = processor.tokenizer, processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    completions = [tokenizer("<answer>high</answer>").input_ids + [end], tokenizer("<answer>low").input_ids]
    rows = build_rows(encoded.prompt_ids, completions, [0, 1], tokenizer.pad_token_id, [end])
    mask_key = adapter_for(model).feature_mask_key
    with torch.no_grad():
        ours = completion_logprobs(model, rows, audio_embeddings(model, *encoded.audio([0, 1])))
        for q in (0, 1):
            ids = torch.tensor([encoded.prompt_ids[q] + completions[q]])
            features, mask, _ = encoded.audio([q])
            logits = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                input_features=features,
                **{mask_key: mask},
            ).logits[0, len(encoded.prompt_ids[q]) - 1 : -1]
            theirs = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(completions[q])[:, None])
            assert torch.allclose(ours[q, : len(completions[q])], theirs[:, 0], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["audioflamingo3", "qwen2.5-omni", "qwen3-omni"])
def test_greedy_output_in_vllm_equals_transformers(family, family_dirs, tmp_path):
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
    model_dir = family_dirs[family]
    worker = RolloutWorker(str(model_dir), EngineConfig(dtype="float32", in_process=False))
    ours = [r.completions[0].token_ids for r in worker.generate(questions, sampling, greedy=True)]
    worker.llm.llm_engine.engine_core.shutdown()
    del worker
    model = adapter_for(model_dir).load(str(model_dir), torch.float32).eval()
    texts = [(q.question, q.choices) for q in questions]
    waves = [load_audio(q.audio_path) for q in questions]
    theirs = hf_generate(model, load_processor(model_dir), texts, waves, sampling, greedy=True)
    assert ours == [g[0] for g in theirs]


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset, model_class, steps",
    [
        ("tiny-cpu-af3", "AudioFlamingo3ForConditionalGeneration", 40),
        ("tiny-cpu-omni", "Qwen2_5OmniThinkerForConditionalGeneration", 40),
        # The mixture of experts learns later (held-out 100% from step 60 to 90 here; its preset,
        # without overlapped rollouts, trains 150 steps) but each step is quick.
        ("tiny-cpu-qwen3-omni", "Qwen3OmniMoeThinkerForConditionalGeneration", 120),
    ],
)
def test_family_trains_and_is_served_live_and_from_each_new_checkpoint(
    preset, model_class, steps, service_env, tmp_path
):
    """The embedded default on another family's architecture (tiny-cpu-af3, tiny-cpu-omni,
    tiny-cpu-qwen3-omni) with `--serve` (token-guarded) and overlapped rollouts, followed by
    `serve --run-dir`:
    - the live endpoint, one more receiver of the weight transfer, answers from the newest policy
      version, at most one step behind the learner, with no checkpoint involved;
    - `train.overlap_rollout`: step k's completions come from policy k - 2 (generated during
      update k - 1), carry the engine's log-probs for the off-policy ratio, and no question is lost;
    - held-out accuracy leaves chance; the checkpoint loads in transformers as the family's class;
    - the follower answers from newer checkpoints while training goes on, then from the last."""
    from cli.main import train_command

    run_dir = tmp_path / "run"
    serve = ("--serve", "--serve-port", "0", "--token", TOKEN)
    # One rollout worker: overlapped, it generates on one core while the update takes the other; a
    # second one's start (~10 s of CPU to import vLLM) costs more than it gains on 2 cores.
    overlap = ("--set", "train.overlap_rollout=true", "--set", f"train.save_every={SAVE_EVERY}")
    overlap += ("--set", "rollout.num_workers=1")
    command = train_command(run_dir, config=preset, max_steps=steps, extra=(*FAST, *serve, *overlap))
    with open(tmp_path / "train.log", "w") as log:
        training = subprocess.Popen(command, cwd=ROOT, env=service_env, stdout=log, stderr=subprocess.STDOUT)
        # The follower starts with the run (it waits for config.yaml, then serves the run's starting
        # model as version 0 until the first checkpoint), so its engine is up while training goes on.
        follower, url = launch_server(["--run-dir", str(run_dir), "--dtype", "float32", "--poll-s", "0.5"],
                                      env=service_env)  # fmt: skip
        try:
            wait_for((run_dir / "endpoint.json").exists, 600, "the live endpoint to start", training)
            seen = _live_versions(
                json.loads((run_dir / "endpoint.json").read_text())["url"], run_dir, training
            )
            followed = _followed_versions(wait_for_server(follower, url, timeout_s=600), training)
            assert training.wait(timeout=1500) == 0, (tmp_path / "train.log").read_text()[-4000:]
            last = _last_checkpoint_answer(url, run_dir, steps)
        finally:
            if training.poll() is None:
                training.kill()  # its Ray actors go with their driver
            follower.terminate()  # a graceful stop, or vLLM's engine process outlives it
            follower.wait(timeout=60)
    versions = [v for _, v, _ in seen]
    assert versions == sorted(versions) and len(set(versions)) >= 4, seen
    assert any(v % SAVE_EVERY for v in versions), seen  # versions no checkpoint holds
    for before, version, after in seen:  # the newest version, at most one step behind the learner
        assert before <= version <= after + 1, seen
    followed.append(last["policy_version"])  # a newer checkpoint than those answered during training
    assert followed == sorted(followed) and len(set(followed)) >= 2, followed
    assert all(v % SAVE_EVERY == 0 for v in followed), followed  # 0: the run's starting model
    records = steps_logged(run_dir)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert [r["rollout_version"] for r in records] == [max(0, r["step"] - 2) for r in records]
    assert [r["data_position"] for r in records] == [8 * r["step"] for r in records]
    assert all(r["samples"] == 64 and r["loss"] == r["loss"] for r in records)  # no NaN
    assert max(r["eval_accuracy"] for r in records if "eval_accuracy" in r) > 75.0, records[-1]  # chance: 50
    checkpoint = run_dir / "checkpoints" / f"step-{steps}"
    assert type(adapter_for(checkpoint).load(str(checkpoint), torch.float32)).__name__ == model_class


def _live_versions(url: str, run_dir, training) -> list[tuple[int, int, int]]:
    """Ask the live endpoint until 4 policy versions have answered: (steps logged before the
    request, the version that answered, steps logged after)."""
    assert re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*", url), url  # port 0: a free one
    assert httpx.get(f"{url}/v1/policy", timeout=10).status_code == 401  # the token guards it
    seen, deadline = [], time.time() + 300
    while len({v for _, v, _ in seen}) < 4 and time.time() < deadline:
        assert training.poll() is None, "training ended early"
        before = len(steps_logged(run_dir))
        answer = answer_of(url, {"Authorization": f"Bearer {TOKEN}"})
        seen.append((before, answer["policy_version"], len(steps_logged(run_dir))))
        assert answer["checkpoint"] == "(live)" or answer["policy_version"] == 0
    return seen


def _last_checkpoint_answer(url: str, run_dir, step: int) -> dict:
    """The follower's answer once it has loaded the run's last checkpoint (`step`)."""
    last = wait_for(
        lambda: (a := answer_of(url)).get("step") == step and a, 120, f"the step-{step} checkpoint"
    )
    assert last["answer"] in json.loads(FORM["choices"])
    policy = httpx.get(f"{url}/v1/policy", timeout=10).json()
    assert policy["checkpoint"].startswith(str(run_dir / "checkpoints")), policy
    return last


def _followed_versions(url: str, training) -> list[int]:
    """The checkpoint versions `serve --run-dir` answers from while training goes on (until it ends
    or 3 have answered); at least one."""
    versions = [answer_of(url)["policy_version"]]
    while training.poll() is None and len(set(versions)) < 3:
        versions.append(answer_of(url)["policy_version"])
        time.sleep(1.0)
    return versions


@pytest.mark.slow
@pytest.mark.parametrize("family", ["audioflamingo3", "qwen2.5-omni", "qwen3-omni"])
def test_family_sft_learns_and_resumes_from_its_checkpoint(family, service_env, tmp_path):
    """`sft` on a tiny model of the family built for it (model.family): held-out accuracy leaves
    chance; `--resume` continues from the step-10 checkpoint to step 15 with each step logged once."""
    from cli.main import cli_command

    run_dir = tmp_path / "sft"
    first = cli_command(
        "sft", "--config", "tiny-cpu-sft", "--run-dir", str(run_dir), "--max-steps", "10", "--no-progress",
        "--set", f"model.path={tmp_path / 'model'}", "--set", f"model.family={family}",
        "--set", "train.eval_every=10", "--set", "train.save_every=10",
    )  # fmt: skip
    resume = cli_command("sft", "--resume", str(run_dir), "--max-steps", "15", "--no-progress")
    for command in (first, resume):
        done = subprocess.run(command, cwd=ROOT, env=service_env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-4000:]
    records = steps_logged(run_dir)
    assert [r["step"] for r in records] == list(range(1, 16))
    assert records[-1]["data_position"] == 120
    assert max(r["eval_accuracy"] for r in records if "eval_accuracy" in r) > 75.0  # chance: 50
    assert adapter_for(run_dir / "checkpoints" / "step-15") is FAMILIES[family]

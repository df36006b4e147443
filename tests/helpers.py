"""Helpers shared by the test modules (fixtures live in conftest.py): clips, learners, greedy
comparisons, a server started through the project's own command line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
import urllib.request
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf
import torch

from cli.main import cli_command, train_command
from cluster.network import free_port
from rollout.audio import SAMPLE_RATE
from rollout.prompt import render_prompt

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
QUESTION, CHOICES = "Is the tone high or low?", ["high", "low"]
FORM = {"question": QUESTION, "choices": json.dumps(CHOICES)}  # an /v1/answer form, less its audio

# -- audio ------------------------------------------------------------------------------------------


def tone(freq: float, seconds: float = 1.0, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_tone(
    path: Path,
    freq: float = 440.0,
    seconds: float = 1.0,
    rate: int = SAMPLE_RATE,
    channels: int = 1,
    **kwargs,
) -> Path:
    """A sine clip on disk (any format soundfile writes, chosen by suffix or `format=`)."""
    wave = tone(freq, seconds, rate)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, rate, **kwargs)
    return path


def wav_bytes(seconds: float = 1.0, freq: float = 2000.0, rate: int = SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, tone(freq, seconds, rate), rate, format="WAV")
    return buffer.getvalue()


def clips() -> list[np.ndarray]:
    """Three clips for greedy comparisons: a low tone, a high one, and noise."""
    rng = np.random.default_rng(0)
    return [tone(300, 2.0), tone(2000, 1.0), (0.3 * rng.uniform(-1, 1, 24000)).astype(np.float32)]


# -- learners ---------------------------------------------------------------------------------------

_LEARNER_PORT = free_port()  # the pytest process joins one gloo group of size 1, once


def make_learner_config(**overrides):
    """A LearnerConfig (lr 1e-3, float32) with overrides named by field, whichever section holds it."""
    from learner.config import LearnerConfig

    config = LearnerConfig()
    overrides = {"lr": 1e-3, "dtype": "float32", **overrides}
    for section in ("optimizer", "loss", "parallel", "sampling", "prompt"):
        part = getattr(config, section)
        mine = {k: overrides.pop(k) for k in [f.name for f in fields(part)] if k in overrides}
        config = replace(config, **{section: replace(part, **mine)})
    return replace(config, **overrides)  # seed


def make_learner(model_dir, **overrides):
    from learner.learner import Learner

    return Learner(model_dir, make_learner_config(**overrides), master_port=_LEARNER_PORT)


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


def batch_rows(learner, batch, encoded):
    """The padded rows of every completion in `batch` (as the learner builds them)."""
    from learner.policy import build_rows

    return build_rows(
        encoded.prompt_ids, batch.completions, batch.question_index, learner.pad_id, learner.eos_ids
    )


def pitch_batch(tokenizer, n_questions: int = 2, group: int = 4):
    """A LearnerBatch on the pitch task: completions alternate right/wrong, advantages +1/-1."""
    from learner.batch import LearnerBatch
    from reward.rewards import answer_tag

    questions, waves, completions, index, advantages = [], [], [], [], []
    for q in range(n_questions):
        answer = "high" if q % 2 == 0 else "low"
        questions.append((QUESTION, CHOICES))
        waves.append(tone(2000.0 if answer == "high" else 300.0, 0.5 + 0.25 * q))
        for g in range(group):
            choice = answer if g % 2 == 0 else ("low" if answer == "high" else "high")
            text = answer_tag(choice) + "<|im_end|>" if g < group - 1 else f"<answer>{choice}"
            completions.append(tokenizer(text).input_ids)
            index.append(q)
            advantages.append(1.0 if choice == answer else -1.0)
    return LearnerBatch(questions, waves, completions, index, advantages)


# -- greedy comparisons -----------------------------------------------------------------------------


def fp32_llm(model_dir):
    """A vLLM engine in fp32 (where its greedy output equals transformers' token for token)."""
    from rollout.vllm_engine import EngineConfig, engine_args, vllm_env

    engine = EngineConfig(dtype="float32", max_model_len=2048)
    vllm_env(engine)
    from vllm import LLM

    return LLM(**engine_args(str(model_dir), engine))


def hf_greedy(model_dir, max_new_tokens: int = 24) -> list[list[int]]:
    """Greedy completions the way R1-AQA's model card runs the model (with `audio=`), in fp32."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = render_prompt(processor, QUESTION, CHOICES)
    outputs = []
    for audio in clips():
        inputs = processor(
            text=text, audio=audio, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True
        )
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        outputs.append(generated[0, inputs.input_ids.size(1) :].tolist())
    return outputs


def vllm_greedy(llm, model_dir, max_new_tokens: int = 24) -> list[list[int]]:
    from transformers import AutoProcessor
    from vllm import SamplingParams

    text = render_prompt(AutoProcessor.from_pretrained(model_dir), QUESTION, CHOICES)
    requests = [{"prompt": text, "multi_modal_data": {"audio": (audio, SAMPLE_RATE)}} for audio in clips()]
    results = llm.generate(requests, SamplingParams(temperature=0.0, max_tokens=max_new_tokens))
    return [list(r.outputs[0].token_ids) for r in results]


def assert_same_greedy(hf: list[list[int]], vllm: list[list[int]]) -> None:
    for hf_ids, vllm_ids in zip(hf, vllm, strict=True):
        # Both keep the end token they stop on; allow one token of slack at the budget edge.
        assert vllm_ids == hf_ids[: len(vllm_ids)] and len(hf_ids) - len(vllm_ids) in (0, 1), (
            hf_ids,
            vllm_ids,
        )


# -- the command line -------------------------------------------------------------------------------


def run_cli(
    *args: str, stdin: str = "", timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`audio-grpo ARGS` as a process from the repository root, through the project's own command
    builder (`env`: the whole environment, e.g. a Ray cluster's address and an asset cache)."""
    return subprocess.run(
        cli_command(*args), input=stdin, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )


# -- the HTTP server --------------------------------------------------------------------------------


def start_server(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`audio-grpo serve ARGS` on a free loopback port; returns once /healthz answers 200."""
    proc, url = launch_server(args, env)
    return proc, wait_for_server(proc, url)


def launch_server(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`audio-grpo serve ARGS` on a free loopback port, not waited for (`wait_for_server`)."""
    port = free_port()
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-{port}.log", "w")
    proc = subprocess.Popen(
        cli_command("serve", "--port", str(port), *args),
        cwd=ROOT,
        env=env or os.environ.copy(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log_path = Path(log.name)  # for tests that read the server's log
    return proc, f"http://127.0.0.1:{port}"


def wait_for_server(proc: subprocess.Popen, url: str, timeout_s: float = 300) -> str:
    """`url` once its /healthz answers 200 (the server's log in the error if it exits first)."""
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}: {proc.log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("serve did not come up")


def answer_of(url: str, headers: dict | None = None) -> dict:
    """POST a 1 s tone and FORM's question to `url`/v1/answer; the 200 answer's JSON."""
    import httpx

    response = httpx.post(
        f"{url}/v1/answer", files={"audio": ("a.wav", wav_bytes())}, data=FORM, headers=headers, timeout=120
    )
    assert response.status_code == 200, response.text
    return response.json()


# -- training runs as processes (the service tests) ---------------------------------------------------

FAST = ["--set", "model.warm_start_steps=30", "--set", "sync.timeout_s=60", "--no-progress"]


def start_train(env, run_dir: Path, *extra: str) -> subprocess.Popen:
    log = open(run_dir.parent / f"{run_dir.name}.log", "a")
    return subprocess.Popen(
        train_command(run_dir, extra=(*FAST, *extra)),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def steps_logged(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def actor_pids(class_name: str, since: float = 0.0) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline", "create_time"])
        if p.info["cmdline"]
        and p.info["cmdline"][0].startswith(f"ray::{class_name}")
        and p.info["create_time"] >= since
    ]


def wait_for(
    predicate, timeout: float, what: str, process: subprocess.Popen | None = None, every: float = 0.2
):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"training exited (rc {process.returncode}) while waiting for {what}")
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def prometheus_text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return ""


def run_as_job(ray_head: dict, env: dict, command: list[str], work_dir: Path, timeout: float = 900) -> str:
    """`ray job submit` a CLI command as users do (the project's runtime env, this checkout as the
    working directory), wait for it to succeed and return its logs. The job's environment is the
    cluster's plus deploy/runtime-env.yaml, with the session's asset cache added."""
    import re
    import sys

    import yaml

    runtime_env = yaml.safe_load((ROOT / "deploy" / "runtime-env.yaml").read_text())
    runtime_env["env_vars"]["AUDIO_GRPO_CACHE"] = env["AUDIO_GRPO_CACHE"]
    runtime_file = work_dir / "runtime-env.yaml"
    runtime_file.write_text(yaml.safe_dump(runtime_env))
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    ray_job = [sys.executable, "-m", "ray.scripts.scripts", "job"]
    address = ["--address", ray_head["dashboard"]]
    submit = [
        *ray_job, "submit", *address, "--no-wait", "--working-dir", ".", "--runtime-env", str(runtime_file),
        "--", "python", *command[1:],  # less this interpreter: the job's own python runs it
    ]  # fmt: skip
    for _attempt in range(30):  # Ray answers "No available agent ... try again later" while its job
        submitted = subprocess.run(  # agent is busy registering: do as it says, for up to a minute
            submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        if submitted.returncode == 0 or "try again later" not in submitted.stderr:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr).group(0)

    # Polled over the dashboard's HTTP API: a `ray job status` process per poll would take a core.
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_head["dashboard"])
    done = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    # Every second: each poll costs the dashboard a GCS query, on the cores the job runs on.
    finished = lambda: (status := client.get_job_status(job_id)) in done and status  # noqa: E731
    final = wait_for(finished, timeout, job_id, every=1.0)
    logs = client.get_job_logs(job_id)
    assert final == JobStatus.SUCCEEDED, logs[-4000:]
    assert "run directory:" in logs
    return logs


def stop_process_groups(processes: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    """Stop `ray start --block` nodes (each its own process group) all at once: SIGTERM, a short
    grace, then SIGKILL. A graceful Ray stop waits on every idle worker (about 30 s on 2 cores) and
    nothing of a test's cluster is kept."""
    import signal

    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
    grace = time.time() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, grace - time.time()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)

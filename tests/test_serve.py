"""The HTTP endpoint over real HTTP on loopback: answers, every bad input, auth, concurrency, load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import FORM, start_server
from helpers import wav_bytes as wav

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    proc, url = start_server(
        [
            "--model",
            str(tiny_model_dir),
            "--dtype",
            "float32",
            "--token",
            TOKEN,
            "--max-body-mb",
            "1",
            "--max-audio-seconds",
            "10",
        ]
    )
    yield url
    proc.terminate()
    proc.wait(timeout=60)


def post(url: str, files=None, data=None, headers=AUTH, path="/v1/answer", **kwargs) -> httpx.Response:
    return httpx.post(f"{url}{path}", files=files, data=data, headers=headers, timeout=120, **kwargs)


def assert_still_serving(url: str) -> None:
    response = post(url, files={"audio": ("a.wav", wav())}, data=FORM)
    assert response.status_code == 200, response.text


def test_answers_with_the_policy_version_and_timing(server):
    response = post(server, files={"audio": ("clip.wav", wav())}, data=FORM)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"answer", "valid", "response", "policy_version", "step", "checkpoint", "timing"}
    assert body["valid"] == (body["answer"] in ("high", "low")) and body["policy_version"] == 0
    assert body["timing"]["total_s"] >= body["timing"]["generate_s"] > 0


def test_sampling_several_answers(server):
    response = post(
        server,
        files={"audio": ("clip.flac", wav(rate=44100))},
        data={**FORM, "temperature": "1.0", "n": "4", "max_tokens": "8"},
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["samples"]) == 4


BAD_CASES = {
    "no file": (None, FORM, 400, "audio"),
    "empty file": ({"audio": ("empty.wav", b"")}, FORM, 400, "empty"),
    "not audio": (
        {"audio": ("notes.wav", b"just some text, not audio at all" * 20)},
        FORM,
        400,
        "cannot decode",
    ),
    "too long": ({"audio": ("long.wav", wav(seconds=11.0, rate=8000))}, FORM, 413, "longer than the 10 s"),
    "body too large": ({"audio": ("big.wav", os.urandom(1_300_000))}, FORM, 413, "byte limit"),
    "one choice": ({"audio": ("a.wav", wav())}, {**FORM, "choices": '["high"]'}, 400, "2 to 8"),
    "nine choices": (
        {"audio": ("a.wav", wav())},
        {**FORM, "choices": json.dumps(list("abcdefghi"))},
        400,
        "2 to 8",
    ),
    "duplicate choices": (
        {"audio": ("a.wav", wav())},
        {**FORM, "choices": '["high", "high"]'},
        400,
        "distinct",
    ),
    "long question": ({"audio": ("a.wav", wav())}, {**FORM, "question": "why? " * 600}, 400, "limit is 2000"),
    "malformed JSON": ({"audio": ("a.wav", wav())}, {**FORM, "choices": '["high", "low"'}, 400, "JSON list"),
    "choices not strings": (
        {"audio": ("a.wav", wav())},
        {**FORM, "choices": "[1, 2]"},
        400,
        "list of strings",
    ),
    "no question": ({"audio": ("a.wav", wav())}, {"choices": FORM["choices"]}, 400, "question"),
    "bad temperature": ({"audio": ("a.wav", wav())}, {**FORM, "temperature": "9"}, 400, "temperature"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server, case):
    files, data, status, message = BAD_CASES[case]
    response = post(server, files=files, data=data)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert_still_serving(server)


def test_wrong_content_type_is_415(server):
    response = httpx.post(f"{server}/v1/answer", json={"question": "Q?"}, headers=AUTH)
    assert response.status_code == 415 and "multipart/form-data" in response.json()["detail"]
    assert_still_serving(server)


def test_the_token_guards_every_route_but_healthz(server):
    for path in ("/v1/policy", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(f"{server}{path}").status_code == 401
        assert httpx.get(f"{server}{path}", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{server}{path}", headers=AUTH).status_code == 200
    assert post(server, files={"audio": ("a.wav", wav())}, data=FORM, headers={}).status_code == 401
    assert httpx.get(f"{server}/healthz").status_code == 200


def test_batch_of_questions_about_one_clip(server):
    questions = [
        {"question": "Is the tone high or low?", "choices": ["high", "low"]},
        {"question": "How many beeps are there?", "choices": ["one", "two", "three"]},
    ]
    response = post(
        server,
        path="/v1/answer:batch",
        files={"audio": ("a.wav", wav())},
        data={"questions": json.dumps(questions), "max_tokens": "8"},
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["answers"]) == 2
    bad = post(
        server,
        path="/v1/answer:batch",
        files={"audio": ("a.wav", wav())},
        data={"questions": json.dumps([{"question": "Q?", "choices": ["x"]}])},
    )
    assert bad.status_code == 400 and "questions[0]" in bad.json()["detail"]


def test_concurrent_requests_are_batched_not_serialised(server):
    def one(i: int) -> int:
        return post(
            server,
            files={"audio": ("a.wav", wav(freq=300 + 50 * i))},
            data={**FORM, "max_tokens": "64", "temperature": "1.0"},
        ).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(one, range(32)))
    assert statuses == [200] * 32
    policy = httpx.get(f"{server}/v1/policy", headers=AUTH).json()
    assert policy["max_in_flight"] > 1  # several requests were inside the engine at once
    metrics = httpx.get(f"{server}/metrics", headers=AUTH).text
    assert 'audio_grpo_serve_requests_total{route="/v1/answer",status="200"}' in metrics
    assert "/v1/answer" in httpx.get(f"{server}/openapi.json", headers=AUTH).json()["paths"]


def test_load_benchmark_runs(server, tmp_path):
    out = tmp_path / "load.json"
    result = subprocess.run(
        [
            sys.executable,
            "bench/http_load.py",
            "--url",
            server,
            "--token",
            TOKEN,
            "--concurrency",
            "1,4",
            "--requests",
            "8",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    levels = json.loads(out.read_text())["levels"]
    assert [lvl["concurrency"] for lvl in levels] == [1, 4]
    assert all(lvl["requests_per_s"] > 0 and lvl["p99_s"] >= lvl["p50_s"] for lvl in levels)


def test_the_openai_client_chats_with_audio_streamed_or_not(server):
    """The official `openai` package, unchanged, over loopback: audio in, policy version out."""
    import base64

    import openai

    client = openai.OpenAI(base_url=f"{server}/v1", api_key=TOKEN, max_retries=0)
    clip = base64.b64encode(wav()).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
                {"type": "text", "text": "Is the tone high or low? Choices: high, low."},
            ],
        }
    ]
    ask = {"model": "audio-grpo", "messages": messages, "max_tokens": 8, "temperature": 0}
    raw = client.chat.completions.with_raw_response.create(**ask)
    assert raw.headers["x-policy-version"] == "0"
    completion = raw.parse()
    text = completion.choices[0].message.content
    assert text and completion.model_extra["policy_version"] == 0
    assert completion.usage.prompt_tokens > 20  # the audio's placeholder tokens are in the prompt
    streamed = "".join(
        c.choices[0].delta.content or "" for c in client.chat.completions.create(**ask, stream=True)
    )
    assert streamed == text  # greedy: the same answer, streamed
    assert [m.id for m in client.models.list()] == ["audio-grpo"]

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).chat.completions.create(**ask)
    corrupt = [
        {
            **messages[0],
            "content": [{"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv", "format": "wav"}}],
        }
    ]
    with pytest.raises(openai.BadRequestError, match="input_audio"):
        client.chat.completions.create(**{**ask, "messages": corrupt})
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(**{**ask, "max_tokens": 10_000})
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(**{**ask, "model": "gpt-4o"})
    assert_still_serving(server)


def test_a_clip_without_choices_is_captioned_on_both_routes(server):
    """A caption request is a clip and no choices (the question may be left out too); the OpenAI
    route takes the caption prompt as text, as training renders it."""
    import base64

    import openai

    from rollout.prompt import prompt_text
    from rollout.question import CAPTION_QUESTION

    response = post(server, files={"audio": ("a.wav", wav())}, data={"max_tokens": "16"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "caption" and body["valid"] == bool(body["answer"].strip())
    asked = post(
        server, files={"audio": ("a.wav", wav())}, data={"question": CAPTION_QUESTION, "choices": "[]"}
    )
    assert asked.status_code == 200 and asked.json()["task"] == "caption"
    batch = post(
        server,
        path="/v1/answer:batch",
        files={"audio": ("a.wav", wav())},
        data={
            "questions": json.dumps(
                [{"choices": []}, {"question": "High or low?", "choices": ["high", "low"]}]
            )
        },
    )
    assert batch.status_code == 200, batch.text
    assert [a["task"] for a in batch.json()["answers"]] == ["caption", "choice"]
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=TOKEN, max_retries=0)
    clip = base64.b64encode(wav()).decode()
    content = [
        {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
        {"type": "text", "text": prompt_text(CAPTION_QUESTION, [])},
    ]
    completion = client.chat.completions.create(
        model="audio-grpo", messages=[{"role": "user", "content": content}], max_tokens=16, temperature=0
    )
    assert completion.choices[0].message.content and completion.model_extra["policy_version"] == 0


def test_the_live_endpoint_names_a_taken_port_and_finds_a_free_one():
    """`train --serve` binds its own socket: a taken port is a clear error at once (uvicorn's own bind
    failure exits the actor's event loop and the run would wait out its deadline); 0 picks one."""
    import socket

    from deploy.live import bind_socket

    taken = bind_socket("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}.*--serve-port"):
            bind_socket("127.0.0.1", port)
        free = bind_socket("127.0.0.1", 0)
        assert free.getsockname()[1] not in (0, port)
        with socket.create_connection(("127.0.0.1", free.getsockname()[1]), timeout=5):
            pass  # it listens
        free.close()
    finally:
        taken.close()

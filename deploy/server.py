"""The HTTP endpoint: FastAPI over the served policy (`deploy/policy.py`).

Routes: POST /v1/answer, POST /v1/answer:batch, GET /v1/policy, GET /healthz, GET /metrics, the
OpenAI-compatible POST /v1/chat/completions and GET /v1/models (`deploy/openai_route.py`), and the
OpenAPI docs (/docs, /openapi.json). Every bad input gets a 4xx with a message that names the
problem; the same audio loader, prompt builder and answer parser as training are used.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from deploy.openai_route import add_openai_routes, chat_serving
from rollout.audio import AudioError, AudioTooLongError, load_audio
from rollout.question import CAPTION_QUESTION, ChoiceError, validate_choices

log = logging.getLogger("audio_grpo.serve")


@dataclass
class ServeLimits:
    max_body_bytes: int = 5 * 1024 * 1024
    max_audio_seconds: float = 30.0
    max_question_chars: int = 2000
    max_choice_chars: int = 500
    max_tokens: int = 512
    max_n: int = 16
    max_batch_questions: int = 32


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; FastAPI turns it into the 413 response."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the {limit} byte limit")


class BodyLimitMiddleware:
    """Refuse bodies over the limit, by Content-Length up front and by counting streamed bytes."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)

    async def _too_large(self, send):
        body = json.dumps({"detail": f"request body is larger than the {self.max_bytes} byte limit"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def parse_choices(raw: Any, limits: ServeLimits) -> list[str]:
    """2 to 8 distinct, non-empty strings, given as a JSON list (a parsed list is accepted too);
    none (absent, empty, or []) is a caption request."""
    if raw is None or raw == "" or raw == []:
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise HTTPException(
                400, f"choices must be a JSON list of strings: {err.msg} at position {err.pos}"
            ) from None
    if raw == []:
        return []
    try:
        validate_choices(raw)
    except ChoiceError as err:
        raise HTTPException(400, str(err)) from None
    if any(len(c) > limits.max_choice_chars for c in raw):
        raise HTTPException(400, f"a choice is longer than {limits.max_choice_chars} characters")
    return raw


def check_question(question: Any, limits: ServeLimits, choices: list[str] | None = None) -> str:
    """The question as given; a caption request (no choices) may leave it out (CAPTION_QUESTION)."""
    if question is None and choices == []:
        return CAPTION_QUESTION
    if not isinstance(question, str) or not question.strip():
        raise HTTPException(400, "question must be a non-empty string")
    if len(question) > limits.max_question_chars:
        raise HTTPException(
            400, f"question is {len(question)} characters; the limit is {limits.max_question_chars}"
        )
    return question


def create_app(engine_factory, limits: ServeLimits | None = None, token: str | None = None) -> FastAPI:
    """`engine_factory()` returns a started PolicyEngine (called once, at start-up)."""
    limits = limits or ServeLimits()
    registry = CollectorRegistry()
    requests = Counter("audio_grpo_serve_requests", "HTTP requests", ["route", "status"], registry=registry)
    latency = Histogram("audio_grpo_serve_latency_seconds", "answer latency", ["route"], registry=registry)
    version_gauge = Gauge("audio_grpo_serve_policy_version", "served policy version", registry=registry)
    state: dict[str, Any] = {"max_in_flight": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = engine_factory()
        state["engine"] = engine
        state["openai"] = chat_serving(engine)
        follower = asyncio.create_task(engine.follow()) if engine.run_dir else None
        yield
        if follower:
            follower.cancel()
        engine.shutdown()

    app = FastAPI(
        title="audio-grpo",
        version="0.1.0",
        lifespan=lifespan,
        description="Answers audio questions with the current GRPO policy (Qwen2-Audio).",
    )

    @app.middleware("http")
    async def guard(request: Request, call_next):
        route = request.url.path
        if token and route != "/healthz":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                requests.labels(route, "401").inc()
                return JSONResponse(
                    {"detail": "missing or wrong bearer token"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        if request.method == "POST" and route.startswith("/v1/answer"):
            kind = request.headers.get("content-type", "")
            # A form without its file arrives url-encoded: let it through to say what is missing.
            if not kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
                requests.labels(route, "415").inc()
                return JSONResponse(
                    {"detail": f"expected multipart/form-data, got {kind or 'no content type'}"},
                    status_code=415,
                )
        response = await call_next(request)
        requests.labels(route, str(response.status_code)).inc()
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=400)

    async def decode(upload: UploadFile) -> Any:
        data = await upload.read()
        if not data:
            raise HTTPException(400, f"audio file {upload.filename!r} is empty")
        try:
            return await asyncio.to_thread(
                load_audio, data, max_seconds=limits.max_audio_seconds, on_long="error"
            )
        except AudioTooLongError as err:
            raise HTTPException(413, f"audio {upload.filename!r}: {err.reason}") from None
        except AudioError as err:
            raise HTTPException(400, f"audio {upload.filename!r}: {err.reason}") from None

    def check_sampling(temperature: float, max_tokens: int | None, n: int) -> None:
        """Validate a request's sampling (no `max_tokens`: the policy's own budget applies)."""
        if not 0.0 <= temperature <= 2.0:
            raise HTTPException(400, "temperature must be between 0 and 2")
        if max_tokens is not None and not 1 <= max_tokens <= limits.max_tokens:
            raise HTTPException(400, f"max_tokens must be between 1 and {limits.max_tokens}")
        if not 1 <= n <= limits.max_n:
            raise HTTPException(400, f"n must be between 1 and {limits.max_n}")

    async def run(
        wave, question: str, choices: list[str], temperature: float, max_tokens: int | None, n: int
    ):
        engine = state["engine"]
        state["max_in_flight"] = max(state["max_in_flight"], engine.in_flight + 1)
        try:
            return await engine.answer(
                wave, question, choices, temperature=temperature, max_tokens=max_tokens, n=n
            )
        except Exception as err:
            log.exception("generation failed")
            if not engine.healthy:  # the engine process is gone: say so, and /healthz now fails too
                raise HTTPException(503, "the policy engine has stopped; see the server log") from err
            raise HTTPException(500, f"generation failed: {type(err).__name__}: {err}") from err

    @app.post("/v1/answer", summary="Answer one question about an audio clip, or caption it")
    async def answer(
        audio: UploadFile = File(..., description="the clip: WAV, FLAC, OGG, MP3, ..."),
        question: str | None = Form(None, description="optional for a caption (no choices)"),
        choices: str | None = Form(None, description='JSON list, e.g. ["a", "b"]; none: a caption'),
        temperature: float = Form(0.0),
        max_tokens: int | None = Form(None, description="default: the policy's sampling.max_tokens"),
        n: int = Form(1),
    ):
        started = time.perf_counter()
        parsed = parse_choices(choices, limits)
        question = check_question(question, limits, parsed)
        check_sampling(temperature, max_tokens, n)
        wave = await decode(audio)
        result = await run(wave, question, parsed, temperature, max_tokens, n)
        result["timing"]["total_s"] = time.perf_counter() - started
        latency.labels("/v1/answer").observe(result["timing"]["total_s"])
        return {k: v for k, v in result.items() if v is not None}

    @app.post("/v1/answer:batch", summary="Answer several questions about one audio clip")
    async def answer_batch(
        audio: UploadFile = File(...),
        questions: str = Form(..., description='JSON list of {"question", "choices"}'),
        temperature: float = Form(0.0),
        max_tokens: int | None = Form(None, description="default: the policy's sampling.max_tokens"),
    ):
        started = time.perf_counter()
        try:
            items = json.loads(questions)
        except json.JSONDecodeError as err:
            raise HTTPException(
                400, f"questions must be a JSON list: {err.msg} at position {err.pos}"
            ) from None
        if not isinstance(items, list) or not 1 <= len(items) <= limits.max_batch_questions:
            raise HTTPException(
                400, f"questions must be a JSON list of 1 to {limits.max_batch_questions} objects"
            )
        parsed = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise HTTPException(400, f"questions[{i}] must be an object with question and choices")
            try:
                choices = parse_choices(item.get("choices"), limits)
                parsed.append((check_question(item.get("question"), limits, choices), choices))
            except HTTPException as err:
                raise HTTPException(400, f"questions[{i}]: {err.detail}") from None
        check_sampling(temperature, max_tokens, 1)
        wave = await decode(audio)
        results = await asyncio.gather(*(run(wave, q, c, temperature, max_tokens, 1) for q, c in parsed))
        total = time.perf_counter() - started
        latency.labels("/v1/answer:batch").observe(total)
        return {
            "answers": [{k: v for k, v in r.items() if v is not None} for r in results],
            "timing": {"total_s": total},
        }

    @app.get("/v1/policy", summary="The served policy: model, version, step, checkpoint")
    async def policy():
        engine = state["engine"]
        return {
            **vars(engine.info),
            # How answers are asked and decoded (a followed run's own settings).
            "thinking": engine.prompt.thinking,
            "dtype": engine.engine_config.dtype,
            "max_model_len": engine.engine_config.max_model_len,
            "max_tokens": engine.sampling.max_tokens,  # a request's default completion budget
            "in_flight": engine.in_flight,
            "max_in_flight": state["max_in_flight"],
        }

    @app.get("/healthz", summary="Liveness (no token needed): 503 once the engine has died")
    async def healthz():
        if not state["engine"].healthy:
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics():
        version_gauge.set(state["engine"].info.version)
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    add_openai_routes(app, state, limits)
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    return app

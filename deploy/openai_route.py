"""An OpenAI-compatible route on the endpoint: `POST /v1/chat/completions` and `GET /v1/models`.

The official `openai` client works unchanged: messages with text and audio content parts
(`input_audio` with base64 data and its format, or `audio_url` as vLLM accepts it), streaming or
not. The request is rendered and answered by vLLM's own OpenAI serving layer (`OpenAIServingChat`
over the policy's AsyncLLM: the model's chat template, its audio handling, the OpenAI response and
stream formats); around it we keep what every route of ours has: the bearer token and body limit
(the app's middleware), our limits on tokens, samples, temperature and audio length, our audio
loader's clear 4xx for a bad clip, and the policy gate, so a request never runs across a weight
update. Each answer carries the policy version that produced it: the `X-Policy-Version` header,
and `policy_version` in a non-streamed body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from rollout.audio import AudioError, AudioTooLongError, load_audio

MODEL_NAME = "audio-grpo"  # the `model` clients name; any other is a 404 (vLLM's check)
# Qwen2-Audio's template tests `'audio' in content`, which vLLM's "openai" parts ({"type": "audio"})
# never satisfy: "string" has vLLM put the audio placeholder text into the message itself.
CONTENT_FORMAT = "string"


def chat_serving(policy) -> Any:
    """vLLM's OpenAI chat serving over the policy's AsyncLLM (built once, at start-up)."""
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.entrypoints.openai.models.protocol import BaseModelPath
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels
    from vllm.renderers.online_renderer import OnlineRenderer

    engine = policy.engine
    models = OpenAIServingModels(
        engine_client=engine, base_model_paths=[BaseModelPath(name=MODEL_NAME, model_path=policy.info.model)]
    )
    renderer = OnlineRenderer(
        model_config=engine.model_config,
        renderer=engine.renderer,
        request_logger=None,
        chat_template=None,
        chat_template_content_format=CONTENT_FORMAT,
        trust_request_chat_template=False,
        trust_request_mm_kwargs=False,
        enable_auto_tools=False,
        exclude_tools_when_tool_choice_none=False,
        tool_parser=None,
        tool_strict_level="auto",
        reasoning_parser="",
        default_chat_template_kwargs=None,
        log_error_stack=False,
    )
    chat = OpenAIServingChat(
        engine,
        models,
        "assistant",
        online_renderer=renderer,
        request_logger=None,
        chat_template=None,
        chat_template_content_format=CONTENT_FORMAT,
    )
    return models, chat


def _check_audio_parts(body: dict, max_seconds: float) -> None:
    """Decode every `input_audio` part with our loader: a clip that is corrupt, empty or too long
    gets our 400/413 before vLLM sees it."""
    for i, message in enumerate(body.get("messages") or []):
        parts = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(parts if isinstance(parts, list) else []):
            if not isinstance(part, dict) or part.get("type") != "input_audio":
                continue
            where = f"messages[{i}].content[{j}].input_audio"
            data = (part.get("input_audio") or {}).get("data") or ""
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise HTTPException(400, f"{where}.data is not valid base64") from None
            if not raw:
                raise HTTPException(400, f"{where}.data is empty")
            try:
                load_audio(raw, max_seconds=max_seconds, on_long="error")
            except AudioTooLongError as err:
                raise HTTPException(413, f"{where}: {err.reason}") from None
            except AudioError as err:
                raise HTTPException(400, f"{where}: {err.reason}") from None


def add_openai_routes(app: FastAPI, state: dict, limits) -> None:
    """`state["engine"]` is the PolicyEngine, `state["openai"]` what `chat_serving` returned."""

    @app.get("/v1/models", summary="OpenAI-compatible: the served model")
    async def models():
        listed = await state["openai"][0].show_available_models()
        return JSONResponse(listed.model_dump())

    @app.post("/v1/chat/completions", summary="OpenAI-compatible chat completions with audio input")
    async def chat_completions(raw: Request):
        try:
            return await _chat(raw)
        except HTTPException as err:  # OpenAI's error shape (its clients read error.message), and ours
            error = {"message": err.detail, "type": "invalid_request_error", "code": err.status_code}
            return JSONResponse({"error": error, "detail": err.detail}, status_code=err.status_code)

    async def _chat(raw: Request):
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import (
            ChatCompletionRequest,
            ChatCompletionResponse,
        )
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        try:
            body = await raw.json()
        except ValueError:
            raise HTTPException(
                400, "the body must be a JSON object (OpenAI's chat completion request)"
            ) from None
        if not isinstance(body, dict):
            raise HTTPException(400, "the body must be a JSON object (OpenAI's chat completion request)")
        try:
            request = ChatCompletionRequest.model_validate(body)
        except ValidationError as err:
            problems = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()]
            raise HTTPException(400, "; ".join(problems)[:2000]) from None
        budget = request.max_completion_tokens or request.max_tokens
        if budget is not None and not 1 <= budget <= limits.max_tokens:
            raise HTTPException(400, f"max_tokens must be between 1 and {limits.max_tokens}")
        if not 1 <= (request.n or 1) <= limits.max_n:
            raise HTTPException(400, f"n must be between 1 and {limits.max_n}")
        if request.temperature is not None and not 0.0 <= request.temperature <= 2.0:
            raise HTTPException(400, "temperature must be between 0 and 2")
        await asyncio.to_thread(_check_audio_parts, body, limits.max_audio_seconds)

        policy = state["engine"]
        info = await policy.admit()  # waits while a weight update is on
        try:
            result = await state["openai"][1].create_chat_completion(request, raw)
        except BaseException:
            policy.release()
            raise
        headers = {"X-Policy-Version": str(info.version)}
        if not isinstance(result, ErrorResponse | ChatCompletionResponse):  # a stream: gate held to its end

            async def stream():
                try:
                    async for chunk in result:
                        yield chunk
                finally:
                    policy.release()

            return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
        policy.release()
        if isinstance(result, ErrorResponse):
            return JSONResponse(result.model_dump(), status_code=result.error.code, headers=headers)
        return JSONResponse({**result.model_dump(), "policy_version": info.version}, headers=headers)

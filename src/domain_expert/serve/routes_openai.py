"""The OpenAI routes: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions and POST /v1/completions (whole,
or streamed as server-sent events; n choices; log-probs; echo and max_tokens 0 to score a text)."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from domain_expert.serve.api_errors import APIError
from domain_expert.serve.engine import (
    Engine,
    EngineError,
    EngineUnavailableError,
    GenerationRequest,
    GenerationResult,
    QueueFullError,
    UnknownModelError,
)
from domain_expert.serve.responses import chat_completion_body, completion_body
from domain_expert.serve.schemas import ChatCompletionRequest, CompletionRequest
from domain_expert.serve.sse import chat_sse, completion_sse, merge, sse_response
from domain_expert.serve.validation import RequestValidator, unknown_model


def openai_router(validator: RequestValidator) -> APIRouter:
    engine = validator.engine
    router = APIRouter()
    created = int(time.time())  # the models' "created": when this server started

    def model_card(model_id: str) -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "domain-expert"}

    @router.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card(m) for m in engine.model_ids()]}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        if model_id not in engine.model_ids():
            raise unknown_model(engine, model_id)
        return model_card(model_id)

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        return await chat_completion(validator, body)

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest):
        return await completion(validator, body)

    return router


async def chat_completion(validator: RequestValidator, body: ChatCompletionRequest) -> dict | StreamingResponse:
    """POST /v1/chat/completions (and SageMaker's /invocations)."""
    engine = validator.engine
    reqs = validator.chat(body)
    cid = "chatcmpl-" + uuid.uuid4().hex
    now = int(time.time())
    if body.stream:
        streams = await _open_streams(engine, reqs, body.model)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(chat_sse(merge(streams), len(streams), cid, now, body.model, include_usage))
    results = await _generate_all(engine, reqs, body.model)
    return chat_completion_body(cid, now, body.model, results, bool(body.logprobs))


async def completion(validator: RequestValidator, body: CompletionRequest) -> dict | StreamingResponse:
    """POST /v1/completions."""
    engine = validator.engine
    reqs = validator.completions(body)
    cid = "cmpl-" + uuid.uuid4().hex
    now = int(time.time())
    if body.stream:
        streams = await _open_streams(engine, reqs, body.model)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        echo = [r.prompt if r.echo else "" for r in reqs]
        return sse_response(completion_sse(merge(streams), echo, body.n or 1, cid, now, body.model, include_usage))
    results = await _generate_all(engine, reqs, body.model)
    return completion_body(cid, now, body.model, reqs, results, body.n or 1)


async def _generate_all(engine: Engine, reqs: list[GenerationRequest], model: str) -> list[GenerationResult]:
    try:
        async with asyncio.TaskGroup() as tg:  # one refused (429) cancels the others
            tasks = [tg.create_task(engine.generate(r)) for r in reqs]
    except* EngineError as group:
        raise _engine_error(engine, group.exceptions[0], model) from None
    return [t.result() for t in tasks]


async def _open_streams(engine: Engine, reqs: list[GenerationRequest], model: str) -> list:
    """Admit every choice's stream before the response starts, so that a refusal is still an HTTP status."""
    streams = []
    try:
        for r in reqs:
            streams.append(await engine.stream(r))
    except EngineError as e:
        for st in streams:
            await st.aclose()
        raise _engine_error(engine, e, model) from None
    return streams


def _engine_error(engine: Engine, e: EngineError, model: str) -> APIError:
    if isinstance(e, QueueFullError):
        return APIError(429, str(e), type="rate_limit_error", code="rate_limit_exceeded")
    if isinstance(e, EngineUnavailableError):
        return APIError(503, str(e), type="server_error", code="engine_unavailable")
    if isinstance(e, UnknownModelError):
        return unknown_model(engine, model)
    return APIError(400, str(e))

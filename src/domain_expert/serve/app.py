"""The OpenAI-compatible HTTP API (FastAPI) over an `Engine`.

Routes: GET /health (always open), GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions (whole or streamed
as server-sent events ending with `data: [DONE]`). Every error is OpenAI's JSON shape
`{"error": {"message", "type", "param", "code"}}`. Request bodies are validated strictly (unknown fields are refused),
limited in size, and no request field is ever used as a file path: model names are only looked up in the engine.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain_expert.serve.engine import (
    Engine,
    EngineError,
    GenerationRequest,
    GenerationResult,
    QueueFullError,
    UnknownModelError,
)

DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_MAX_PROMPT_TOKENS = 4096
DEFAULT_MAX_TOKENS_LIMIT = 2048
OPEN_PATHS = {"/health", "/ping"}  # liveness probes (ours and SageMaker's) answer without a key


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(message: str, type: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --- request models --------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: str
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[ChatMessage]
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None


# --- middleware: API key and body size (plain ASGI, so it also guards unknown routes and streamed bodies) -------


class GuardMiddleware:
    def __init__(self, app, *, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            body = error_body("missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
            resp = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await resp(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_large = error_body(f"request body over {self.max_body_bytes} bytes", code="request_too_large")
        if length is not None:
            try:
                if int(length) > self.max_body_bytes:
                    return await JSONResponse(too_large, status_code=413)(scope, receive, send)
            except ValueError:
                return await JSONResponse(error_body("bad Content-Length"), status_code=400)(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # Buffer the body (bounded), then replay it: a chunked body without Content-Length is limited too.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return await JSONResponse(too_large, status_code=413)(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _authorized(self, scope) -> bool:
        for key, value in scope.get("headers") or []:
            if key == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
        return False


# --- the app ---------------------------------------------------------------------------------------------------


def create_app(
    engine: Engine,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
) -> FastAPI:
    app = FastAPI(title="domain-expert", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.add_middleware(GuardMiddleware, api_key=api_key, max_body_bytes=max_body_bytes)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body("request body is not valid JSON", code="invalid_json"), 400)
        if first.get("type") == "extra_forbidden":
            msg = f"unknown field '{'.'.join(loc)}'"
        else:
            msg = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(msg, param=".".join(loc) or None, code=first.get("type")), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), code=str(exc.status_code)), exc.status_code)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ping")
    async def ping():
        """SageMaker hosting contract: the platform polls GET /ping for health."""
        return {"status": "ok"}

    def _model_card(model_id: str) -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "domain-expert"}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [_model_card(m) for m in engine.model_ids()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        if model_id not in engine.model_ids():
            raise _unknown_model(model_id)
        return _model_card(model_id)

    def _unknown_model(model: str) -> APIError:
        return APIError(
            404,
            f"model '{model}' not found; available: {', '.join(engine.model_ids())}",
            param="model",
            code="model_not_found",
        )

    def _to_generation(body: ChatCompletionRequest) -> tuple[GenerationRequest, int]:
        if body.model not in engine.model_ids():
            raise _unknown_model(body.model)
        if body.n not in (None, 1):
            raise APIError(400, "n > 1 is not supported yet: send one request per completion", param="n")
        messages = _check_messages(body.messages)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "stop: up to 4 non-empty strings", param="stop")
        try:
            prompt_tokens = engine.count_prompt_tokens(body.model, messages)
        except UnknownModelError:
            raise _unknown_model(body.model) from None
        if prompt_tokens > max_prompt_tokens:
            raise APIError(
                400,
                f"prompt is {prompt_tokens} tokens, over this server's limit of {max_prompt_tokens}",
                param="messages",
                code="context_length_exceeded",
            )
        asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        if asked is not None and asked > max_tokens_limit:
            raise APIError(400, f"{param} is {asked}, over this server's limit of {max_tokens_limit}", param=param)
        room = None if engine.context_length is None else engine.context_length - prompt_tokens
        if room is not None and room < 1:
            raise APIError(
                400,
                f"prompt is {prompt_tokens} tokens and leaves no room in the model's {engine.context_length}",
                param="messages",
                code="context_length_exceeded",
            )
        if asked is not None and room is not None and asked > room:
            raise APIError(
                400,
                f"prompt ({prompt_tokens}) + {param} ({asked}) is over the model's context of {engine.context_length}",
                param=param,
                code="context_length_exceeded",
            )
        max_tokens = asked if asked is not None else min(max_tokens_limit, room if room is not None else 10**9)
        req = GenerationRequest(
            model=body.model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=stop,
            seed=body.seed,
        )
        return req, prompt_tokens

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        req, _ = _to_generation(body)
        cid = "chatcmpl-" + uuid.uuid4().hex
        now = int(time.time())
        if body.stream:
            try:
                chunks = await engine.stream(req)
            except EngineError as e:
                raise _engine_error(e, body.model) from None
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _sse(chunks, cid, now, body.model, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            result = await engine.generate(req)
        except EngineError as e:
            raise _engine_error(e, body.model) from None
        return {
            "id": cid,
            "object": "chat.completion",
            "created": now,
            "model": body.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "logprobs": None,
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": _usage(result),
        }

    @app.post("/invocations")
    async def invocations(body: ChatCompletionRequest):
        """SageMaker hosting contract: POST /invocations with the same body as /v1/chat/completions, so the server
        runs unchanged as a SageMaker endpoint container (as in the reference project)."""
        return await chat_completions(body)

    def _engine_error(e: EngineError, model: str) -> APIError:
        if isinstance(e, QueueFullError):
            return APIError(429, str(e), type="rate_limit_error", code="rate_limit_exceeded")
        if isinstance(e, UnknownModelError):
            return _unknown_model(model)
        return APIError(400, str(e))

    return app


def _check_messages(messages: list[ChatMessage]) -> list[dict]:
    """An optional leading system message, then user/assistant turns alternating, starting and ending with user:
    the shape the model was trained on (PromptFormat.render_messages)."""
    if not messages:
        raise APIError(400, "messages must not be empty", param="messages")
    out = []
    for i, m in enumerate(messages):
        if m.role not in ("system", "user", "assistant"):
            raise APIError(
                400, f"messages[{i}].role '{m.role}' is not supported: use system, user or assistant", param="messages"
            )
        out.append({"role": m.role, "content": m.text()})
    turns = out[1:] if out[0]["role"] == "system" else out
    if not turns:
        raise APIError(400, "messages need at least one user message", param="messages")
    offset = len(out) - len(turns)
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise APIError(
                400,
                f"messages[{i + offset}].role is '{m['role']}', expected '{want}': after an optional first system "
                "message, user and assistant turns alternate",
                param="messages",
            )
    if turns[-1]["role"] != "user":
        raise APIError(400, "the last message must be from the user", param="messages")
    return out


def _usage(result: GenerationResult) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


async def _sse(chunks, cid: str, created: int, model: str, include_usage: bool):
    def event(choices: list, usage=None, with_usage=False) -> str:
        data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
        if with_usage:
            data["usage"] = usage
        return f"data: {json.dumps(data)}\n\n"

    def choice(delta: dict, finish=None) -> list:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    try:
        yield event(choice({"role": "assistant", "content": ""}), with_usage=include_usage)
        async for chunk in chunks:
            if chunk.text:
                yield event(choice({"content": chunk.text}), with_usage=include_usage)
            if chunk.result is not None:
                yield event(choice({}, chunk.result.finish_reason), with_usage=include_usage)
                if include_usage:
                    yield event([], _usage(chunk.result), with_usage=True)
        yield "data: [DONE]\n\n"
    except Exception as e:  # headers are sent: report in-band, as OpenAI does
        yield f"data: {json.dumps(error_body(f'generation failed: {e}', type='server_error'))}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        await chunks.aclose()

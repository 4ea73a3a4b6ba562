"""The OpenAI-compatible HTTP API (FastAPI) over an `Engine`.

Routes: GET / (the chat page, open without a key; its API calls need one), GET /health and GET /ping (always open),
GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions and POST /v1/completions (whole, or streamed as
server-sent events ending with `data: [DONE]`; n choices; log-probs; echo and max_tokens 0 to score a text),
POST /invocations (SageMaker: the chat body), GET /metrics (Prometheus). Every error is OpenAI's JSON shape
`{"error": {"message", "type", "param", "code"}}`. Request bodies are validated strictly (unknown fields are refused),
limited in size, and no request field is ever used as a file path: model names are only looked up in the engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
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
from domain_expert.serve.page import PAGE_PATH, add_chat_page

DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_MAX_PROMPT_TOKENS = 4096
DEFAULT_MAX_TOKENS_LIMIT = 2048
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat; completions allows 5, we allow the same 20 for both
MAX_CHOICES = 16  # n (times the number of prompts for /v1/completions)
# liveness probes (ours and SageMaker's) answer without a key, and so does the chat page (static; its API calls need it)
OPEN_PATHS = {"/health", "/ping", PAGE_PATH}


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
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    user: str | None = None


class CompletionRequest(_Strict):
    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=0)  # OpenAI's default; 0 (with echo) scores the prompt
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool | None = False
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
    cors_origins: list[str] | None = None,
) -> FastAPI:
    from domain_expert.serve.metrics import MetricsMiddleware, ServerMetrics

    app = FastAPI(title="domain-expert", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    metrics = ServerMetrics()
    metrics.watch(engine)
    if hasattr(engine, "metrics"):
        engine.metrics = metrics
    app.state.metrics = metrics
    # added last = outermost: metrics see every request (401/413 too); CORS must answer preflights before auth
    app.add_middleware(GuardMiddleware, api_key=api_key, max_body_bytes=max_body_bytes)
    if cors_origins:  # off unless configured: browsers then refuse cross-origin calls to this server
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    add_chat_page(app)
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

    def _room(model: str, prompt_tokens: int, asked: int | None, param: str, prompt_param: str) -> int:
        """Check prompt and completion lengths against the server's limits and the model's context; return the
        max_tokens to use."""
        if prompt_tokens > max_prompt_tokens:
            raise APIError(
                400,
                f"prompt is {prompt_tokens} tokens, over this server's limit of {max_prompt_tokens}",
                param=prompt_param,
                code="context_length_exceeded",
            )
        if asked is not None and asked > max_tokens_limit:
            raise APIError(400, f"{param} is {asked}, over this server's limit of {max_tokens_limit}", param=param)
        room = None if engine.context_length is None else engine.context_length - prompt_tokens
        if room is not None and room < 1:
            raise APIError(
                400,
                f"prompt is {prompt_tokens} tokens and leaves no room in the model's {engine.context_length}",
                param=prompt_param,
                code="context_length_exceeded",
            )
        if asked is not None and room is not None and asked > room:
            raise APIError(
                400,
                f"prompt ({prompt_tokens}) + {param} ({asked}) is over the model's context of {engine.context_length}",
                param=param,
                code="context_length_exceeded",
            )
        return asked if asked is not None else min(max_tokens_limit, room if room is not None else 10**9)

    def _common(body) -> tuple[list[str], int]:
        if body.model not in engine.model_ids():
            raise _unknown_model(body.model)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "stop: up to 4 non-empty strings", param="stop")
        n = body.n or 1
        if n > MAX_CHOICES:
            raise APIError(400, f"n is {n}, over this server's limit of {MAX_CHOICES}", param="n")
        # `logprobs: 0` (completions: the chosen token's only) asks too; `0 in (None, False)` would let it through
        if body.stream and body.logprobs is not None and body.logprobs is not False:
            raise APIError(400, "logprobs are returned only without streaming: set stream false", param="logprobs")
        return stop, n

    def _count(model: str, prompt) -> int:
        try:
            return engine.count_prompt_tokens(model, prompt)
        except UnknownModelError:
            raise _unknown_model(model) from None

    def _copies(req: GenerationRequest, n: int) -> list[GenerationRequest]:
        # n samples must differ: with a seed, each choice gets its own (seed, seed+1, ...), still reproducible
        return [
            dataclasses.replace(req, seed=None if req.seed is None else req.seed + i) if i else req for i in range(n)
        ]

    def _to_generation(body: ChatCompletionRequest) -> list[GenerationRequest]:
        stop, n = _common(body)
        messages = _check_messages(body.messages)
        prompt_tokens = _count(body.model, messages)
        asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        req = GenerationRequest(
            model=body.model,
            messages=messages,
            max_tokens=_room(body.model, prompt_tokens, asked, param, "messages"),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=stop,
            seed=body.seed,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        )
        return _copies(req, n)

    def _to_completions(body: CompletionRequest) -> list[GenerationRequest]:
        stop, n = _common(body)
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts or len(prompts) * n > MAX_CHOICES:
            raise APIError(400, f"prompt: 1 to {MAX_CHOICES // n} prompts (times n) per request", param="prompt")
        if body.max_tokens == 0 and not body.echo:
            raise APIError(400, "max_tokens 0 scores the prompt: set echo true (and logprobs)", param="max_tokens")
        reqs = []
        for i, prompt in enumerate(prompts):
            where = "prompt" if isinstance(body.prompt, str) else f"prompt[{i}]"
            if not prompt:
                raise APIError(400, f"{where} is empty", param="prompt")
            prompt_tokens = _count(body.model, prompt)
            req = GenerationRequest(
                model=body.model,
                messages=[],
                prompt=prompt,
                max_tokens=_room(body.model, prompt_tokens, body.max_tokens, "max_tokens", where),
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                stop=stop,
                seed=body.seed,
                logprobs=body.logprobs,
                echo=bool(body.echo),
            )
            reqs.extend(_copies(req, n))
        return reqs

    async def _generate_all(reqs: list[GenerationRequest], model: str) -> list[GenerationResult]:
        try:
            async with asyncio.TaskGroup() as tg:  # one refused (429) cancels the others
                tasks = [tg.create_task(engine.generate(r)) for r in reqs]
        except* EngineError as group:
            raise _engine_error(group.exceptions[0], model) from None
        return [t.result() for t in tasks]

    async def _open_streams(reqs: list[GenerationRequest], model: str) -> list:
        streams = []
        try:
            for r in reqs:
                streams.append(await engine.stream(r))
        except EngineError as e:
            for st in streams:
                await st.aclose()
            raise _engine_error(e, model) from None
        return streams

    def _sse_response(gen) -> StreamingResponse:
        return StreamingResponse(
            gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        reqs = _to_generation(body)
        cid = "chatcmpl-" + uuid.uuid4().hex
        now = int(time.time())
        if body.stream:
            streams = await _open_streams(reqs, body.model)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse_response(_chat_sse(_merge(streams), len(streams), cid, now, body.model, include_usage))
        results = await _generate_all(reqs, body.model)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": now,
            "model": body.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": r.text},
                    "logprobs": _chat_logprobs(r) if body.logprobs else None,
                    "finish_reason": r.finish_reason,
                }
                for i, r in enumerate(results)
            ],
            "usage": _usage(results, len(results)),
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        reqs = _to_completions(body)
        cid = "cmpl-" + uuid.uuid4().hex
        now = int(time.time())
        if body.stream:
            streams = await _open_streams(reqs, body.model)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            echo = [r.prompt if r.echo else "" for r in reqs]
            events = _completion_sse(_merge(streams), echo, body.n or 1, cid, now, body.model, include_usage)
            return _sse_response(events)
        results = await _generate_all(reqs, body.model)
        choices = []
        for i, (req, r) in enumerate(zip(reqs, results, strict=True)):
            text = (req.prompt + r.text) if req.echo else r.text
            lp = None
            if req.logprobs is not None:
                lp = _completion_logprobs(r, req.prompt if req.echo else None)
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": r.finish_reason})
        return {
            "id": cid,
            "object": "text_completion",
            "created": now,
            "model": body.model,
            "system_fingerprint": None,
            "choices": choices,
            "usage": _usage(results, body.n or 1),
        }

    @app.get("/metrics")
    async def prometheus_metrics():
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

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


def _usage(results: list[GenerationResult], n: int = 1) -> dict:
    # the n choices of a prompt are adjacent and share it: count each prompt once, as OpenAI does
    prompt = sum(r.prompt_tokens for r in results[::n])
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_logprobs(r: GenerationResult) -> dict:
    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [
            {**entry(t.token, t.logprob), "top_logprobs": [entry(tok, lp) for tok, lp in t.top]}
            for t in (r.logprobs or [])
        ]
    }


def _completion_logprobs(r: GenerationResult, echo_prompt: str | None) -> dict:
    """The legacy completions shape: parallel lists tokens / token_logprobs / top_logprobs / text_offset."""
    rows = []
    shift = 0
    if echo_prompt is not None:
        rows.extend(r.prompt_logprobs or [])
        shift = len(echo_prompt)
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for i, t in enumerate(rows + list(r.logprobs or [])):
        out["tokens"].append(t.token)
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append(None if t.logprob is None else dict(t.top))
        out["text_offset"].append(t.offset + (shift if i >= len(rows) else 0))
    return out


async def _merge(streams: list):
    """Interleave several engine streams as (choice index, chunk) in arrival order; closing it closes them all."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i, st):
        try:
            async for chunk in st:
                await queue.put((i, chunk, None))
        except Exception as e:
            await queue.put((i, None, e))
        finally:
            await queue.put((i, None, None))

    tasks = [asyncio.create_task(pump(i, st)) for i, st in enumerate(streams)]
    open_ = len(streams)
    try:
        while open_:
            i, chunk, err = await queue.get()
            if err is not None:
                raise err
            if chunk is None:
                open_ -= 1
                continue
            yield i, chunk
    finally:
        for t in tasks:
            t.cancel()
        for st in streams:
            await st.aclose()


async def _events(merged, make_event, usage_event, include_usage: bool, n: int, per_prompt: int):
    """Shared SSE loop: per-choice events, then usage (if asked) and [DONE]; errors after the headers go in-band."""
    results: dict[int, GenerationResult] = {}
    try:
        async for i, chunk in merged:
            for event in make_event(i, chunk):
                yield event
            if chunk.result is not None:
                results[i] = chunk.result
        if include_usage and len(results) == n:
            yield usage_event(_usage([results[i] for i in sorted(results)], per_prompt))
        yield "data: [DONE]\n\n"
    except Exception as e:  # headers are sent: report in-band, as OpenAI does
        yield f"data: {json.dumps(error_body(f'generation failed: {e}', type='server_error'))}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        await merged.aclose()


def _chat_sse(merged, n: int, cid: str, created: int, model: str, include_usage: bool):
    def data(choices: list, usage=None, with_usage=False) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
        if with_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    def choice(i: int, delta: dict, finish=None) -> list:
        return [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}]

    started: set[int] = set()

    def make_event(i: int, chunk):
        if i not in started:  # the role comes first in each choice's stream
            started.add(i)
            yield data(choice(i, {"role": "assistant", "content": ""}), with_usage=include_usage)
        if chunk.text:
            yield data(choice(i, {"content": chunk.text}), with_usage=include_usage)
        if chunk.result is not None:
            yield data(choice(i, {}, chunk.result.finish_reason), with_usage=include_usage)

    return _events(merged, make_event, lambda u: data([], u, with_usage=True), include_usage, n, n)


def _completion_sse(merged, echo: list[str], n: int, cid: str, created: int, model: str, include_usage: bool):
    def data(choices: list, usage=None, with_usage=False) -> str:
        body = {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices}
        if with_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    echoed: set[int] = set()

    def make_event(i: int, chunk):
        text = chunk.text
        if echo[i] and i not in echoed:
            echoed.add(i)
            text = echo[i] + text
        finish = chunk.result.finish_reason if chunk.result is not None else None
        if text or finish:
            choice = {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
            yield data([choice], with_usage=include_usage)

    return _events(merged, make_event, lambda u: data([], u, with_usage=True), include_usage, len(echo), n)

"""The OpenAI-compatible HTTP API (FastAPI) over an `Engine`.

Routes: GET / (the chat page, open without a key; its API calls need one), GET /health and GET /ping (always open),
GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions and POST /v1/completions (whole, or streamed as
server-sent events ending with `data: [DONE]`; n choices; log-probs; echo and max_tokens 0 to score a text),
POST /invocations (SageMaker: the chat body), GET /metrics (Prometheus). Every error is OpenAI's JSON shape
`{"error": {"message", "type", "param", "code"}}`. Request bodies are validated strictly (unknown fields are refused),
limited in size, and no request field is ever used as a file path: model names are only looked up in the engine.

Where each piece lives: request bodies in schemas.py, their checks in validation.py, the routes in routes_openai.py,
routes_sagemaker.py and routes_ops.py (the chat page in page.py), response bodies in responses.py and sse.py, errors
in api_errors.py, the key and body size checks in guard.py.
"""

from __future__ import annotations

from fastapi import FastAPI

from domain_expert.serve.api_errors import add_error_handlers
from domain_expert.serve.engine import Engine
from domain_expert.serve.guard import GuardMiddleware
from domain_expert.serve.page import add_chat_page
from domain_expert.serve.routes_openai import openai_router
from domain_expert.serve.routes_ops import ops_router
from domain_expert.serve.routes_sagemaker import sagemaker_router
from domain_expert.serve.schemas import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_MAX_TOKENS_LIMIT
from domain_expert.serve.validation import RequestValidator

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_PROMPT_TOKENS", "DEFAULT_MAX_TOKENS_LIMIT", "create_app"]


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
    add_error_handlers(app)
    validator = RequestValidator(engine, max_prompt_tokens=max_prompt_tokens, max_tokens_limit=max_tokens_limit)
    add_chat_page(app)
    app.include_router(ops_router(metrics, engine))
    app.include_router(sagemaker_router(validator))
    app.include_router(openai_router(validator))
    return app

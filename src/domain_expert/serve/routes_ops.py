"""Operations routes: GET /health (liveness, open without a key) and GET /metrics (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from domain_expert.serve.metrics import ServerMetrics


def engine_health(engine) -> tuple[int, dict]:
    """(HTTP status, body) of GET /health: 200 while the engine can serve; 503 while an engine with a child process
    (llama.cpp) is restarting it or has given up. Engines add their own fields (`health_info`)."""
    body = {"status": "ok", "serving_path": getattr(engine, "serving_path", "unknown")}
    extra = getattr(engine, "health_info", None)
    if callable(extra):
        body.update(extra())
    return (200 if body["status"] == "ok" else 503), body


def ops_router(metrics: ServerMetrics, engine=None) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health():
        # which computation serves the model (Engine.serving_path): a client can tell the lean fast path from the
        # model's own forward without reading the server's log
        status, body = engine_health(engine)
        return JSONResponse(body, status)

    @router.get("/metrics")
    async def prometheus_metrics():
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    return router

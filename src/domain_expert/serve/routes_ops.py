"""Operations routes: GET /health (liveness, open without a key) and GET /metrics (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from domain_expert.serve.metrics import ServerMetrics


def ops_router(metrics: ServerMetrics, engine=None) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health():
        # which computation serves the model (Engine.serving_path): a client can tell the lean fast path from the
        # model's own forward without reading the server's log
        return {"status": "ok", "serving_path": getattr(engine, "serving_path", "unknown")}

    @router.get("/metrics")
    async def prometheus_metrics():
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    return router

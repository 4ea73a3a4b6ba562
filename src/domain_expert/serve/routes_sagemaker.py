"""SageMaker's hosting contract: the platform polls GET /ping for health and sends requests to POST /invocations, here
with the body of /v1/chat/completions, so the server runs unchanged as a SageMaker endpoint container."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from domain_expert.serve.routes_openai import chat_completion
from domain_expert.serve.routes_ops import engine_health
from domain_expert.serve.schemas import ChatCompletionRequest
from domain_expert.serve.validation import RequestValidator


def sagemaker_router(validator: RequestValidator) -> APIRouter:
    router = APIRouter()

    @router.get("/ping")
    async def ping():
        status, _ = engine_health(validator.engine)  # SageMaker routes no traffic to a 503 container
        return JSONResponse({"status": "ok" if status == 200 else "unavailable"}, status)

    @router.post("/invocations")
    async def invocations(body: ChatCompletionRequest):
        return await chat_completion(validator, body)

    return router

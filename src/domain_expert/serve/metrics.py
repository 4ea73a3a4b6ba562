"""Prometheus metrics for the server (`GET /metrics`): requests, tokens, latency, time to first token, queue depth and
batch sizes. Each app gets its own registry, so several servers (or tests) in one process never share counters."""

from __future__ import annotations

import time

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        p = "domain_expert_"
        self.requests = Counter(p + "requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram(
            p + "request_latency_seconds",
            "time from request to the last byte of the response (whole stream for SSE)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            "time from admission to the first generated token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(p + "prompt_tokens", "prompt tokens processed", ["model"], registry=r)
        self.generation_tokens = Counter(p + "generation_tokens", "tokens generated", ["model"], registry=r)
        self.queue_depth = Gauge(p + "queue_depth", "admitted requests waiting for a batch slot", registry=r)
        self.running = Gauge(p + "running_requests", "sequences in the running batch", registry=r)
        self.batch_rows = Histogram(
            p + "decode_batch_size", "sequences per decoding step", ["lane"], buckets=BATCH_BUCKETS, registry=r
        )
        self.step_seconds = Histogram(
            p + "decode_step_seconds",
            "time of one decoding step",
            ["lane"],
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
            registry=r,
        )

    def watch(self, engine) -> None:
        """Gauges read from the engine when scraped."""
        if hasattr(engine, "queue_depth"):
            self.queue_depth.set_function(lambda: engine.queue_depth)
        scheduler = getattr(engine, "scheduler", None)
        if scheduler is not None:
            self.running.set_function(lambda: scheduler.running)

    def on_step(self, step: dict) -> None:  # called from the scheduler thread; prometheus_client is thread-safe
        self.batch_rows.labels(step["lane"]).observe(step["rows"])
        self.step_seconds.labels(step["lane"]).observe(step["seconds"])

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every HTTP request by route and status and times it until its last body byte (plain ASGI: streamed
    responses are timed to their end, and requests refused by other middleware are counted too)."""

    def __init__(self, app, *, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        # bounded label values: never the raw path a client sent
        route = path if path in _ROUTES else "/v1/models/{id}" if path.startswith("/v1/models/") else "other"
        started, status = time.perf_counter(), 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


_ROUTES = {
    "/",
    "/health",
    "/ping",
    "/metrics",
    "/invocations",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
}

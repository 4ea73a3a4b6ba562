"""API key and body size checks as plain ASGI middleware, so that they also guard unknown routes and bodies streamed
without a Content-Length."""

from __future__ import annotations

import hmac

from fastapi.responses import JSONResponse

from domain_expert.serve.api_errors import error_body
from domain_expert.serve.page import PAGE_PATH

# liveness probes (ours and SageMaker's) answer without a key, and so does the chat page (static; its API calls need it)
OPEN_PATHS = {"/health", "/ping", PAGE_PATH}


class GuardMiddleware:
    def __init__(self, app, *, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        body = await self._read_body(receive)
        if body is None:  # the client went away
            return
        if len(body) > self.max_body_bytes:
            return await self._too_large()(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _refusal(self, scope) -> JSONResponse | None:
        """The answer to a request refused on its headers alone (key, Content-Length), or None."""
        if self.api_key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            body = error_body("missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
            return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                if int(length) > self.max_body_bytes:
                    return self._too_large()
            except ValueError:
                return JSONResponse(error_body("bad Content-Length"), status_code=400)
        return None

    async def _read_body(self, receive) -> bytes | None:
        """The whole body, or as soon as it is over the limit, what was read so far (None: the client disconnected).
        Buffered so that a chunked body without Content-Length is limited too."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if size > self.max_body_bytes or not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> JSONResponse:
        body = error_body(f"request body over {self.max_body_bytes} bytes", code="request_too_large")
        return JSONResponse(body, status_code=413)

    def _authorized(self, scope) -> bool:
        for key, value in scope.get("headers") or []:
            if key == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
        return False

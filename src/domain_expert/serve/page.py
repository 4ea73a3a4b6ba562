"""The chat page at GET / : one static HTML file (static/chat.html: inline CSS and vanilla JS, no build step, no
external resources) that talks to this server's own OpenAI-compatible routes.

The page itself is public (it holds no data and no secrets); the API routes it calls keep their key check, and the page
lets the user paste the key, which it keeps in the tab's sessionStorage and sends as `Authorization: Bearer`.
It is served with a strict Content-Security-Policy: its one inline script and one inline style are allowed by their
SHA-256 hashes (computed here from the file), nothing else may load or run, and it may only fetch from this origin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

PAGE_PATH = "/"
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


@lru_cache(maxsize=1)
def chat_page() -> tuple[bytes, dict[str, str]]:
    """The page's bytes and the security headers it is served with."""
    html = resources.files("domain_expert.serve").joinpath("static/chat.html").read_text(encoding="utf-8")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _INLINE.findall(html):
        hashes[kind].append(_sha256(body))
    if len(hashes["script"]) != 1 or len(hashes["style"]) != 1:  # pragma: no cover - a packaging mistake
        raise RuntimeError("static/chat.html must hold exactly one plain <script> and one plain <style>")
    csp = "; ".join(
        [
            "default-src 'none'",
            "script-src " + hashes["script"][0],
            "style-src " + hashes["style"][0],
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return html.encode("utf-8"), headers


def add_chat_page(app: FastAPI) -> None:
    """Serve the chat page at GET (and HEAD) `PAGE_PATH`; the app's guard must leave that path open."""
    body, headers = chat_page()

    @app.api_route(PAGE_PATH, methods=["GET", "HEAD"], include_in_schema=False)
    async def _chat_page() -> Response:
        return HTMLResponse(body, headers=headers)

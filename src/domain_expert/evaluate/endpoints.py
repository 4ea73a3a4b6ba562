"""A model behind an OpenAI-compatible HTTP API (vLLM, TGI, Ollama, `domain-expert serve`, Bedrock gateways), used
by `evaluate` so a deployed endpoint can be compared with the run it came from, and by the LLM judge. Standard
library only."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

from domain_expert.config import EvalConfig
from domain_expert.errors import DomainExpertError
from domain_expert.evaluate.specs import ModelSpec


class EndpointError(DomainExpertError):
    """The endpoint is unreachable or keeps answering with errors."""


class Endpoint:
    def __init__(
        self, base_url: str, model: str, *, retries: int = 4, timeout_s: float = 120.0, api_key: str | None = None
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.retries = retries
        self.timeout_s = timeout_s
        # the key comes from the environment, never from a config file or the command line (shell history)
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")

    def _post(self, path: str, body: dict) -> dict:
        url = f"{self.base_url}{path}"
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:200].decode(errors='replace')}"
                if e.code < 500 and e.code != 429:  # a client error will not heal by retrying
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as e:
                last = str(getattr(e, "reason", e))
            if attempt < self.retries:
                time.sleep(min(8.0, 0.5 * 2**attempt))  # exponential backoff, bounded
        raise EndpointError(
            f"endpoint failed after {self.retries + 1} attempt(s): {last}",
            where=url,
            fix="check the URL and that the server is up (curl it), or evaluate the run folder instead",
        )

    def chat(self, prompt: str, *, system: str | None, max_tokens: int) -> dict:
        """Greedy answer: {"text", "stopped", "tokens"} (stopped = finish_reason 'stop')."""
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        out = self._post("/chat/completions", body)
        try:
            choice = out["choices"][0]
            text = choice["message"].get("content") or ""
            tokens = int(out.get("usage", {}).get("completion_tokens", len(text.split())))
            return {"text": text.strip(), "stopped": choice.get("finish_reason") == "stop", "tokens": tokens}
        except (KeyError, IndexError, TypeError) as e:
            raise EndpointError(
                f"unexpected response shape ({e!r})", where=self.base_url, fix="is this an OpenAI-compatible API?"
            ) from None


class EndpointEngine:
    """A model behind an OpenAI-compatible URL: generation only (likelihood metrics are skipped, with a reason)."""

    vocab = None

    def __init__(self, spec: ModelSpec, cfg: EvalConfig, system: str | None):
        self.ep = Endpoint(spec.path, spec.endpoint_model or "default", retries=cfg.endpoint_retries,
                           timeout_s=cfg.endpoint_timeout_s)  # fmt: skip
        self.system = system

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[dict]:
        return [self.ep.chat(p, system=self.system, max_tokens=max_new_tokens) for p in prompts]

"""From a validated request body to the engine's `GenerationRequest`s: the checks pydantic cannot make (model names,
message order, stop strings, n, the prompt and completion lengths against the server's limits and the model's
context), each refused as a 400/404 `APIError` naming the field at fault."""

from __future__ import annotations

import dataclasses

from domain_expert.serve.api_errors import APIError
from domain_expert.serve.engine import Engine, GenerationRequest, UnknownModelError
from domain_expert.serve.schemas import MAX_CHOICES, ChatCompletionRequest, ChatMessage, CompletionRequest


def unknown_model(engine: Engine, model: str) -> APIError:
    return APIError(
        404,
        f"model '{model}' not found; available: {', '.join(engine.model_ids())}",
        param="model",
        code="model_not_found",
    )


class RequestValidator:
    def __init__(self, engine: Engine, *, max_prompt_tokens: int, max_tokens_limit: int):
        self.engine = engine
        self.max_prompt_tokens = max_prompt_tokens
        self.max_tokens_limit = max_tokens_limit

    def chat(self, body: ChatCompletionRequest) -> list[GenerationRequest]:
        """One request per choice (n)."""
        stop, n = self._common(body)
        messages = check_messages(body.messages)
        prompt_tokens = self._count(body.model, messages)
        asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        req = GenerationRequest(
            model=body.model,
            messages=messages,
            max_tokens=self._room(prompt_tokens, asked, param, "messages"),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=stop,
            seed=body.seed,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        )
        return _copies(req, n)

    def completions(self, body: CompletionRequest) -> list[GenerationRequest]:
        """One request per prompt and choice, the n choices of a prompt adjacent."""
        stop, n = self._common(body)
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
            prompt_tokens = self._count(body.model, prompt)
            req = GenerationRequest(
                model=body.model,
                messages=[],
                prompt=prompt,
                max_tokens=self._room(prompt_tokens, body.max_tokens, "max_tokens", where),
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                stop=stop,
                seed=body.seed,
                logprobs=body.logprobs,
                echo=bool(body.echo),
            )
            reqs.extend(_copies(req, n))
        return reqs

    def _common(self, body: ChatCompletionRequest | CompletionRequest) -> tuple[list[str], int]:
        """(stop strings, n) after the checks both routes share."""
        if body.model not in self.engine.model_ids():
            raise unknown_model(self.engine, body.model)
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

    def _count(self, model: str, prompt: list[dict] | str) -> int:
        try:
            return self.engine.count_prompt_tokens(model, prompt)
        except UnknownModelError:
            raise unknown_model(self.engine, model) from None

    def _room(self, prompt_tokens: int, asked: int | None, param: str, prompt_param: str) -> int:
        """Check prompt and completion lengths against the server's limits and the model's context; return the
        max_tokens to use."""
        if prompt_tokens > self.max_prompt_tokens:
            raise APIError(
                400,
                f"prompt is {prompt_tokens} tokens, over this server's limit of {self.max_prompt_tokens}",
                param=prompt_param,
                code="context_length_exceeded",
            )
        if asked is not None and asked > self.max_tokens_limit:
            raise APIError(400, f"{param} is {asked}, over this server's limit of {self.max_tokens_limit}", param=param)
        context = self.engine.context_length
        room = None if context is None else context - prompt_tokens
        if room is not None and room < 1:
            raise APIError(
                400,
                f"prompt is {prompt_tokens} tokens and leaves no room in the model's {context}",
                param=prompt_param,
                code="context_length_exceeded",
            )
        if asked is not None and room is not None and asked > room:
            raise APIError(
                400,
                f"prompt ({prompt_tokens}) + {param} ({asked}) is over the model's context of {context}",
                param=param,
                code="context_length_exceeded",
            )
        return asked if asked is not None else min(self.max_tokens_limit, room if room is not None else 10**9)


def _copies(req: GenerationRequest, n: int) -> list[GenerationRequest]:
    # n samples must differ: with a seed, each choice gets its own (seed, seed+1, ...), still reproducible
    return [dataclasses.replace(req, seed=None if req.seed is None else req.seed + i) if i else req for i in range(n)]


def check_messages(messages: list[ChatMessage]) -> list[dict]:
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

"""Generation engines behind the OpenAI-compatible server.

An `Engine` turns a validated `GenerationRequest` (a conversation, the sampling settings) into text, whole or as a
stream of deltas. The HTTP layer (app.py) only talks to this protocol, so a continuous-batching or vLLM engine can
replace `TransformersEngine` later without touching the routes.

`TransformersEngine` runs one generation at a time on a single worker thread (the model is not shared between
threads); requests wait in a bounded queue, and one that would make more than `max_queue` wait is refused with
`QueueFullError` (HTTP 429). It serves the tuned model as `<name>` and, for a LoRA run, the base as `<name>:base` by
disabling the adapter for that request: one copy of the weights.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

BASE_SUFFIX = ":base"


class EngineError(Exception):
    """A request the engine cannot serve (mapped to an HTTP error by the app)."""


class QueueFullError(EngineError):
    """Too many requests are already waiting (HTTP 429)."""


class UnknownModelError(EngineError):
    """The request names a model this engine does not serve (HTTP 404)."""


@dataclass
class GenerationRequest:
    model: str
    messages: list[dict]  # validated: [{"role": "system"|"user"|"assistant", "content": str}], last is user
    max_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int


@dataclass
class StreamChunk:
    """A text delta; the last chunk of a stream also carries the finished result (text "" or the final delta)."""

    text: str
    result: GenerationResult | None = None


@runtime_checkable
class Engine(Protocol):
    context_length: int | None  # prompt + completion tokens the model can attend to (None: unknown)

    def model_ids(self) -> list[str]: ...

    def count_prompt_tokens(self, model: str, messages: list[dict]) -> int: ...

    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        """Awaiting admits the request (raises QueueFullError / UnknownModelError at once); then iterate it."""
        ...


class Admission:
    """Counts requests admitted and not finished; refuses one that would leave more than `max_queue` waiting behind
    `concurrency` running ones. Single event loop: no lock needed."""

    def __init__(self, max_queue: int, concurrency: int = 1):
        self.max_queue = max_queue
        self.concurrency = concurrency
        self.pending = 0

    def admit(self) -> None:
        if self.pending >= self.max_queue + self.concurrency:
            raise QueueFullError(
                f"server busy: {self.pending - self.concurrency} requests already waiting (max {self.max_queue}); "
                "retry later"
            )
        self.pending += 1

    def release(self) -> None:
        self.pending -= 1


def find_stop(text: str, stops: list[str]) -> int:
    """Index of the earliest stop string in text, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


class TransformersEngine:
    """Serves a LoadedModel (domain_expert.generate.load_for_inference) with transformers' generate."""

    def __init__(self, lm, name: str, *, max_queue: int = 16):
        self.lm = lm
        self.name = name
        self.admission = Admission(max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        cfg = getattr(lm.model, "config", None)
        self.context_length = getattr(cfg, "max_position_embeddings", None)

    # --- model names -------------------------------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        return [self.name, self.name + BASE_SUFFIX] if self.lm.has_adapter else [self.name]

    def _is_base(self, model: str) -> bool:
        if model not in self.model_ids():
            raise UnknownModelError(f"model '{model}' not found; this server has {', '.join(self.model_ids())}")
        return model.endswith(BASE_SUFFIX) and model != self.name

    # --- prompt ------------------------------------------------------------------------------------------------

    def _encode(self, messages: list[dict]) -> list[int]:
        lm, tok = self.lm, self.lm.tokenizer
        fmt = lm.fmt
        if messages and messages[0]["role"] == "system":  # the client's system prompt replaces the trained one
            fmt = dataclasses.replace(fmt, system=messages[0]["content"])
            messages = messages[1:]
        ids = tok(fmt.render_messages(tok, messages), add_special_tokens=False)["input_ids"]
        if fmt.style == "plain" and tok.bos_token_id is not None:
            ids = [tok.bos_token_id, *ids]
        return ids

    def count_prompt_tokens(self, model: str, messages: list[dict]) -> int:
        self._is_base(model)
        return len(self._encode(messages))

    # --- generation (worker thread) ----------------------------------------------------------------------------

    def _run(self, request: GenerationRequest, base: bool, cancel: threading.Event, streamer=None) -> dict:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        from domain_expert.generate import _adapter_off

        tok = self.lm.tokenizer
        ids = self._encode(request.messages)
        device = next(self.lm.model.parameters()).device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        stops = request.stop

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                done = cancel.is_set()
                if not done and stops:
                    done = find_stop(tok.decode(input_ids[0, len(ids) :], skip_special_tokens=True), stops) >= 0
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        kwargs = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=request.max_tokens,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            stopping_criteria=StoppingCriteriaList([_Stop()]),
            streamer=streamer,
        )
        if request.temperature > 0:
            kwargs.update(do_sample=True, temperature=request.temperature, top_p=request.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        try:
            if request.seed is not None:
                torch.manual_seed(request.seed)
            with torch.no_grad(), _adapter_off(self.lm, base):
                out = self.lm.model.generate(**kwargs)
        finally:
            if streamer is not None:
                streamer.finish()
        gen = out[0, len(ids) :].tolist()
        eos = tok.eos_token_id in gen
        if eos:
            gen = gen[: gen.index(tok.eos_token_id)]
        text = tok.decode(gen, skip_special_tokens=True)
        cut = find_stop(text, stops)
        if cut >= 0:
            text = text[:cut]
        finish = "stop" if (eos or cut >= 0) else "length"
        return {"text": text, "result": GenerationResult(text, finish, len(ids), len(gen) + int(eos))}

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        base = self._is_base(request.model)
        self.admission.admit()
        cancel = threading.Event()
        try:
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self._executor, self._run, request, base, cancel)
            try:
                out = await asyncio.shield(fut)
            except asyncio.CancelledError:  # client gone: stop the worker at the next token
                cancel.set()
                raise
            return out["result"]
        finally:
            self.admission.release()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        agen = self._stream(request)
        await agen.__anext__()  # runs admission now, so a refusal is an HTTP status, not a broken stream
        return agen

    async def _stream(self, request: GenerationRequest):
        base = self._is_base(request.model)
        self.admission.admit()
        cancel = threading.Event()
        try:
            yield None
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()
            streamer = _AsyncQueueStreamer(self.lm.tokenizer, loop, queue)
            fut = loop.run_in_executor(self._executor, self._run, request, base, cancel, streamer)
            hold = max((len(s) for s in request.stop), default=1) - 1  # text that may still become a stop string
            acc, sent = "", 0
            while True:
                piece = await queue.get()
                if piece is None:
                    break
                acc += piece
                cut = find_stop(acc, request.stop)
                if cut >= 0:
                    cancel.set()
                    if cut > sent:
                        yield StreamChunk(acc[sent:cut])
                    sent = cut
                    break
                safe = len(acc) - hold
                if safe > sent:
                    yield StreamChunk(acc[sent:safe])
                    sent = safe
            out = await fut
            final = out["text"]
            yield StreamChunk(final[sent:] if len(final) > sent else "", out["result"])
        finally:
            cancel.set()
            self.admission.release()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _async_streamer_class():
    from transformers import TextIteratorStreamer

    class AsyncQueueStreamer(TextIteratorStreamer):
        """TextIteratorStreamer that hands its text to an asyncio.Queue on the server's loop (None ends it)."""

        def __init__(self, tokenizer, loop, queue):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.loop, self.queue, self._ended = loop, queue, False

        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, text)
            if stream_end:
                self.finish()

        def finish(self):
            if not self._ended:
                self._ended = True
                self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    return AsyncQueueStreamer


def _AsyncQueueStreamer(tokenizer, loop, queue):  # noqa: N802 - imports transformers only when streaming
    return _async_streamer_class()(tokenizer, loop, queue)

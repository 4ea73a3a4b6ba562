"""Generation engines behind the OpenAI-compatible server.

An `Engine` turns a validated `GenerationRequest` (a conversation, the sampling settings) into text, whole or as a
stream of deltas. The HTTP layer (app.py) only talks to this protocol, so a continuous-batching or vLLM engine can
replace `TransformersEngine` later without touching the routes.

`TransformersEngine` batches concurrent requests continuously on one worker thread (serve/decoding/batcher.py): up to
`max_batch` generate together, up to `max_queue` more wait, and one beyond that is refused with `QueueFullError`
(HTTP 429). It serves the tuned model as `<name>` and, for a LoRA run, the base as `<name>:base` (the adapter's
delta subtracted for those rows): one copy of the weights.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

BASE_SUFFIX = ":base"


class EngineError(Exception):
    """A request the engine cannot serve (mapped to an HTTP error by the app)."""


class QueueFullError(EngineError):
    """Too many requests are already waiting (HTTP 429)."""


class EngineUnavailableError(EngineError):
    """The engine cannot serve now (e.g. its llama-server child died and is restarting): HTTP 503, retry later."""


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
    prompt: str | None = None  # raw text prompt (/v1/completions): used as is instead of `messages`
    logprobs: int | None = None  # None: none; k >= 0: each generated token's log-prob and the top k alternatives
    echo: bool = False  # /v1/completions: also score the prompt (its token log-probs when `logprobs` is set)


@dataclass
class TokenLogprob:
    token: str
    logprob: float | None  # None for a prompt's first token (nothing to predict it from)
    top: list[tuple[str, float]]
    offset: int = 0  # character offset of the token in the text it belongs to


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None  # one per token of `text` when asked
    prompt_logprobs: list[TokenLogprob] | None = None  # one per prompt token when asked with echo
    prompt_text: str = ""  # the prompt as the model saw it (decoded), for echo


@dataclass
class StreamChunk:
    """A text delta; the last chunk of a stream also carries the finished result (text "" or the final delta)."""

    text: str
    result: GenerationResult | None = None


@runtime_checkable
class Engine(Protocol):
    context_length: int | None  # prompt + completion tokens the model can attend to (None: unknown)
    # which computation serves the model and why, in a few words (printed at start-up, returned by GET /health)
    serving_path: str

    def model_ids(self) -> list[str]: ...

    def count_prompt_tokens(self, model: str, messages: list[dict] | str) -> int:
        """Tokens of a chat (messages) or of a raw text prompt (str)."""
        ...

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


class ChatEngine:
    """What every engine shares: model names (`<name>`, `<name>:base`), prompts in the run's trained format, and
    `stream`/`generate` over a subclass's `_stream(request)` async generator, which yields None once admitted, then
    StreamChunks, the last one carrying the result. Subclasses set `name`, `tokenizer`, `fmt`, `has_base`."""

    name: str
    tokenizer: object
    fmt: object
    has_base: bool
    serving_path: str = "unknown"

    def model_ids(self) -> list[str]:
        return [self.name, self.name + BASE_SUFFIX] if self.has_base else [self.name]

    def _is_base(self, model: str) -> bool:
        if model not in self.model_ids():
            raise UnknownModelError(f"model '{model}' not found; this server has {', '.join(self.model_ids())}")
        return model.endswith(BASE_SUFFIX) and model != self.name

    def _encode(self, messages: list[dict] | str) -> list[int]:
        tok, fmt = self.tokenizer, self.fmt
        if isinstance(messages, str):
            if fmt.seq2seq:  # an encoder's input ends with EOS, as in training
                return tok(messages, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            return tok(messages)["input_ids"]  # raw text: the tokenizer's own special tokens (BOS if it adds one)
        if messages and messages[0]["role"] == "system":  # the client's system prompt replaces the trained one
            fmt = dataclasses.replace(fmt, system=messages[0]["content"])
            messages = messages[1:]
        return fmt.encode_messages(tok, messages)  # the trained format, as generate and training encode it

    def count_prompt_tokens(self, model: str, messages: list[dict] | str) -> int:
        self._is_base(model)
        return len(self._encode(messages))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        agen = self._stream(request)
        await agen.__anext__()  # runs admission now, so a refusal is an HTTP status, not a broken stream
        return agen

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        agen = self._stream(request)
        result = None
        try:
            async for chunk in agen:
                if chunk is not None and chunk.result is not None:
                    result = chunk.result
        finally:
            await agen.aclose()
        return result

    def _stream(self, request: GenerationRequest):  # pragma: no cover - interface
        raise NotImplementedError


class LoopMailbox:
    """Hands the worker thread's events to one asyncio loop in batches. Why: a decoding step of 16 rows emits 16
    tokens within microseconds, and `call_soon_threadsafe` per token wakes the loop each time (a write to its
    self-pipe, ~65 us here) while the loop's thread competes for the GIL with the worker's dispatch of the next step.
    `put` only queues; the scheduler calls `flush` after each prefill group, each decoding step and each pass of its
    loop, which schedules one delivery of everything queued."""

    def __init__(self, loop) -> None:
        self.loop = loop
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()

    def put(self, queue: asyncio.Queue, item) -> None:
        """From the worker thread; raises RuntimeError once the loop is closed (the caller cancels its sequence)."""
        if self.loop.is_closed():
            raise RuntimeError("event loop is closed")
        with self._lock:
            self._items.append((queue, item))

    def flush(self) -> None:
        with self._lock:
            if not self._items:
                return
            items, self._items = self._items, collections.deque()
        try:
            self.loop.call_soon_threadsafe(self._deliver, items)
        except RuntimeError:  # the loop closed meanwhile: its sequences are cancelled at their next event
            pass

    @staticmethod
    def _deliver(items) -> None:
        for queue, item in items:
            queue.put_nowait(item)


class TransformersEngine(ChatEngine):
    """Serves a LoadedModel (models.loader.load_for_inference) with continuous batching (serve/decoding/batcher.py)."""

    def __init__(
        self,
        lm,
        name: str,
        *,
        max_queue: int = 32,
        max_batch: int = 32,
        metrics=None,
        decoder: str = "auto",
        compile: bool = False,
    ):
        """`lm`: a LoadedModel, or a function returning one, which is then called on the scheduler's thread (faster
        on CPU: see BatchScheduler). The engine owns the model: it merges the adapter into the weights."""
        from domain_expert.serve.decoding.batcher import BatchScheduler

        self.name = name
        self.max_batch = max_batch
        self.admission = Admission(max_queue, concurrency=max_batch)
        self.metrics = metrics
        self._mailboxes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> LoopMailbox
        self._mailbox_lock = threading.Lock()
        self.scheduler = BatchScheduler(
            lambda: self._build(lm() if callable(lm) else lm),
            max_batch=max_batch,
            on_step=self._on_step,
            flush=self._flush,
            decoder=decoder,
            compile=compile,
        )

    def _build(self, lm) -> dict:
        from domain_expert.serve.decoding.lora_delta import LoraDelta

        self.lm = lm
        self.tokenizer, self.fmt, self.has_base = lm.tokenizer, lm.fmt, lm.has_adapter
        model = lm.model
        delta = None
        if lm.has_adapter:
            # merge for speed, keep the low-rank factors to give the base lane its exact weights back
            delta = LoraDelta(model)
            model = model.merge_and_unload()
            delta.bind(model)
            lm.model = model
        cfg = getattr(model, "config", None)
        self.context_length = getattr(cfg, "max_position_embeddings", None)
        tok = lm.tokenizer
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos_ids = {tok.eos_token_id} | set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.discard(None)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return dict(
            model=model,
            eos_ids=eos_ids,
            pad_id=pad,
            context_length=self.context_length,
            base_delta=delta,
            prefix=self._shared_prefix(),
        )

    def _flush(self) -> None:
        """Called by the scheduler's thread: deliver the events its sequences emitted (LoopMailbox)."""
        with self._mailbox_lock:
            boxes = list(self._mailboxes.values())
        for box in boxes:
            box.flush()

    def _on_step(self, step: dict) -> None:
        if self.metrics is not None:
            self.metrics.on_step(step)

    def _shared_prefix(self) -> list[int]:
        """Tokens every chat prompt starts with (the template's system turn and the user header): the longest common
        prefix of a few probe conversations. A prompt uses the cached prefix only if it really starts with it."""
        probes = [self._encode([{"role": "user", "content": c}]) for c in ("a", "What is anemia?", "1 2", "Z")]
        n = 0
        while all(len(p) > n and p[n] == probes[0][n] for p in probes):
            n += 1
        return probes[0][:n]

    # --- generation --------------------------------------------------------------------------------------------

    async def _events(self, request: GenerationRequest, state: dict):
        """Admit, submit, then yield the scheduler's (kind, payload) events; always releases and cancels."""
        from domain_expert.serve.decoding.lanes import BASE, TUNED, Sequence

        base = self._is_base(request.model)
        self.admission.admit()
        loop = asyncio.get_running_loop()
        with self._mailbox_lock:
            mailbox = self._mailboxes.get(loop)
            if mailbox is None:
                mailbox = self._mailboxes[loop] = LoopMailbox(loop)
        events: asyncio.Queue = asyncio.Queue()
        ids = self._encode(request.prompt if request.prompt is not None else request.messages)
        state["prompt_ids"] = ids

        def emit(kind, payload):
            try:
                mailbox.put(events, (kind, payload))
            except RuntimeError:  # the request's event loop is gone (client and server side both finished)
                seq.cancel.set()

        seq = Sequence(
            prompt_ids=ids,
            max_new_tokens=request.max_tokens,
            emit=emit,
            lane=BASE if base else TUNED,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            logprobs=request.logprobs,
            prompt_logprobs=request.echo and request.logprobs is not None,
        )
        state["cancel"] = seq.cancel
        state["admitted"] = time.perf_counter()
        try:
            yield None  # admitted: the caller can now commit to a response
            if request.max_tokens == 0:  # scoring only (/v1/completions with echo)
                seq.max_new_tokens = 1  # the prefill gives the prompt's log-probs; its one sampled token is dropped
                if not seq.prompt_logprobs:
                    seq.cancel.set()  # nothing to compute: the scheduler answers "done" without running the model
            self.scheduler.submit(seq)
            while True:
                kind, payload = await events.get()
                if kind == "error":
                    raise EngineError(f"generation failed: {payload}")
                yield kind, payload
                if kind == "done":
                    return
        finally:
            seq.cancel.set()
            self.admission.release()

    async def _stream(self, request: GenerationRequest):
        tok = self.lm.tokenizer
        state: dict = {}
        events = self._events(request, state)
        try:
            await events.__anext__()
            yield None
            hold = max((len(s) for s in request.stop), default=1) - 1  # text that may still become a stop string
            gen: list[int] = []
            infos: list = []
            prompt_rows = None
            text, sent, finish, eos = "", 0, "length", False
            async for kind, payload in events:
                if kind == "prompt_logprobs":
                    prompt_rows = payload
                    continue
                if kind == "done":
                    finish = "stop" if payload == "stop" else "length"
                    break
                token, info = payload
                if not gen and not eos and self.metrics is not None:
                    self.metrics.ttft.labels(request.model).observe(time.perf_counter() - state["admitted"])
                if token in self.scheduler.eos_ids:
                    eos = True
                    continue
                if request.max_tokens == 0:  # scoring: the one token the prefill sampled is not an answer
                    continue
                gen.append(token)
                infos.append(info)
                text = tok.decode(gen, skip_special_tokens=True)
                cut = find_stop(text, request.stop)
                if cut >= 0:
                    state["cancel"].set()
                    text, finish = text[:cut], "stop"
                    break
                safe = len(text) - hold
                if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
                    safe = min(safe, len(text.rstrip("\ufffd")))
                if safe > sent:
                    yield StreamChunk(text[sent:safe])
                    sent = safe
            ids = state["prompt_ids"]
            result = GenerationResult(
                text=text,
                finish_reason=finish,
                prompt_tokens=len(ids),
                completion_tokens=len(gen) + int(eos),
                logprobs=self._token_logprobs(gen, infos, text) if request.logprobs is not None else None,
                prompt_logprobs=self._prompt_logprobs(prompt_rows, ids) if prompt_rows is not None else None,
                prompt_text=tok.decode(ids, skip_special_tokens=False) if request.echo else "",
            )
            if self.metrics is not None:
                self.metrics.prompt_tokens.labels(request.model).inc(result.prompt_tokens)
                self.metrics.generation_tokens.labels(request.model).inc(result.completion_tokens)
            yield StreamChunk(text[sent:] if len(text) > sent else "", result)
        finally:
            await events.aclose()

    def _piece(self, token: int) -> str:
        return self.lm.tokenizer.decode([token], skip_special_tokens=False)

    def _token_logprobs(self, gen: list[int], infos: list, text: str) -> list[TokenLogprob]:
        out, offset = [], 0
        for token, info in zip(gen, infos, strict=True):
            piece = self._piece(token)
            lp, top = info if info is not None else (None, [])
            out.append(TokenLogprob(piece, lp, [(self._piece(t), v) for t, v in top], offset))
            offset += len(piece)
            if offset >= len(text):  # a stop string cut the text: no tokens beyond it
                break
        return out

    def _prompt_logprobs(self, rows: list, ids: list[int]) -> list[TokenLogprob]:
        out, offset = [], 0
        for token, row in zip(ids, rows, strict=True):
            piece = self._piece(token)
            if row is None:
                out.append(TokenLogprob(piece, None, [], offset))
            else:
                _, lp, top = row
                out.append(TokenLogprob(piece, lp, [(self._piece(t), v) for t, v in (top or [])], offset))
            offset += len(piece)
        return out

    @property
    def serving_path(self) -> str:
        """The scheduler's: the lean fast path (probe result) or the transformers forward, with the reason."""
        return self.scheduler.serving_path

    @property
    def queue_depth(self) -> int:
        return max(0, self.admission.pending - self.scheduler.running)

    def close(self) -> None:
        self.scheduler.close()

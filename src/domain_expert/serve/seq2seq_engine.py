"""The engine for encoder-decoder models (T5, Flan-T5, BART): the same HTTP API and chat page over
`model.generate`, since the continuous-batching scheduler (serve/decoding/) runs decoder-only models.

One worker thread runs the requests that are waiting together, as static batches: the requests of one batch share
a lane (`<name>` or `<name>:base`, the adapter switched off) and sampling settings, their encoder inputs are padded
and masked, and the batch decodes up to its longest request's max_tokens (greedy decoding of a row does not depend
on how long the others run, so each row is cut to its own). Correctness over speed: the whole answer comes as one
delta when streamed; per-token log-probs and echo are refused (HTTP 400) rather than approximated.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field

from domain_expert.serve.engine import (
    Admission,
    ChatEngine,
    EngineError,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
    find_stop,
)


@dataclass
class _Job:
    ids: list[int]
    request: GenerationRequest
    base: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: threading.Event = field(default_factory=threading.Event)

    def group(self) -> tuple:
        r = self.request
        greedy = r.temperature == 0
        return (self.base, greedy, None if greedy else (r.temperature, r.top_p, r.seed))


class Seq2SeqEngine(ChatEngine):
    """Serves a seq2seq LoadedModel (models.loader.load_for_inference) with `model.generate` on one thread."""

    serving_path = "seq2seq: model.generate, static batches"
    context_length = None  # relative positions (T5): no fixed context; the server's own limits still apply

    def __init__(self, lm, name: str, *, max_queue: int = 32, max_batch: int = 32):
        """`lm`: a LoadedModel of kind seq2seq, or a function returning one (called here)."""
        self.lm = lm() if callable(lm) else lm
        self.name, self.max_batch = name, max_batch
        self.tokenizer, self.fmt, self.has_base = self.lm.tokenizer, self.lm.fmt, self.lm.has_adapter
        self.admission = Admission(max_queue, concurrency=max_batch)
        self.metrics = None
        self.running = 0
        self._jobs: queue.Queue = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="seq2seq-engine", daemon=True)
        self._thread.start()

    async def _stream(self, request: GenerationRequest):
        base = self._is_base(request.model)
        if request.logprobs is not None or request.echo:
            raise EngineError(
                "log-probs and echo are not served for encoder-decoder models by this server: ask without "
                "logprobs/echo (evaluation scores them in process: domain-expert evaluate)"
            )
        if self._closed:
            raise EngineError("the server is shutting down")
        self.admission.admit()
        loop = asyncio.get_running_loop()
        ids = self._encode(request.prompt if request.prompt is not None else request.messages)
        job = _Job(ids, request, base, loop, loop.create_future())
        try:
            yield None  # admitted
            if request.max_tokens == 0:
                result = GenerationResult("", "length", len(ids), 0)
            else:
                self._jobs.put(job)
                result = await job.future
            if self.metrics is not None:
                self.metrics.prompt_tokens.labels(request.model).inc(result.prompt_tokens)
                self.metrics.generation_tokens.labels(request.model).inc(result.completion_tokens)
            yield StreamChunk(result.text, result)
        finally:
            job.cancelled.set()
            self.admission.release()

    # --- the worker thread --------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._jobs.put(None)  # close after this batch
                    break
                batch.append(nxt)
            batch = [j for j in batch if not j.cancelled.is_set()]
            groups: dict[tuple, list[_Job]] = {}
            for j in batch:
                groups.setdefault(j.group(), []).append(j)
            for jobs in groups.values():
                self.running = len(jobs)
                try:
                    results = self._run(jobs)
                except Exception as e:  # the requests fail with it; the engine keeps serving
                    results = [EngineError(f"generation failed: {e}")] * len(jobs)
                self.running = 0
                for j, res in zip(jobs, results, strict=True):
                    try:
                        j.loop.call_soon_threadsafe(_settle, j.future, res)
                    except RuntimeError:  # the request's event loop is closed: nobody waits for it
                        pass

    def _run(self, jobs: list[_Job]) -> list[GenerationResult]:
        """One `generate` call over jobs of one group: padded, masked encoder inputs; each row cut to its request."""
        import torch

        from domain_expert.models.loader import adapter_off

        tok, lm, first = self.tokenizer, self.lm, jobs[0].request
        device = next(lm.model.parameters()).device
        width = max(len(j.ids) for j in jobs)
        ids = torch.full((len(jobs), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, j in enumerate(jobs):
            ids[i, : len(j.ids)] = torch.tensor(j.ids)
            mask[i, : len(j.ids)] = 1
        sample = first.temperature > 0
        kwargs = {"do_sample": sample, "temperature": first.temperature, "top_p": first.top_p} if sample else {}
        if sample and first.seed is not None:
            torch.manual_seed(first.seed)
        with torch.no_grad(), adapter_off(lm, jobs[0].base):
            gen = lm.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max(j.request.max_tokens for j in jobs),
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                **({"do_sample": False} | kwargs),
            )
        return [self._result(j, row) for j, row in zip(jobs, gen[:, 1:].tolist(), strict=True)]

    def _result(self, job: _Job, row: list[int]) -> GenerationResult:
        """The answer of one row: up to EOS or the request's max_tokens, then cut at its first stop string."""
        tok, req = self.tokenizer, job.request
        row = row[: req.max_tokens]  # the batch may have decoded further for a longer request
        eos = tok.eos_token_id in row
        tokens = row[: row.index(tok.eos_token_id)] if eos else row
        text = tok.decode(tokens, skip_special_tokens=True)
        finish = "stop" if eos else "length"
        cut = find_stop(text, req.stop)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        return GenerationResult(text, finish, len(job.ids), len(tokens) + int(eos))

    @property
    def queue_depth(self) -> int:
        return max(0, self.admission.pending - self.running)

    def close(self) -> None:
        self._closed = True
        self._jobs.put(None)
        self._thread.join(timeout=30)


def _settle(future: asyncio.Future, result) -> None:
    if future.done():  # the request went away (client disconnected)
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)

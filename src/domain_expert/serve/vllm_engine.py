"""`--engine vllm`: the same HTTP API over vLLM's AsyncLLMEngine (GPU). The base model is loaded once; the tuned
model is the run's LoRA adapter passed as a `LoRARequest` per request, so `<name>` and `<name>:base` share weights as
with the transformers engine. vLLM schedules, batches (continuous batching, paged attention) and stops on its own;
this class only maps our `GenerationRequest` onto `SamplingParams` and streams text deltas back.

vLLM is optional (`pip install vllm`, CUDA builds only) and not installed in CI: this module imports it lazily and
says how to install it when missing. Written against vLLM's documented AsyncLLMEngine API (>= 0.8).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from domain_expert.errors import DomainExpertError
from domain_expert.serve.engine import (
    Admission,
    ChatEngine,
    EngineError,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
    TokenLogprob,
)


class VLLMUnavailableError(DomainExpertError):
    pass


class VLLMEngine(ChatEngine):
    serving_path = "vllm"

    def __init__(self, engine, tokenizer, fmt, name: str, lora_request, *, context_length, max_queue, max_batch):
        self.engine, self.tokenizer, self.fmt, self.name = engine, tokenizer, fmt, name
        self.lora_request = lora_request
        self.has_base = lora_request is not None
        self.context_length = context_length
        self.admission = Admission(max_queue, concurrency=max_batch)
        self.metrics = None

    @classmethod
    def from_run(cls, run_path, name: str, *, max_queue: int = 32, max_batch: int = 32) -> VLLMEngine:
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine
            from vllm.lora.request import LoRARequest
        except ImportError:
            raise VLLMUnavailableError(
                "--engine vllm needs vLLM, which is not installed",
                where="domain-expert serve --engine vllm",
                fix="on a CUDA machine: pip install vllm (or use the default --engine transformers)",
            ) from None
        from domain_expert.models.reference import resolve_run
        from domain_expert.models.tokenizer import load_tokenizer

        src = resolve_run(run_path)
        model_path, tok_path = src.weights.path, src.tokenizer_path
        tokenizer = load_tokenizer(tok_path)
        fmt = src.prompt_format(tokenizer)
        lora = LoRARequest(name, 1, str(src.adapter_dir.resolve())) if src.has_adapter else None
        rank = _lora_rank(src.adapter_dir) if src.has_adapter else None
        args = AsyncEngineArgs(
            model=model_path,
            tokenizer=tok_path,
            enable_lora=lora is not None,
            max_lora_rank=rank or 16,
            max_num_seqs=max_batch,
            trust_remote_code=False,  # never run code shipped with a model
        )
        engine = AsyncLLMEngine.from_engine_args(args)
        from domain_expert.models.kinds import load_config

        ctx = getattr(load_config(model_path), "max_position_embeddings", None)
        return cls(engine, tokenizer, fmt, name, lora, context_length=ctx, max_queue=max_queue, max_batch=max_batch)

    def _params(self, request: GenerationRequest):
        from vllm import SamplingParams

        return SamplingParams(
            n=1,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=max(1, request.max_tokens),
            stop=request.stop or None,
            seed=request.seed,
            logprobs=request.logprobs,
            prompt_logprobs=request.logprobs if request.echo and request.logprobs is not None else None,
        )

    async def _stream(self, request: GenerationRequest):
        base = self._is_base(request.model)
        self.admission.admit()
        rid = uuid.uuid4().hex
        started, first = time.perf_counter(), True
        try:
            yield None
            ids = self._encode(request.prompt if request.prompt is not None else request.messages)
            lora = None if base else self.lora_request
            sent, final = 0, None
            async for out in self.engine.generate(
                {"prompt_token_ids": ids}, self._params(request), rid, lora_request=lora
            ):
                final = out
                text = out.outputs[0].text if request.max_tokens > 0 else ""
                if first and text and self.metrics is not None:
                    self.metrics.ttft.labels(request.model).observe(time.perf_counter() - started)
                    first = False
                if len(text) > sent:
                    yield StreamChunk(text[sent:])
                    sent = len(text)
            if final is None:
                raise EngineError("vLLM returned no output")
            o = final.outputs[0]
            if self.metrics is not None:
                self.metrics.prompt_tokens.labels(request.model).inc(len(ids))
                self.metrics.generation_tokens.labels(request.model).inc(len(o.token_ids))
            yield StreamChunk(
                "",
                GenerationResult(
                    text=o.text if request.max_tokens > 0 else "",
                    finish_reason="length" if o.finish_reason == "length" or request.max_tokens == 0 else "stop",
                    prompt_tokens=len(ids),
                    completion_tokens=len(o.token_ids) if request.max_tokens > 0 else 0,
                    logprobs=self._logprobs(o.token_ids, o.logprobs) if request.logprobs is not None else None,
                    prompt_logprobs=self._logprobs(ids, final.prompt_logprobs) if request.echo else None,
                    prompt_text=self.tokenizer.decode(ids) if request.echo else "",
                ),
            )
        finally:
            await self.engine.abort(rid)  # a no-op when finished; stops generation when the client went away
            self.admission.release()

    def _logprobs(self, token_ids, rows) -> list[TokenLogprob] | None:
        if rows is None:
            return None
        out, offset = [], 0
        for token, row in zip(token_ids, rows, strict=False):
            piece = self.tokenizer.decode([token])
            if row is None:
                out.append(TokenLogprob(piece, None, [], offset))
            else:
                top = sorted(row.items(), key=lambda kv: -kv[1].logprob)
                alts = [(lp.decoded_token or self.tokenizer.decode([t]), lp.logprob) for t, lp in top if t != token]
                out.append(TokenLogprob(piece, row[token].logprob if token in row else None, alts, offset))
            offset += len(piece)
        return out

    def close(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()


def _lora_rank(folder: Path) -> int | None:
    import json

    try:
        return int(json.loads((folder / "adapter_config.json").read_text())["r"])
    except (OSError, KeyError, ValueError):
        return None

"""`--engine llamacpp`: the same HTTP API (OpenAI routes, `<name>` and `<name>:base`, chat page, SageMaker routes,
auth, limits, metrics) over llama.cpp's llama-server, run as a managed child process (llamacpp_process.py).

Why this shape: our tokenizer and prompt format build every prompt (so base and tuned see exactly what training saw)
and the prompt goes to llama-server's native POST /completion as token ids; generated token ids come back streamed
and are decoded, cut at stop strings and end-of-sequence here, exactly as the transformers engine does. The base GGUF
is loaded once and the run's adapter is applied per request (`"lora": [{"id": 0, "scale": 1}]` for `<name>`, scale 0
for `<name>:base`): one copy of the weights. Sampling is ours to define: only top_p and temperature run
(llama-server's default chain also has top-k 40, min-p 0.05 and penalties, which would change the answers).

What it cannot do: score a prompt (/v1/completions with echo and logprobs): llama-server returns log-probs of
generated tokens only (its /v1/completions refuses echo), so such a request is refused with a clear 400 rather than
approximated. A request in flight when the child dies fails with 503 (in-band for a stream) and the child restarts.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from domain_expert.serve.engine import (
    Admission,
    ChatEngine,
    EngineError,
    EngineUnavailableError,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
    TokenLogprob,
    find_stop,
)
from domain_expert.serve.llamacpp_process import LlamaServerProcess
from domain_expert.serve.llamacpp_setup import (
    LlamaCppUnavailableError,
    find_llama_server,
    inspect_llama_server,
    prepare_weights,
)

MAX_POOL_TOKENS = 16384  # llama-server's -c: one KV pool shared by all slots (--kv-unified), capped for memory
READY_WAIT_S = 30.0  # how long a request waits for a restarting child before a 503
READ_TIMEOUT_S = 300.0  # between two streamed events: a stuck child fails the request instead of hanging it
NO_SCORING = (
    "this server's engine (llama.cpp) cannot score prompts: llama-server returns log-probs of generated tokens only,"
    " so echo with logprobs is not available; serve with the default --engine transformers to score texts"
)


class LlamaCppEngine(ChatEngine):
    def __init__(self, process: LlamaServerProcess, tokenizer, fmt, name: str, *, has_base: bool, context_length,
                 eos_ids: set[int], max_queue: int, max_batch: int, info: dict):  # fmt: skip
        self.process, self.tokenizer, self.fmt, self.name = process, tokenizer, fmt, name
        self.has_base = has_base
        self.context_length = context_length
        self.eos_ids = eos_ids
        self.max_batch = max_batch
        self.admission = Admission(max_queue, concurrency=max_batch)
        self.metrics = None
        self.info = info
        self._client = None
        self._client_loop = None

    @classmethod
    def from_run(cls, run_path, name: str, *, precision: str = "f32", llama_server: str | Path | None = None,
                 max_queue: int = 32, max_batch: int = 32) -> LlamaCppEngine:  # fmt: skip
        from domain_expert.models.reference import resolve_run
        from domain_expert.models.tokenizer import load_tokenizer

        binary = inspect_llama_server(find_llama_server(llama_server))  # before converting anything
        src = resolve_run(run_path)
        t0 = time.time()
        weights = prepare_weights(src, precision)
        print(f"[domain-expert] llama.cpp weights ({precision}): {weights.folder} "
              f"({'reused' if weights.reused else f'converted in {time.time() - t0:.1f} s'})", flush=True)  # fmt: skip
        tokenizer = load_tokenizer(src.tokenizer_path)
        fmt = src.prompt_format(tokenizer)
        pool = min(_model_context(src), MAX_POOL_TOKENS)
        args = ["-m", str(weights.base), "-np", str(max_batch), "--kv-unified", "-c", str(pool), "--no-webui"]
        if precision == "f32":  # llama.cpp's default f16 KV cache alone moves log-probs by ~5e-3
            args += ["--cache-type-k", "f32", "--cache-type-v", "f32", "--flash-attn", "off"]
        if weights.adapter is not None:
            args += ["--lora", str(weights.adapter), "--lora-init-without-apply"]
        process = LlamaServerProcess(binary.path, args, weights.folder / "llama-server.log")
        process.start()
        info = {
            "engine": "llamacpp",
            "precision": precision,
            "llama_server": str(binary.path),
            "llama_server_version": binary.version,
            "weights": str(weights.folder),
        }
        engine = cls(process, tokenizer, fmt, name, has_base=weights.adapter is not None, context_length=pool,
                     eos_ids=_eos_ids(tokenizer, src), max_queue=max_queue, max_batch=max_batch, info=info)  # fmt: skip
        if weights.adapter is not None:
            engine.check_lora_applies()
        return engine

    @property
    def serving_path(self) -> str:
        lora = "base GGUF + LoRA GGUF per request" if self.has_base else "GGUF"
        return f"llamacpp (llama-server {self.info['llama_server_version']}, {self.info['precision']} {lora})"

    def health_info(self) -> dict:
        p = self.process
        status = "ok" if p.ready.is_set() else ("unavailable" if p.error is not None else "restarting")
        return {"status": status, **self.info, "llama_server_pid": p.pid, "llama_server_starts": p.starts}

    @property
    def ready(self) -> bool:
        return self.process.ready.is_set()

    @property
    def queue_depth(self) -> int:
        return max(0, self.admission.pending - self.max_batch)

    # --- requests -----------------------------------------------------------------------------------------------

    def _body(self, ids: list[int], request: GenerationRequest, base: bool) -> dict:
        body = {
            "prompt": ids,
            "n_predict": request.max_tokens,
            "stream": True,
            "return_tokens": True,  # streamed events carry their token ids anyway; the final answer needs this
            "cache_prompt": True,
            "temperature": request.temperature if request.temperature > 0 else 0.0,
            "top_p": request.top_p,
            "samplers": ["top_p", "temperature"],  # nothing else: llama.cpp's defaults add top-k, min-p, penalties
            "top_k": 0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "seed": request.seed if request.seed is not None else -1,
            "n_probs": max(request.logprobs or 0, 1) if request.logprobs is not None else 0,
        }
        if self.has_base:
            body["lora"] = [{"id": 0, "scale": 0.0 if base else 1.0}]
        return body

    def _http(self):
        import httpx

        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:  # one client per event loop (tests run several)
            timeout = httpx.Timeout(READ_TIMEOUT_S, connect=5.0)
            self._client = httpx.AsyncClient(
                timeout=timeout, headers={"Authorization": f"Bearer {self.process.api_key}"}
            )
            self._client_loop = loop
        return self._client

    async def _wait_ready(self) -> None:
        if self.process.ready.is_set():
            return
        if self.process.error is None:
            await asyncio.to_thread(self.process.ready.wait, READY_WAIT_S)
        if not self.process.ready.is_set():
            why = f": {self.process.error.what}" if getattr(self.process.error, "what", None) else ""
            raise EngineUnavailableError(f"the llama.cpp engine is not available (llama-server is restarting{why})")

    async def _stream(self, request: GenerationRequest):
        base = self._is_base(request.model)
        if request.echo and request.logprobs is not None:
            raise EngineError(NO_SCORING)
        await self._wait_ready()  # before admission: a stream asked while the child restarts gets a 503 status
        self.admission.admit()
        try:
            yield None
            ids = self._encode(request.prompt if request.prompt is not None else request.messages)
            result = None
            if request.max_tokens == 0:  # echo without scoring: nothing to generate
                result = GenerationResult("", "length", len(ids), 0, prompt_text=self.tokenizer.decode(ids))
            else:
                async for chunk in self._generate(ids, request, base):
                    if chunk.result is not None:
                        result = chunk.result
                    yield chunk
                return
            yield StreamChunk("", result)
        finally:
            self.admission.release()

    async def _generate(self, ids: list[int], request: GenerationRequest, base: bool):
        """Stream one completion from llama-server. Text is built per event: our decoding of the event's token ids,
        or, when llama-server held tokens back (an incomplete UTF-8 character: it then sends only the last token's
        id, with the held tokens' text in `content`), that content. With log-probs asked (never streamed to the
        client) the request is not streamed to llama-server either: its final answer lists every token id."""
        import httpx

        started = time.perf_counter()
        hold = max((len(s) for s in request.stop), default=1) - 1  # text that may still become a stop string
        gen: list[int] = []
        probs: list[dict] = []
        text, sent, finish, eos, predicted = "", 0, "length", False, 0
        body = self._body(ids, request, base)
        body["stream"] = request.logprobs is None
        try:
            async with self._http().stream("POST", self.process.url + "/completion", json=body) as resp:
                if resp.status_code != 200:
                    detail = (await resp.aread()).decode("utf-8", "replace")[:300]
                    cls = EngineUnavailableError if resp.status_code >= 500 else EngineError
                    raise cls(f"llama-server answered {resp.status_code}: {detail}")
                async for event in _events(resp, body["stream"]):
                    tokens = event.get("tokens") or []
                    if tokens and not gen and self.metrics is not None:
                        self.metrics.ttft.labels(request.model).observe(time.perf_counter() - started)
                    n_new = max(int(event.get("tokens_predicted") or 0) - predicted, len(tokens))
                    predicted += n_new if body["stream"] else 0
                    cut_eos = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
                    if cut_eos is not None:
                        tokens, eos = tokens[:cut_eos], True
                    if body["stream"] and n_new > len(tokens) and not eos:  # held tokens: their text, not ids
                        piece = event.get("content") or ""
                    else:
                        piece = self.tokenizer.decode(tokens, skip_special_tokens=True)
                    gen.extend(tokens)
                    probs.extend(event.get("completion_probabilities") or [])
                    text += piece
                    cut = find_stop(text, request.stop)
                    if cut >= 0:
                        text, finish = text[:cut], "stop"
                        break  # leaving the block closes the connection: llama-server cancels the slot
                    if eos or event.get("stop"):
                        eos = eos or event.get("stop_type") == "eos"
                        finish = "stop" if eos or event.get("stop_type") == "word" else "length"
                        break
                    safe = len(text) - hold
                    if safe > sent:
                        yield StreamChunk(text[sent:safe])
                        sent = safe
        except httpx.TransportError as e:  # the child died or stopped answering mid-request
            raise EngineUnavailableError(
                f"llama-server stopped answering during the request ({type(e).__name__}); it is being restarted,"
                " retry the request"
            ) from None
        n_gen = max(len(gen), predicted - int(eos))
        result = GenerationResult(
            text=text,
            finish_reason=finish,
            prompt_tokens=len(ids),
            completion_tokens=n_gen + int(eos),
            logprobs=self._token_logprobs(gen, probs, text) if request.logprobs is not None else None,
            prompt_text=self.tokenizer.decode(ids, skip_special_tokens=False) if request.echo else "",
        )
        if self.metrics is not None:
            self.metrics.prompt_tokens.labels(request.model).inc(result.prompt_tokens)
            self.metrics.generation_tokens.labels(request.model).inc(result.completion_tokens)
        yield StreamChunk(text[sent:] if len(text) > sent else "", result)

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def _token_logprobs(self, gen: list[int], probs: list[dict], text: str) -> list[TokenLogprob]:
        """One entry per generated token. llama-server sends no probabilities for a token it held back (its text so
        far ends in an incomplete UTF-8 character: llama.cpp's validate_utf8): those get logprob None, and the
        probabilities it did send belong, in order, to the other tokens."""
        out, offset, j, sofar = [], 0, 0, b""
        for token in gen:
            piece = self._piece(token)
            sofar += _token_bytes(self.tokenizer, token)
            lp, top = None, []
            if _utf8_complete(sofar) and j < len(probs):
                lp, top = _info(probs[j])
                j += 1
            out.append(TokenLogprob(piece, lp, [(self._piece(t), v) for t, v in top], offset))
            offset += len(piece)
            if offset >= len(text):  # a stop string cut the text: no tokens beyond it
                break
        return out

    def check_lora_applies(self) -> None:
        """Refuse a llama-server that ignores per-request LoRA scales (it would serve the tuned model as the base):
        the first token's top log-probs of a probe prompt must differ between scale 0 and scale 1. (llama-server
        sends no log-probs for an end-of-sequence token, so probes whose first token ends the answer are skipped.)"""
        import httpx

        probes = [self._encode([{"role": "user", "content": "What is anemia?"}]), self._encode("Anemia is")]
        for ids in probes:
            tops = []
            for base in (True, False):
                body = {**self._body(ids, GenerationRequest(self.name, [], 1, logprobs=5), base), "stream": False}
                r = httpx.post(self.process.url + "/completion", json=body, timeout=60.0,
                               headers={"Authorization": f"Bearer {self.process.api_key}"})  # fmt: skip
                r.raise_for_status()
                tops.append((r.json().get("completion_probabilities") or [{}])[0].get("top_logprobs"))
            if None not in tops:
                break
        else:
            return
        if tops[0] == tops[1]:
            self.close()
            raise LlamaCppUnavailableError(
                "llama-server gave identical log-probs with the adapter at scale 0 and 1: it does not apply"
                " per-request LoRA scales, so <name> and <name>:base would be the same model",
                where=self.info["llama_server"],
                fix="build a recent llama-server with `make llamacpp` (if the adapter is all zeros, train it first)",
            )

    def close(self) -> None:
        self.process.stop()


async def _events(resp, stream: bool):
    """The JSON objects of llama-server's server-sent events (`data: {...}` lines), or its one JSON answer when not
    streamed; an error raises."""
    if not stream:
        event = json.loads(await resp.aread())
        if "error" in event:
            raise EngineError(f"llama-server: {event['error']}")
        yield event
        return
    async for line in resp.aiter_lines():
        if not line.startswith("data: "):
            continue
        event = json.loads(line[6:])
        if "error" in event:
            err = event["error"]
            raise EngineError(f"llama-server: {err.get('message', err) if isinstance(err, dict) else err}")
        yield event


def _info(prob: dict) -> tuple[float | None, list[tuple[int, float]]]:
    """(chosen token's log-prob, [(id, log-prob)] of the top n_probs) from one completion_probabilities entry."""
    return prob.get("logprob"), [(t["id"], t["logprob"]) for t in prob.get("top_logprobs") or []]


def _utf8_complete(data: bytes) -> bool:
    """llama.cpp's validate_utf8 (tools/server): False when the last 1-3 bytes start a multi-byte character that
    is cut off."""
    for i in range(1, min(4, len(data)) + 1):
        c = data[-i]
        if (c & 0xE0) == 0xC0 and i < 2 or (c & 0xF0) == 0xE0 and i < 3 or (c & 0xF8) == 0xF0 and i < 4:
            return False
    return True


def _token_bytes(tokenizer, token: int) -> bytes:
    """A token's raw bytes, as llama.cpp concatenates them (byte-level BPE: GPT-2's byte-to-unicode map undone)."""
    piece = tokenizer.convert_ids_to_tokens(token)
    if token in getattr(tokenizer, "all_special_ids", ()):
        return b""  # control tokens render as nothing (llama-server's default)
    table = _unicode_to_byte()
    if piece is None or any(ch not in table for ch in piece):
        return (piece or "").encode("utf-8")
    return bytes(table[ch] for ch in piece)


def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted (byte-level BPE vocabularies store bytes as these characters)."""
    global _U2B
    if _U2B is None:
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
        cs, n = bs[:], 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        _U2B = {chr(c): b for b, c in zip(bs, cs, strict=True)}
    return _U2B


_U2B: dict[str, int] | None = None


def _eos_ids(tokenizer, src) -> set[int]:
    """The tokenizer's EOS and the model's generation_config EOS ids: where the transformers engine stops too."""
    from domain_expert.models.kinds import load_config

    ids = {tokenizer.eos_token_id}
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(src.weights.path).eos_token_id
    except (OSError, ValueError):
        eos = getattr(load_config(src.weights.path), "eos_token_id", None)
    ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    ids.discard(None)
    return ids


def _model_context(src) -> int:
    from domain_expert.models.kinds import load_config

    return int(getattr(load_config(src.weights.path), "max_position_embeddings", 2048))

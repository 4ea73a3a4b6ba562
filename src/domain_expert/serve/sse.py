"""Streamed responses: server-sent events in OpenAI's chunk shapes, one `data: {json}` per event, ending with
`data: [DONE]`. The n choices (times the prompts) of one request stream side by side, interleaved as they arrive."""

from __future__ import annotations

import asyncio
import json

from fastapi.responses import StreamingResponse

from domain_expert.serve.api_errors import error_body
from domain_expert.serve.engine import EngineUnavailableError, GenerationResult
from domain_expert.serve.responses import usage


def sse_response(gen) -> StreamingResponse:
    # X-Accel-Buffering: nginx would otherwise hold the tokens back until its buffer fills
    return StreamingResponse(
        gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def merge(streams: list):
    """Interleave several engine streams as (choice index, chunk) in arrival order; closing it closes them all."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i, st):
        try:
            async for chunk in st:
                await queue.put((i, chunk, None))
        except Exception as e:
            await queue.put((i, None, e))
        finally:
            await queue.put((i, None, None))

    tasks = [asyncio.create_task(pump(i, st)) for i, st in enumerate(streams)]
    open_ = len(streams)
    try:
        while open_:
            i, chunk, err = await queue.get()
            if err is not None:
                raise err
            if chunk is None:
                open_ -= 1
                continue
            yield i, chunk
    finally:
        for t in tasks:
            t.cancel()
        for st in streams:
            await st.aclose()


async def _events(merged, make_event, usage_event, include_usage: bool, n: int, per_prompt: int):
    """Shared SSE loop: per-choice events, then usage (if asked) and [DONE]; errors after the headers go in-band."""
    results: dict[int, GenerationResult] = {}
    try:
        async for i, chunk in merged:
            for event in make_event(i, chunk):
                yield event
            if chunk.result is not None:
                results[i] = chunk.result
        if include_usage and len(results) == n:
            yield usage_event(usage([results[i] for i in sorted(results)], per_prompt))
        yield "data: [DONE]\n\n"
    except Exception as e:  # headers are sent: report in-band, as OpenAI does
        code = "engine_unavailable" if isinstance(e, EngineUnavailableError) else None
        yield f"data: {json.dumps(error_body(f'generation failed: {e}', type='server_error', code=code))}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        await merged.aclose()


def chat_sse(merged, n: int, cid: str, created: int, model: str, include_usage: bool):
    def data(choices: list, usage=None, with_usage=False) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
        if with_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    def choice(i: int, delta: dict, finish=None) -> list:
        return [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}]

    started: set[int] = set()

    def make_event(i: int, chunk):
        if i not in started:  # the role comes first in each choice's stream
            started.add(i)
            yield data(choice(i, {"role": "assistant", "content": ""}), with_usage=include_usage)
        if chunk.text:
            yield data(choice(i, {"content": chunk.text}), with_usage=include_usage)
        if chunk.result is not None:
            yield data(choice(i, {}, chunk.result.finish_reason), with_usage=include_usage)

    return _events(merged, make_event, lambda u: data([], u, with_usage=True), include_usage, n, n)


def completion_sse(merged, echo: list[str], n: int, cid: str, created: int, model: str, include_usage: bool):
    def data(choices: list, usage=None, with_usage=False) -> str:
        body = {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices}
        if with_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    echoed: set[int] = set()

    def make_event(i: int, chunk):
        text = chunk.text
        if echo[i] and i not in echoed:
            echoed.add(i)
            text = echo[i] + text
        finish = chunk.result.finish_reason if chunk.result is not None else None
        if text or finish:
            choice = {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
            yield data([choice], with_usage=include_usage)

    return _events(merged, make_event, lambda u: data([], u, with_usage=True), include_usage, len(echo), n)

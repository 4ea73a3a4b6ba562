"""Whole (non-streamed) response bodies of the OpenAI routes: chat and text completions, usage, and the two log-prob
shapes (chat's per-token objects, the legacy completions' parallel lists)."""

from __future__ import annotations

from domain_expert.serve.engine import GenerationRequest, GenerationResult


def chat_completion_body(cid: str, created: int, model: str, results: list[GenerationResult], logprobs: bool) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": r.text},
                "logprobs": chat_logprobs(r) if logprobs else None,
                "finish_reason": r.finish_reason,
            }
            for i, r in enumerate(results)
        ],
        "usage": usage(results, len(results)),
    }


def completion_body(
    cid: str, created: int, model: str, reqs: list[GenerationRequest], results: list[GenerationResult], n: int
) -> dict:
    choices = []
    for i, (req, r) in enumerate(zip(reqs, results, strict=True)):
        text = (req.prompt + r.text) if req.echo else r.text
        lp = None
        if req.logprobs is not None:
            lp = completion_logprobs(r, req.prompt if req.echo else None)
        choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": r.finish_reason})
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage(results, n),
    }


def usage(results: list[GenerationResult], n: int = 1) -> dict:
    # the n choices of a prompt are adjacent and share it: count each prompt once, as OpenAI does
    prompt = sum(r.prompt_tokens for r in results[::n])
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_logprobs(r: GenerationResult) -> dict:
    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [
            {**entry(t.token, t.logprob), "top_logprobs": [entry(tok, lp) for tok, lp in t.top]}
            for t in (r.logprobs or [])
        ]
    }


def completion_logprobs(r: GenerationResult, echo_prompt: str | None) -> dict:
    """The legacy completions shape: parallel lists tokens / token_logprobs / top_logprobs / text_offset."""
    rows = []
    shift = 0
    if echo_prompt is not None:
        rows.extend(r.prompt_logprobs or [])
        shift = len(echo_prompt)
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for i, t in enumerate(rows + list(r.logprobs or [])):
        out["tokens"].append(t.token)
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append(None if t.logprob is None else dict(t.top))
        out["text_offset"].append(t.offset + (shift if i >= len(rows) else 0))
    return out

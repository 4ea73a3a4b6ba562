"""Choosing each row's next token (greedy, or temperature / top-p with the row's own seeded generator) and the
log-probabilities a request asked for, of its generated tokens and of its prompt."""

from __future__ import annotations

from domain_expert.serve.decoding.lanes import Sequence


def sample(seqs: list[Sequence], logits) -> list[tuple[int, tuple | None]]:
    """One token per row, each row with its own settings; returns [(id, logprob_info|None)]."""
    import torch

    # max(-1).indices: the same first-maximum index as argmax, ~3x faster on CPU here (160 vs 490 us for 16 rows
    # of SmolLM2's 49k-token vocabulary); one list conversion, not one tensor read per row
    picks = logits.max(-1).indices.tolist()
    need_logp = any(s.logprobs is not None for s in seqs)
    if not need_logp and all(s.temperature <= 0 for s in seqs):  # all greedy: the common case under load
        return [(token, None) for token in picks]
    logp = torch.log_softmax(logits, dim=-1) if need_logp else None
    out = []
    for i, s in enumerate(seqs):
        token = picks[i]
        if s.temperature > 0:
            if s.generator is None:
                s.generator = torch.Generator(device="cpu")
                s.generator.manual_seed(s.seed if s.seed is not None else torch.seed())
            probs = torch.softmax(logits[i].cpu() / s.temperature, dim=-1)
            if s.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(-1) - sorted_p < s.top_p  # always keeps the most likely token
                probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
            token = int(torch.multinomial(probs, 1, generator=s.generator))
        info = None
        if logp is not None and s.logprobs is not None:
            top = []
            if s.logprobs > 0:
                v, k = logp[i].topk(s.logprobs)
                top = list(zip(k.tolist(), v.tolist(), strict=True))
            info = (float(logp[i, token]), top)
        out.append((token, info))
    return out


def emit_prompt_logprobs(seqs: list[Sequence], ids, logits, width: int) -> None:
    """Emit ("prompt_logprobs", rows) for each sequence that asked, from a prefill's logits at every position
    (prompts left-padded to `width`): one (id, logprob, top|None) per prompt token, None for the first."""
    import torch

    logp = torch.log_softmax(logits[:, :-1, :], dim=-1)
    chosen = logp.gather(-1, ids[:, 1:, None].to(logp.device))[..., 0]
    for i, s in enumerate(seqs):
        if not s.prompt_logprobs:
            continue
        n = len(s.prompt_ids)
        start = width - n
        rows = []
        for t in range(start, width):
            if t == start:
                rows.append(None)  # the first token has no context to be predicted from
                continue
            lp = float(chosen[i, t - 1])
            top = None
            if s.logprobs:
                v, k = logp[i, t - 1].topk(s.logprobs)
                top = list(zip(k.tolist(), v.tolist(), strict=True))
            rows.append((int(ids[i, t]), lp, top))
        s.emit("prompt_logprobs", rows)

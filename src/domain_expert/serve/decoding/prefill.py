"""A prefill group's inputs. Prompts are left-padded to a common width (so that every row's last token is in the last
column, where decoding continues), and prompts that start with the chat template's shared prefix skip it: its
keys/values are computed once per lane and reused."""

from __future__ import annotations

from domain_expert.serve.decoding.lanes import Sequence


def split_prefix(seqs: list[Sequence], prefix: tuple[int, ...]) -> tuple[list, list]:
    """(sequences whose prompts extend the shared prefix, the others): the prefix serves prompts that extend it,
    unless every prompt token's log-prob is asked."""
    p = len(prefix)
    cached, rest = [], []
    for s in seqs:
        use = p and not s.prompt_logprobs and len(s.prompt_ids) > p and tuple(s.prompt_ids[:p]) == prefix
        (cached if use else rest).append(s)
    return cached, rest


def prefill_inputs(seqs: list[Sequence], pad_id: int, prefix: tuple[int, ...], prefix_kv) -> tuple:
    """(ids, mask, positions, cache) of a prefill group: prompts left-padded, after the shared prefix's cached
    keys/values when `prefix_kv` is given (rows then look like [prefix][padding][rest of the prompt])."""
    import torch
    from transformers import DynamicCache

    skip = len(prefix) if prefix_kv is not None else 0
    prompts = [s.prompt_ids[skip:] for s in seqs]
    width = max(len(x) for x in prompts)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, x in enumerate(prompts):
        ids[i, width - len(x) :] = torch.tensor(x)
        mask[i, width - len(x) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0) + skip
    if prefix_kv is not None:
        rows = len(seqs)
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix_kv]
        )
        full_mask = torch.cat([torch.ones((rows, skip), dtype=torch.long), mask], dim=1)
    else:
        cache, full_mask = DynamicCache(), mask
    return ids, full_mask, positions, cache

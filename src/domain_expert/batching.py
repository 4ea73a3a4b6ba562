"""Tokenised examples and length-grouped batches (little padding, deterministic order for a seed and epoch)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from domain_expert.data.records import Record
from domain_expert.prompts import PromptFormat

IGNORE = -100


@dataclass
class Example:
    ids: list[int]
    start: int  # first answer token: loss is taken on ids[start:] (0 for raw text)


def encode_records(records: list[Record], fmt: PromptFormat, tokenizer, max_len: int) -> tuple[list[Example], int]:
    """Returns the examples and how many were truncated to max_len."""
    out, truncated = [], 0
    for r in records:
        if r.is_text:
            ids = tokenizer(r.text, add_special_tokens=False)["input_ids"]
            if tokenizer.bos_token_id is not None and fmt.style == "plain":
                ids = [tokenizer.bos_token_id] + ids
            truncated += len(ids) > max_len
            out.append(Example(ids[:max_len], 1))
        else:
            ids, start, cut = fmt.encode_example(tokenizer, r.prompt or "", r.completion or "", max_len)
            truncated += cut
            if start < len(ids):  # a prompt that fills max_len leaves nothing to learn
                out.append(Example(ids, start))
    return out, truncated


def length_grouped_batches(
    n_examples: int, lengths: list[int], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """Shuffle, sort within windows of 50 batches by length, then shuffle the batches: examples of similar length
    share a batch (little padding) while the order still varies by epoch."""
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(n_examples))
    rng.shuffle(idx)
    window = batch_size * 50
    batches = []
    for w in range(0, n_examples, window):
        chunk = sorted(idx[w : w + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], pad_id: int):
    """Right-padded input ids, attention mask and labels (IGNORE on prompt and padding)."""
    import torch

    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        labels[i, e.start : n] = ids[i, e.start : n]
    return ids, mask, labels


def split_by_tokens(batch: list[int], lengths: list[int], max_tokens: int | None) -> list[list[int]]:
    """Split one batch into micro-batches whose padded size (rows x longest row) stays within max_tokens.
    Rows are taken longest first so each micro-batch pads little; a single over-long row is its own micro-batch."""
    if not max_tokens:
        return [batch]
    rows = sorted(batch, key=lambda i: lengths[i], reverse=True)
    out: list[list[int]] = []
    cur: list[int] = []
    for i in rows:
        width = lengths[cur[0]] if cur else lengths[i]  # rows are sorted: the first is the widest
        if cur and width * (len(cur) + 1) > max_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out

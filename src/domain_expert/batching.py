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
    n_examples: int, lengths: list[int], batch_size: int, seed: int, epoch: int, window: int = 50
) -> list[list[int]]:
    """Shuffle, sort within windows of `window` batches by length, then shuffle the batches: examples of similar
    length share a batch (little padding) while the order still varies by epoch. window=1: random batches."""
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(n_examples))
    rng.shuffle(idx)
    window = batch_size * window
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


# What one more forward/backward pass costs beyond its tokens, in tokens (per-layer calls, the shared-prefix pass):
# the split below pads a little more rather than run a pass for a few rows. bench/train_levers.py measures it.
PASS_OVERHEAD_TOKENS = 128


def split_by_tokens(
    batch: list[int], lengths: list[int], max_tokens: int | None, overhead: int = PASS_OVERHEAD_TOKENS
) -> list[list[int]]:
    """Split one batch into micro-batches (forward/backward passes whose gradients add up to the batch's): rows
    sorted longest first, cut where the cost, padded tokens plus `overhead` per pass, is least, with each
    micro-batch's padded size (rows x longest row) within max_tokens (a single over-long row is its own
    micro-batch). A batch of mixed lengths thus runs as a few passes of similar lengths instead of one padded to its
    longest row: random batches (the examples a step sees) with little padding. Exact over contiguous splits of the
    sorted rows (dynamic programming; a batch is tens of rows)."""
    rows = sorted(batch, key=lambda i: lengths[i], reverse=True)
    n = len(rows)
    cap = max_tokens or float("inf")
    best = [0.0] + [float("inf")] * n  # best[j]: least cost of the first j rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):  # group rows[i:j]; rows[i] is its longest
            size = lengths[rows[i]] * (j - i)
            if size > cap and j - i > 1:
                break  # a wider group (smaller i) is only bigger
            cost = best[i] + size + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out: list[list[int]] = []
    j = n
    while j > 0:
        out.append(rows[cut[j] : j])
        j = cut[j]
    return out[::-1]

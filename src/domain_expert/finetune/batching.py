"""Tokenised examples; batches (random or length-grouped, a pure function of seed and epoch); and the forward passes
a batch runs as: packed rows (several examples per row, none attending to another: no padding) or padded rows."""

from __future__ import annotations

import random
from dataclasses import dataclass

from domain_expert.data.records import Record
from domain_expert.likelihood import MIN_SHARED_PREFIX, Example
from domain_expert.prompts import PromptFormat


def encode_records(records: list[Record], fmt: PromptFormat, tokenizer, max_len: int) -> tuple[list[Example], int]:
    """Returns the examples and how many were truncated to max_len."""
    out, truncated = [], 0
    for r in records:
        if r.is_text:
            ids = fmt.encode_text(tokenizer, r.text)
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


def common_prefix_len(examples: list[Example]) -> int:
    """Tokens every example starts with and none is trained on (a shared system prompt): a packed row holds them
    once. 0 when fewer than MIN_SHARED_PREFIX."""
    if len(examples) < 2:
        return 0
    first = examples[0].ids
    n = min(min(e.start for e in examples), min(len(e.ids) for e in examples) - 1)
    for e in examples[1:]:
        i = 0
        while i < n and e.ids[i] == first[i]:
            i += 1
        n = i
    return n if n >= MIN_SHARED_PREFIX else 0


@dataclass
class Packed:
    """Several examples per row, none attending to another: a row is [shared prefix][example 1][example 2]...,
    each example's tokens attend to the prefix and to their own earlier tokens, and its positions continue from the
    prefix as if it were alone. Loss is taken at `target` from the hidden states at flat row positions `source`."""

    ids: object  # [rows, width] long
    positions: object  # [rows, width] long
    allowed: object  # [rows, 1, width, width] bool: query may attend to key
    source: object  # [N] long: index into rows*width of the hidden state that predicts each target
    target: object  # [N] long
    tokens: int  # the examples' own tokens (prefix counted once per example): what an unpacked pass would see
    rows: int

    def to(self, device) -> Packed:
        t = ("ids", "positions", "allowed", "source", "target")
        return Packed(**{k: getattr(self, k).to(device) for k in t}, tokens=self.tokens, rows=self.rows)


def _row_width(examples: list[Example], row: list[int], prefix: int) -> int:
    """Tokens in a packed row: one copy of the shared prefix, then each example's tokens after it."""
    return prefix + sum(len(examples[i].ids) - prefix for i in row)


def pack_rows(examples: list[Example], row_tokens: int, prefix: int | None = None) -> list[list[int]]:
    """Example indices per row: first-fit decreasing so rows hold at most `row_tokens` tokens (prefix included)
    and come out nearly full. An example longer than a row gets a row of its own. `prefix`: common_prefix_len of
    `examples`, when the caller has it already."""
    p = common_prefix_len(examples) if prefix is None else prefix
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(examples)), key=lambda i: len(examples[i].ids), reverse=True):
        need = len(examples[i].ids) - p
        for r, f in enumerate(free):
            if need <= f:
                rows[r].append(i)
                free[r] -= need
                break
        else:
            rows.append([i])
            free.append(row_tokens - p - need)
    return rows


def packed_micro_batches(examples: list[Example], row_tokens: int, max_tokens: int | None) -> list[list[list[int]]]:
    """Rows of `examples` (pack_rows) grouped into forward/backward passes of at most max_tokens padded tokens
    (rows x widest row; a row wider than that is a pass of its own), widest rows first."""
    p = common_prefix_len(examples)
    rows = pack_rows(examples, row_tokens, p)
    width = {id(r): _row_width(examples, r, p) for r in rows}
    rows.sort(key=lambda r: width[id(r)], reverse=True)
    cap = max_tokens or float("inf")
    out: list[list[list[int]]] = []
    for r in rows:  # widest first: a pass's padded size is its first row's width x its row count
        if out and width[id(out[-1][0])] * (len(out[-1]) + 1) <= cap:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def collate_packed(examples: list[Example], rows: list[list[int]], pad_id: int) -> Packed:
    """Tensors for `rows` (from pack_rows) of `examples`; padding at the end of short rows attends only to itself."""
    import torch

    p = common_prefix_len(examples)
    width = max(_row_width(examples, row, p) for row in rows)
    n_rows = len(rows)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    seg = torch.full((n_rows, width), -1, dtype=torch.long)  # -1 padding, 0 prefix, k example k of the row
    source, target = [], []
    for r, row in enumerate(rows):
        if p:
            ids[r, :p] = torch.tensor(examples[row[0]].ids[:p])
            pos[r, :p] = torch.arange(p)
            seg[r, :p] = 0
        o = p
        for k, i in enumerate(row, start=1):
            e = examples[i]
            s = len(e.ids) - p
            ids[r, o : o + s] = torch.tensor(e.ids[p:])
            pos[r, o : o + s] = torch.arange(p, p + s)
            seg[r, o : o + s] = k
            # token j of the example sits at row slot j (prefix) or o + j - p; it is predicted from slot of j - 1
            for j in range(max(1, e.start), len(e.ids)):
                prev = j - 1
                source.append(r * width + (prev if prev < p else o + prev - p))
                target.append(e.ids[j])
            o += s
        pos[r, o:] = torch.arange(width - o)
    q, k = seg.unsqueeze(2), seg.unsqueeze(1)  # [rows, width, 1], [rows, 1, width]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & ((q == k) | (k == 0)) & (q != -1)
    allowed |= torch.eye(width, dtype=torch.bool)  # padding attends to itself: no empty softmax rows
    return Packed(
        ids=ids,
        positions=pos,
        allowed=allowed.unsqueeze(1),
        source=torch.tensor(source, dtype=torch.long),
        target=torch.tensor(target, dtype=torch.long),
        tokens=sum(len(examples[i].ids) for row in rows for i in row),
        rows=n_rows,
    )

"""The scheduler's units of work: a `Sequence` (one completion being generated) and a `Lane` (the running batch of one
model variant, tuned or base: its rows and their key/value cache, kept aligned as rows join and leave)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TUNED, BASE = "tuned", "base"


@dataclass
class Sequence:
    """One completion being generated. `emit(kind, payload)` is called from the worker thread:
    ("prompt_logprobs", list) once if asked, ("token", (id, logprob_info|None)) per token, ("done", reason) last, or
    ("error", message)."""

    prompt_ids: list[int]
    max_new_tokens: int
    emit: Callable[[str, object], None]
    lane: str = TUNED
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None  # top-k alternatives per generated token (0: only the chosen token's)
    prompt_logprobs: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    # worker state
    generated: int = 0
    generator: object = None
    enqueued_at: float = field(default_factory=time.monotonic)


class Lane:
    """A running batch. With `slots`, the cache is a SlotKV (kv_slots.py) written in place; otherwise a DynamicCache
    whose tensors ([batch, heads, time, dim]) are concatenated and index-selected here."""

    def __init__(self, name: str):
        self.name = name
        self.rows: list[Sequence] = []
        self.cache = None  # DynamicCache or SlotKV, batch dim aligned with rows
        self.mask = None  # [rows, time] long, 1 = real token
        self.lengths = None  # [rows] real tokens per row (next position id)
        self.last = None  # [rows] last sampled token
        self.prefix_kv = None  # the shared prefix's [(keys, values)] per layer, computed on first use
        self.pending: list = []  # admitted sequences to prefill inside the lane's next decoding step

    def clear(self) -> None:
        self.rows, self.cache, self.mask, self.lengths, self.last = [], None, None, None, None

    def join(self, seqs: list[Sequence], cache, mask, lengths, *, slots: bool) -> None:
        """Add prefilled rows: the shorter of the two caches (and masks) is left-padded to the other's width, the
        padding masked."""
        import torch

        if not self.rows:
            if slots:
                from domain_expert.serve.decoding.kv_slots import SlotKV

                cache = SlotKV([(layer.keys, layer.values) for layer in cache.layers])
            self.rows, self.cache, self.mask, self.lengths = list(seqs), cache, mask, lengths
            self.last = torch.zeros(len(seqs), dtype=torch.long)
            return
        t_old, t_new = self.mask.shape[1], mask.shape[1]
        width = max(t_old, t_new)

        def pad_left(x, t, dim):
            if t == width:
                return x
            shape = list(x.shape)
            shape[dim] = width - t
            return torch.cat([x.new_zeros(shape), x], dim=dim)

        if slots:  # written into the buffers' next rows, right-aligned; the window widens as the mask does
            self.cache.join([(layer.keys, layer.values) for layer in cache.layers])
        else:
            for old, new in zip(self.cache.layers, cache.layers, strict=True):
                old.keys = torch.cat([pad_left(old.keys, t_old, 2), pad_left(new.keys, t_new, 2)], dim=0)
                old.values = torch.cat([pad_left(old.values, t_old, 2), pad_left(new.values, t_new, 2)], dim=0)
        self.mask = torch.cat([pad_left(self.mask, t_old, 1), pad_left(mask, t_new, 1)], dim=0)
        self.lengths = torch.cat([self.lengths, lengths])
        self.last = torch.cat([self.last, torch.zeros(len(seqs), dtype=torch.long)])
        self.rows.extend(seqs)

    def keep_rows(self, keep: list[int], *, slots: bool, device) -> None:
        """Drop every row not in `keep` (ascending row indices), then the leading columns that are padding in every
        remaining row."""
        import torch

        if len(keep) == len(self.rows):
            return
        if not keep:
            self.clear()
            return
        if slots:  # holes filled from the end of the batch (kv_slots.py): the rows' order changes alike
            keep = self.cache.keep(keep)
        index = torch.tensor(keep, dtype=torch.long)
        dev_index = index.to(device)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.lengths, self.last = self.mask[index], self.lengths[index], self.last[index]
        # columns that are padding in every remaining row cost attention time for nothing
        lead = int((self.mask.cumsum(1) == 0).all(0).sum())
        if lead:
            self.mask = self.mask[:, lead:].contiguous()
        if slots:
            self.cache.trim(lead)
            return
        for layer in self.cache.layers:  # sliced first, so that the selected rows come out contiguous
            layer.keys = layer.keys[:, :, lead:].index_select(0, dev_index)
            layer.values = layer.values[:, :, lead:].index_select(0, dev_index)

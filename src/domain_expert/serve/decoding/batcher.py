"""Continuous batching for causal LMs on transformers models, on one worker thread.

Why our own: transformers 5.24's `generate_batch` (paged attention) works on CPU but gave ~74 tokens/s for 16 prompts
where a plain static batch gives several times more (~190 tokens/s fp32, measured on a 2-core EPYC), and
`transformers serve --continuous-batching` builds on it. A static batch, in turn, makes a new request wait for the
slowest one in flight. So the scheduler here keeps a running batch per *lane* and, between two decoding steps:

- prefills the requests that arrived (together, left-padded, computing logits at the last position only unless
  prompt log-probabilities were asked for) and joins them to their lane's batch by left-padding the shorter of the
  two KV caches (a DynamicCache, tensors [batch, heads, time, dim]) and masking the padding;
- drops rows that finished (EOS, max_tokens, context full, cancelled by the client or by a stop string) with an
  index-select on the cache, then trims leading columns that are padding in every row.

Two lanes: the tuned model and, for a LoRA run, its base. The adapter is merged into the weights (what `export`
ships; merged decoding is 1.6x faster than unmerged LoRA on CPU, bench/cpu_levers.py), and the base lane subtracts
the adapter's low-rank delta again: one copy of the weights, and the base is exact up to the rounding of the merged
weights (checked in tests/test_serve_batching.py).

Forward passes go through the lean decoder (lean_decoder.py) for Llama-style models: the same arithmetic with fewer
operations and pre-packed weights, the base lane's delta inside its products (on CPU by default; `decoder="lean"`
elsewhere). Other models (or `decoder="transformers"`) run the transformers forward, the base lane's delta then
through forward hooks that exist only while a base step runs. With `compile=True` the tuned lane's decoding steps
run the lean step compiled with frozen weights (compiled_step.py).

Thread model: `submit` is called from the server's event loop; everything touching the model runs on the worker
thread; results go back through each sequence's `emit` callback (which must be thread-safe; it may queue events
until the scheduler calls `flush`, which it does after each prefill group, decoding step and pass of its loop).

The scheduling is here; the pieces it works with beside it: lanes.py (a sequence, a lane's rows and their cache as
rows join and leave), prefill.py (a prefill group's inputs, the shared prefix), sampling.py (the next token, the
log-probabilities asked for), lora_delta.py (the base lane's delta as forward hooks).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable

from domain_expert.models.compat import cache_kwarg
from domain_expert.models.heads import logits_are_head
from domain_expert.serve.decoding.lanes import BASE, TUNED, Lane, Sequence
from domain_expert.serve.decoding.prefill import prefill_inputs, split_prefix
from domain_expert.serve.decoding.sampling import emit_prompt_logprobs, sample

log = logging.getLogger(__name__)


def _sliding_window(model) -> bool:
    cfg = model.config
    types = getattr(cfg, "layer_types", None) or ()
    return bool(getattr(cfg, "sliding_window", None)) and (
        "sliding_attention" in types or (not types and getattr(cfg, "use_sliding_window", True))
    )


class BatchScheduler:
    """Owns the model: accepts `Sequence`s from any thread, generates them in continuously updated batches."""

    def __init__(
        self,
        build: Callable[[], dict],
        *,
        max_batch: int = 32,
        max_prefill_tokens: int = 2048,
        max_wait: float = 0.25,
        on_step: Callable[[dict], None] | None = None,
        flush: Callable[[], None] | None = None,
        decoder: str = "auto",
        compile: bool = False,
        mix_prefill: bool = True,
    ):
        """`build()` runs on the worker thread and returns the model and its settings (see `_configure`). Loading
        and running the model on one thread matters on CPU: a decoding step run on another thread than the one that
        did the model's first parallel work was ~28% slower here (35 vs 45 ms per SmolLM2 step at batch 1; OpenMP
        thread teams are per calling thread; bench/serve_levers.py)."""
        self.max_batch = max_batch
        self.max_prefill_tokens = max_prefill_tokens
        self.max_wait = max_wait
        if decoder not in ("auto", "lean", "transformers"):
            raise ValueError(f"decoder must be auto, lean or transformers, not {decoder!r}")
        self.decoder_choice = decoder
        self.compile = compile
        self.serving_path = "not loaded"  # which forward serves the model and why (set on loading: _configure)
        # arrivals for a lane that is decoding are prefilled inside its next decoding step: one pass of the matrix
        # products over both (LeanDecoder.mixed); off, or without the eager lean decoder, a prefill is its own pass
        self.mix_prefill = mix_prefill
        # Waiting for a quarter of the batch (or max_wait) before prefilling: tried 1/2 with 0.5 s and 1/8 with
        # 0.1 s at 16 clients, 150 / 131 vs 151 tokens/s in-process; waiting longer buys nothing measurable.
        self.prefill_fraction = 4
        self.on_step = on_step
        # called after each prefill group, decoding step and pass of the loop: sequences' `emit` may only queue
        # their events, delivered in one batch per call (engine.LoopMailbox)
        self.flush = flush or (lambda: None)
        self.inbox: queue.Queue = queue.Queue()
        self.waiting: list[Sequence] = []
        self.lanes = {TUNED: Lane(TUNED), BASE: Lane(BASE)}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._build, self._build_error = build, None
        self._thread = threading.Thread(target=self._loop, name="batch-scheduler", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._build_error is not None:
            raise self._build_error

    def _configure(self, model, eos_ids, pad_id, context_length, base_delta=None, prefix=None) -> None:
        self.model = model
        self.eos_ids = set(eos_ids)
        self.pad_id = pad_id
        self.context_length = context_length
        self.base_delta = base_delta
        # Token prefix most prompts share (the chat template's system turn): its keys/values are computed once per
        # lane and reused, so a prefill only computes the tokens after it.
        self.prefix = tuple(prefix or ())
        self.device = next(model.parameters()).device
        self.decoder, self.head = model.get_decoder(), model.get_output_embeddings()
        self.cache_arg = cache_kwarg(self.decoder)
        # the head may run on the decoder's hidden states alone only where the logits are exactly head(hidden);
        # otherwise the model's own forward runs, its logits processing included (soft-capping, scaling)
        self.head_only = logits_are_head(model)
        self.lean, reason = self._admit_lean(model, base_delta)
        if self.lean is None:
            how = "decoder + head" if self.head_only else "the model's own forward, its logits processing included"
            self.serving_path = f"transformers forward ({how}; reason: {reason})"
            if _sliding_window(model) and self.prefix:
                # a cached prefix leaves padding inside rows ([prefix][padding][rest]); transformers' sliding-window
                # mask counts cache columns, padding included, so windows would be cut short: no shared prefix
                self.prefix = ()
        log.info("serving path: %s", self.serving_path)
        # the tuned lane's decoding steps compiled with frozen weights (compiled_step.py), compiled here, before the
        # server reports healthy, rather than on the first requests
        self.compiled = None
        if self.compile:
            if self.lean is None:
                log.warning("compile needs the lean decoder (Llama-style models, decoder auto or lean): not compiled")
            else:
                from domain_expert.serve.decoding.compiled_step import CompiledStep

                self.compiled = CompiledStep(self.lean)
                log.info("compiled the decoding step in %.0f s", self.compiled.warm_up())
                self.serving_path += ", tuned decoding steps compiled"
        # the lean decoder's lanes keep keys/values in preallocated buffers written in place (kv_slots.py); the
        # transformers forward and the compiled step (whose graphs are specialised to contiguous caches) concatenate
        self.slots = self.lean is not None and self.compiled is None

    def _admit_lean(self, model, base_delta) -> tuple:
        """(the lean decoder, None) if the model is admitted to it and its probe passes, else (None, why not)."""
        if self.decoder_choice == "transformers":
            return None, "decoder transformers chosen"
        if self.decoder_choice == "auto" and self.device.type != "cpu":
            return None, "the lean decoder is measured on CPUs only (decoder lean chooses it)"
        from domain_expert.serve.decoding.admission import probe, unsupported
        from domain_expert.serve.decoding.lean_decoder import LeanDecoder

        why = unsupported(model)
        if why is not None:
            return None, f"not admitted to the lean path: {why}"
        lean = LeanDecoder(model, base_delta)
        diff, tolerance = probe(model, lean, base_delta)
        if not diff <= tolerance:  # NaN fails too
            log.warning("lean decoder probe failed (max |dlogprob| %.2g > %.2g): transformers forward", diff, tolerance)
            return None, f"lean probe failed: max |dlogprob| {diff:.2g} > {tolerance:.2g}"
        self.serving_path = f"lean (Llama-style fast path, probe passed: max |dlogprob| {diff:.1g})"
        return lean, None

    # --- public --------------------------------------------------------------------------------------------------

    def submit(self, seq: Sequence) -> None:
        if seq.lane == BASE and self.base_delta is None:
            raise ValueError("this model has no base lane (no LoRA adapter)")
        self.inbox.put(seq)

    @property
    def running(self) -> int:
        return sum(len(lane.rows) for lane in self.lanes.values())

    def close(self) -> None:
        self._stop.set()
        self.inbox.put(None)
        self._thread.join(timeout=10)

    # --- worker --------------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        try:
            self._configure(**self._build())
        except BaseException as e:  # reported to the constructor's caller
            self._build_error = e
            return
        finally:
            self._ready.set()
        while not self._stop.is_set():
            block = not self.waiting and self.running == 0
            self._drain(block)
            if self._stop.is_set():
                break
            try:
                self._admit()
                for lane in self.lanes.values():
                    if lane.rows:
                        self._decode(lane)
            except Exception as e:  # never leave a client hanging: fail what was in flight, keep serving
                log.exception("batch step failed")
                self._fail_all(f"{type(e).__name__}: {e}")
            finally:
                self.flush()

    def _drain(self, block: bool) -> None:
        try:
            item = self.inbox.get(timeout=None) if block else self.inbox.get_nowait()
            while True:
                if item is not None:
                    self.waiting.append(item)
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass

    def _fail_all(self, message: str) -> None:
        seqs = [seq for lane in self.lanes.values() for seq in lane.rows + lane.pending] + self.waiting
        for lane in self.lanes.values():
            lane.clear()
            lane.pending = []
        self.waiting = []
        for seq in seqs:
            with contextlib.suppress(Exception):
                seq.emit("error", message)

    def _lane_context(self, lane: Lane):
        return self.base_delta.subtracting() if lane.name == BASE else contextlib.nullcontext()

    def _admit(self) -> None:
        """Prefill waiting sequences (oldest first, within the batch and prefill-token budgets) into their lanes."""
        self.waiting = [s for s in self.waiting if not self._cancelled_early(s)]
        if not self.waiting:
            return
        running = self.running
        # A prefill of one short prompt costs about as much as a decoding step of the whole batch, so while a batch
        # is running, arrivals are prefilled together: once a quarter of the batch size is waiting, or the oldest
        # has waited `max_wait` (a bound on the time to first token this adds).
        if running and len(self.waiting) < max(1, running // self.prefill_fraction):
            if time.monotonic() - self.waiting[0].enqueued_at < self.max_wait:
                return
        free = self.max_batch - running
        by_lane: dict[str, list[Sequence]] = {}
        budget, kept = self.max_prefill_tokens, []
        for seq in self.waiting:
            cost = len(seq.prompt_ids)
            if free > 0 and (cost <= budget or not any(by_lane.values())):
                by_lane.setdefault(seq.lane, []).append(seq)
                free -= 1
                budget -= cost
            else:
                kept.append(seq)
        self.waiting = kept
        for name, seqs in by_lane.items():
            lane = self.lanes[name]
            if lane.rows and self.mix_prefill and self.slots:
                # prefix-cached prompts go with the lane's decoding step, next in this pass of the loop (_decode)
                lane.pending, seqs = split_prefix(seqs, self.prefix)
            if seqs:
                self._prefill(lane, seqs)

    def _cancelled_early(self, seq: Sequence) -> bool:
        if seq.cancel.is_set():
            seq.emit("done", "cancelled")
            return True
        return False

    def _prefill(self, lane: Lane, seqs: list[Sequence]) -> None:
        cached, rest = split_prefix(seqs, self.prefix)
        if cached:
            self._prefill_group(lane, cached, self._prefix_kv(lane))
        if rest:
            self._prefill_group(lane, rest, None)

    def _prefix_kv(self, lane: Lane) -> list:
        """The shared prompt prefix's keys/values for this lane ([1, heads, P, dim] per layer), computed once."""
        import torch
        from transformers import DynamicCache

        if lane.prefix_kv is None:
            ids = torch.tensor([list(self.prefix)])
            cache = DynamicCache()
            self._forward(lane, ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None], cache)
            lane.prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        return lane.prefix_kv

    def _prefill_group(self, lane: Lane, seqs: list[Sequence], prefix_kv) -> None:
        """Prefill `seqs` together (left-padded) and join them to the lane. With `prefix_kv`, every prompt starts with
        the shared prefix: only the rest is computed, attending to the prefix's cached keys/values (rows then look
        like [prefix][padding][rest of the prompt], the padding masked)."""
        ids, full_mask, positions, cache = prefill_inputs(seqs, self.pad_id, self.prefix, prefix_kv)
        want_prompt = any(s.prompt_logprobs for s in seqs)
        logits = self._forward(lane, ids, full_mask, positions, cache, all_positions=want_prompt)
        if want_prompt:
            emit_prompt_logprobs(seqs, ids, logits, ids.shape[1])
        self._join_prefilled(lane, seqs, cache, full_mask, logits[:, -1, :])

    def _join_prefilled(self, lane: Lane, seqs: list[Sequence], cache, mask, last_logits) -> None:
        """Join a prefilled group to its lane and emit each new row's first token (from `last_logits`, the prefill's
        last position)."""
        for layer in cache.layers:  # the join/trim edits these tensors directly
            if type(layer).__name__ != "DynamicLayer":
                raise RuntimeError(f"cache layer {type(layer).__name__} is not supported by the batching engine")
        lane.join(seqs, cache, mask, mask.sum(-1), slots=self.slots)
        first = sample(seqs, last_logits)
        self._append(lane, first, start=len(lane.rows) - len(seqs))

    def _forward(self, lane: Lane, ids, mask, positions, cache, all_positions: bool = False):
        """Logits (float32, [rows, positions or 1, vocab]). Where the logits are exactly head(hidden) (models.heads),
        the decoder and the head are called separately: through
        the full model, `logits_to_keep=1` hands the head a strided [rows, 1, hidden] view, which on CPU goes through
        a batched matmul that copies the whole (tied, transposed) embedding matrix every call: ~230 ms of a 300 ms
        prefill for SmolLM2 here (bench/serve_levers.py). A contiguous [rows, hidden] input is a plain matmul."""
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        if self.compiled is not None and ids.shape[1] == 1 and lane.name != BASE:
            return self.compiled(ids, mask, positions, cache)[:, None]
        if self.lean is not None:
            hidden = self.lean(ids, mask, positions, cache, subtract=lane.name == BASE)
        elif not self.head_only:
            return self._model_forward(lane, ids, mask, positions, cache, all_positions)
        else:
            with self._lane_context(lane):
                out = self.decoder(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **{self.cache_arg: cache},
                )
            hidden = out.last_hidden_state
        if not all_positions:
            hidden = hidden[:, -1:, :]
        rows, t, width = hidden.shape
        flat = hidden.reshape(rows * t, width).contiguous()
        logits = self.lean.logits(flat) if self.lean is not None else self.head(flat).float()
        return logits.reshape(rows, t, -1)

    def _model_forward(self, lane: Lane, ids, mask, positions, cache, all_positions: bool):
        """The model's own forward (its logits processing included), for models whose logits are not head(hidden)."""
        with self._lane_context(lane):
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=0 if all_positions else 1,
                **{cache_kwarg(self.model): cache},
            )
        return out.logits.float()

    def _forward_mixed(self, lane: Lane, step: tuple, prefill: tuple):
        """A decoding step and a prefill group of the same lane in one pass (LeanDecoder.mixed), each part's inputs
        as `_forward` takes them: (the step's logits [rows, vocab], the prefill's last-position logits)."""
        import torch

        parts = [tuple(t.to(self.device) for t in part[:3]) + (part[3],) for part in (step, prefill)]
        hidden_step, hidden_prefill = self.lean.mixed(parts, subtract=lane.name == BASE)
        rows = hidden_step.shape[0]
        logits = self.lean.logits(torch.cat([hidden_step[:, -1], hidden_prefill[:, -1]]).contiguous())
        return logits[:rows], logits[rows:]

    def _decode(self, lane: Lane) -> None:
        import torch

        started = time.perf_counter()
        pending, lane.pending = lane.pending, []
        lane.mask = torch.cat([lane.mask, torch.ones((len(lane.rows), 1), dtype=torch.long)], dim=1)
        if self.slots:
            lane.cache.reserve(1)
        step = (lane.last[:, None], lane.mask, lane.lengths[:, None], lane.cache)
        if pending:  # the arrivals' prefill in the same pass (_admit): their keys/values in a cache of their own
            prefill = prefill_inputs(pending, self.pad_id, self.prefix, self._prefix_kv(lane))
            logits, first_logits = self._forward_mixed(lane, step, prefill)
            _, prefill_mask, _, prefill_cache = prefill
        else:
            logits = self._forward(lane, *step)[:, -1, :]
        lane.lengths = lane.lengths + 1
        tokens = sample(lane.rows, logits)
        rows = len(lane.rows)
        self._append(lane, tokens, start=0)
        if pending:  # joined after the step's finished rows left, as a separate prefill would have been
            self._join_prefilled(lane, pending, prefill_cache, prefill_mask, first_logits)
        if self.on_step is not None:
            self.on_step({"lane": lane.name, "rows": rows, "seconds": time.perf_counter() - started})

    def _append(self, lane: Lane, tokens, start: int) -> None:
        """Record sampled tokens for rows start.., emit them, and drop the rows that are finished."""
        import torch

        keep = list(range(start))
        # per-row tensor reads and writes cost microseconds each: the row loop works on Python lists
        lane.last[start : start + len(tokens)] = torch.tensor([token for token, _ in tokens], dtype=torch.long)
        lengths = lane.lengths.tolist() if self.context_length is not None else None
        for j, (token, info) in enumerate(tokens):
            i = start + j
            seq = lane.rows[i]
            seq.generated += 1
            finished = None
            if seq.cancel.is_set():
                finished = "cancelled"
            elif token in self.eos_ids:
                finished = "stop"
            else:
                seq.emit("token", (token, info))
                if seq.generated >= seq.max_new_tokens:
                    finished = "length"
                elif lengths is not None and lengths[i] + 1 >= self.context_length:
                    finished = "length"
            if finished is None:
                keep.append(i)
            else:
                if finished == "stop":
                    seq.emit("token", (token, info))  # the EOS is counted (usage), never shown as text
                seq.emit("done", finished)
        self.flush()  # the tokens reach their clients now, before the cache bookkeeping below
        lane.keep_rows(keep, slots=self.slots, device=self.device)

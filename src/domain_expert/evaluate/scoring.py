"""A model in this process: greedy generation and token NLL scoring, with the batch halved on out-of-memory."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from domain_expert.config import EvalConfig
from domain_expert.evaluate.specs import ModelSpec


class LocalEngine:
    """A model in this process; `base=True` disables the adapter (base and tuned share one copy of the weights)."""

    def __init__(self, lm, base: bool, batch_size: int):
        self.lm, self.base, self.batch_size = lm, base, batch_size
        # with the adapter merged (tuned), nothing must be disabled; for the base, it is switched off per call
        tok = lm.tokenizer
        # NLL is per token, so it compares only between models that share a tokenizer
        self.vocab = hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest()[:16]

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[dict]:
        from domain_expert.generate import generate_detailed

        return self._backoff(
            lambda ps, bs: generate_detailed(self.lm, ps, base=self.base, max_new_tokens=max_new_tokens, batch_size=bs),
            prompts,
        )

    def nll(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, int]]:
        """(sum NLL, tokens) of each continuation given its context."""
        return self._backoff(self._nll_batch, pairs)

    def choices(self, contexts: list[list[int]], options: list[list[list[int]]]) -> list[list[tuple[float, int]]]:
        """(sum NLL, tokens) of each option of each question. Causal models with a plain head score a batch of
        questions in one pass with each context run once (likelihood.choice_nll: 3x less work for short options);
        others score every (context, option) row in full. The same numbers in fp32; in bf16 the two orders of
        computation round differently (bench/eval_choice_scoring.py)."""
        from domain_expert.likelihood import supports_selective_head

        causal_plain = not self.lm.fmt.seq2seq and supports_selective_head(self.lm.model)
        if not causal_plain:
            flat = self.nll([(c, o) for c, opts in zip(contexts, options, strict=True) for o in opts])
            out, k = [], 0
            for opts in options:
                out.append(flat[k : k + len(opts)])
                k += len(opts)
            return out
        return self._backoff(self._choices_batch, list(zip(contexts, options, strict=True)))

    def _choices_batch(self, questions: list[tuple[list[int], list[list[int]]]], bs: int) -> list[list[tuple]]:
        import torch

        from domain_expert.likelihood import choice_nll
        from domain_expert.models.loader import adapter_off

        out: list[list[tuple]] = []
        for i in range(0, len(questions), bs):  # bs questions per pass: their short option rows ride one cache
            part = questions[i : i + bs]
            with torch.no_grad(), adapter_off(self.lm, self.base):
                out += choice_nll(self.lm.model, [c for c, _ in part], [o for _, o in part],
                                  self.lm.tokenizer.pad_token_id)  # fmt: skip
        return out

    def _nll_batch(self, pairs: list[tuple[list[int], list[int]]], bs: int) -> list[tuple[float, int]]:
        import torch

        from domain_expert.likelihood import Example, collate, sequence_nll
        from domain_expert.models.loader import adapter_off

        out = []
        device = next(self.lm.model.parameters()).device
        for i in range(0, len(pairs), bs):
            exs = [Example(c + x, len(c)) for c, x in pairs[i : i + bs]]  # seq2seq: c the encoder's, x the labels
            batch = collate(exs, self.lm.tokenizer.pad_token_id, seq2seq=self.lm.fmt.seq2seq)
            ids, mask, labels = (t.to(device) for t in batch)
            with torch.no_grad(), adapter_off(self.lm, self.base):
                sums, counts = sequence_nll(self.lm.model, ids, mask, labels)
            out += list(zip(sums, counts, strict=True))
        return out

    def _backoff(self, fn: Callable[[list, int], list], items: list) -> list:
        """Run fn(items, batch_size); on out-of-memory halve the batch size and retry (down to 1)."""
        import torch

        while True:
            try:
                return fn(items, self.batch_size)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if "out of memory" not in str(e).lower() or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                print(f"[domain-expert] out of memory: evaluation batch size -> {self.batch_size}", flush=True)

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.lm.fmt.encode_prompt(self.lm.tokenizer, prompt)

    def answer_ids(self, text: str) -> list[int]:
        tok = self.lm.tokenizer
        return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def cloze_ids(self, context: str, option: str) -> tuple[list[int], list[int]]:
        """Raw text and the option that completes it (a space between, no chat template, no EOS): for a causal model
        one running text; for seq2seq the context is the encoder's input and the option the labels."""
        tok, fmt = self.lm.tokenizer, self.lm.fmt
        cont = tok(" " + option if not fmt.seq2seq else option, add_special_tokens=False)["input_ids"]
        if fmt.seq2seq:
            return tok(context, add_special_tokens=False)["input_ids"] + [tok.eos_token_id], cont + [tok.eos_token_id]
        return fmt.encode_text(tok, context), cont

    def text_ids(self, text: str, limit: int) -> list[int]:
        return self.lm.fmt.encode_text(self.lm.tokenizer, text)[:limit]


def local_engine(spec: ModelSpec, cfg: EvalConfig, cache: dict[str, object]) -> LocalEngine:
    """Load (or reuse from `cache`) a run or model folder, with its adapter merged for the tuned model."""
    from domain_expert.models.loader import adapter_merged, load_for_inference

    key = str(Path(spec.path).resolve())
    if key not in cache:  # RUN and RUN:base share one loaded model: the base is the adapter switched off
        cache[key] = load_for_inference(spec.path)
    lm = cache[key]
    base = spec.kind == "run-base"
    if lm.has_adapter:
        # Unmerged LoRA slows decoding on CPU (merged is 1.6x faster, batch 16, bench/cpu_levers.py): the tuned model is
        # scored with its adapter merged into the weights in the inference dtype, i.e. the model `export` ships.
        # The base must see unmerged weights; the default order (base first) never needs to unmerge.
        merged = adapter_merged(lm.model)
        if base and merged:
            lm.model.unmerge_adapter()
        elif not base and not merged:
            lm.model.merge_adapter()
    return LocalEngine(lm, base=base, batch_size=cfg.batch_size)

"""The two training levers `finetune` uses beyond a bf16 base, measured one by one: forward + backward
tokens/s of SmolLM2 + LoRA on the default run's batches (bf16 base), with

- adapters fp32 (PEFT's default on a bf16 base: every adapted layer casts its input to fp32 and back) or bf16
  (`adapter_precision.MasterWeights`: bf16 copies in the model, the fp32 master in the optimizer);
- the prefix every row of a batch shares (the system prompt) run once per batch or once per row
  (`losses.shared_prefix_len`).

and, on random batches (what `finetune` trains on by default), the batch split into passes of similar lengths vs
packed rows of 128 / 192 / 256 tokens (`batching.packed_micro_batches`: several examples per row, none attending to
another, the shared prefix once per row; finetune's `train.pack_row_tokens` is 192), and rows of 192 with the LoRA
projections that read the same input fused into one product each (`fused_lora.py`, finetune's `train.fuse_lora`).

Same batches for every variant of a kind, no optimizer step (the same for all), interleaved rounds so drift hits all
alike.

    .venv/bin/python bench/train_levers.py            # needs runs/medical-terms/data (after `make run`)
    .venv/bin/python bench/train_levers.py --batches 12 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from domain_expert import fused_lora, losses
    from domain_expert.adapter_precision import MasterWeights
    from domain_expert.batching import (
        collate,
        collate_packed,
        encode_records,
        length_grouped_batches,
        packed_micro_batches,
        split_by_tokens,
    )
    from domain_expert.config import load_config
    from domain_expert.data.records import read_records
    from domain_expert.models.loader import load_model
    from domain_expert.models.reference import resolve_model
    from domain_expert.models.tokenizer import load_tokenizer
    from domain_expert.prompts import from_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default="runs/medical-terms")
    ap.add_argument("--batches", type=int, default=10, help="timed batches per variant (after 2 warm-up batches)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    cfg = load_config("medical-terms")
    r = resolve_model(cfg.model, progress=False)
    tok = load_tokenizer(r.path)
    fmt = from_config(cfg.prompt.style, cfg.prompt.system)
    train, _ = encode_records(read_records(Path(args.run) / "data/train.jsonl"), fmt, tok, cfg.train.max_seq_len)
    lengths = [len(e.ids) for e in train]
    n_batches = args.batches + 2
    grouped = length_grouped_batches(len(train), lengths, cfg.train.batch_size, 0, 0, window=50)[:n_batches]
    random_ = length_grouped_batches(len(train), lengths, cfg.train.batch_size, 0, 0, window=1)[:n_batches]

    def split(batches):  # [(passes as (ids, mask, labels), tokens)] per batch
        out = []
        for b in batches:
            passes = [collate([train[i] for i in mb], tok.pad_token_id)
                      for mb in split_by_tokens(b, lengths, cfg.train.max_batch_tokens)]  # fmt: skip
            out.append((passes, sum(int(m.sum()) for _, m, _ in passes)))
        return out

    def packed(batches, row_tokens):
        out = []
        for b in batches:
            exs = [train[i] for i in b]
            passes = [collate_packed(exs, mb, tok.pad_token_id)
                      for mb in packed_micro_batches(exs, row_tokens, cfg.train.max_batch_tokens)]  # fmt: skip
            out.append((passes, sum(p.tokens for p in passes)))
        return out

    min_prefix = losses.MIN_SHARED_PREFIX
    grouped_passes = split(grouped)  # collated once, timed by four variants
    # name: (bf16 adapters, shared prefix, batches, fused projections)
    rows = {n: packed(random_, n) for n in (128, 192, 256)}
    variants = {
        "grouped: adapters fp32, prefix per row": (False, False, grouped_passes, False),
        "grouped: adapters bf16 + fp32 master, prefix per row": (True, False, grouped_passes, False),
        "grouped: adapters fp32, prefix shared": (False, True, grouped_passes, False),
        "grouped: adapters bf16 + fp32 master, prefix shared": (True, True, grouped_passes, False),
        "random: bf16 + master, prefix shared, split passes": (True, True, split(random_), False),
        **{f"random: bf16 + master, packed rows of {n}": (True, True, rows[n], False) for n in rows},
        f"random: packed rows of {cfg.train.pack_row_tokens}, fused projections (finetune)":
            (True, True, rows[cfg.train.pack_row_tokens], True),
    }  # fmt: skip
    results: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, (bf16_adapters, shared, data, fused) in variants.items():
            model = load_model(r.path, dtype=torch.bfloat16, device="cpu", attn="eager")
            lc = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                            target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")  # fmt: skip
            model = get_peft_model(model, lc)
            if bf16_adapters:
                mw = MasterWeights(model, torch.bfloat16)
            if fused:
                fused_lora.fuse(model)
            losses.MIN_SHARED_PREFIX = min_prefix if shared else 10**9
            n, t = 0, 0.0
            for k, (passes, tokens) in enumerate(data):
                t0 = time.perf_counter()
                for p in passes:
                    if isinstance(p, tuple):
                        s, _ = losses.causal_lm_loss(model, *p, reduction="sum")
                    else:
                        s, _ = losses.packed_loss(model, p)
                    s.backward()
                if bf16_adapters:
                    mw.grads_to_master()
                if k >= 2:  # the first batches pay one-off kernel set-up
                    t += time.perf_counter() - t0
                    n += tokens
            results[name].append(n / t)
            print(f"{name:60} {n / t:6.0f} tokens/s", flush=True)
    losses.MIN_SHARED_PREFIX = min_prefix
    base = statistics.median(results["grouped: adapters fp32, prefix per row"])
    print("\nmedian over rounds (forward + backward, the examples' non-padding tokens/s):")
    for name, v in results.items():
        print(f"{name:60} {statistics.median(v):6.0f}  x{statistics.median(v) / base:.2f}")
    from domain_expert.provenance import stamp

    out = Path("bench/results/train_levers.json")
    res = {"stamp": stamp(), "batches": args.batches, "rounds": args.rounds, "tokens_per_s": results}
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

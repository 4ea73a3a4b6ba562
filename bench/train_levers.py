"""The two training levers `finetune` uses beyond a bf16 base, measured one by one: forward + backward
tokens/s of SmolLM2 + LoRA on the default run's batches (bf16 base), with

- adapters fp32 (PEFT's default on a bf16 base: every adapted layer casts its input to fp32 and back) or bf16
  (`finetune/adapter_precision.MasterWeights`: bf16 copies in the model, the fp32 master in the optimizer);
- the prefix every row of a batch shares (the system prompt) run once per batch or once per row
  (`likelihood.shared_prefix_len`).

and, on random batches (what `finetune` trains on by default), the batch split into passes of similar lengths vs
packed rows of 128 / 192 / 256 tokens (`batching.packed_micro_batches`: several examples per row, none attending to
another, the shared prefix once per row; finetune's `train.pack_row_tokens` is 192), and rows of 192 with the LoRA
projections that read the same input fused into one product each (`finetune/fused_lora.py`, `train.fuse_lora`).

The model, tokenizer and examples come from finetune's own setup (`finetune/setup.py`). Same batches for every
variant of a kind, no optimizer step (the same for all), interleaved rounds so drift hits all alike.

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

    from domain_expert import likelihood
    from domain_expert.config import load_config
    from domain_expert.finetune.adapter_precision import MasterWeights
    from domain_expert.finetune.batching import (
        collate_packed,
        length_grouped_batches,
        packed_micro_batches,
        split_by_tokens,
    )
    from domain_expert.finetune.distributed import Dist
    from domain_expert.finetune.losses import packed_loss
    from domain_expert.finetune.setup import load_data, load_lora_model, resolve_base
    from domain_expert.likelihood import causal_lm_loss, collate
    from domain_expert.models.tokenizer import load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default="runs/medical-terms")
    ap.add_argument("--batches", type=int, default=10, help="timed batches per variant (after 2 warm-up batches)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    # lora.dropout 0 (the default config's): projections with dropout never run fused
    cfgs = {fused: load_config("medical-terms", ["lora.dropout=0", f"train.fuse_lora={str(fused).lower()}"])
            for fused in (False, True)}  # fmt: skip
    cfg = cfgs[False]
    r, kind = resolve_base(cfg, Dist())
    tok = load_tokenizer(r.path)
    examples = load_data(cfg, Path(args.run) / "data", tok)
    train, lengths = examples.train, examples.lengths
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

    min_prefix = likelihood.MIN_SHARED_PREFIX
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
            # finetune's own model: fresh fp32 LoRA adapter, projections fused when train.fuse_lora says so
            model = load_lora_model(cfgs[fused], r.path, tok, dtype=torch.bfloat16, device="cpu", attn="eager",
                                    kind=kind)  # fmt: skip
            if bf16_adapters:
                mw = MasterWeights(model, torch.bfloat16)  # as finetune's setup does after fusing
            likelihood.MIN_SHARED_PREFIX = min_prefix if shared else 10**9
            n, t = 0, 0.0
            for k, (passes, tokens) in enumerate(data):
                t0 = time.perf_counter()
                for p in passes:
                    if isinstance(p, tuple):
                        s, _ = causal_lm_loss(model, *p, reduction="sum")
                    else:
                        s, _ = packed_loss(model, p)
                    s.backward()
                if bf16_adapters:
                    mw.grads_to_master()
                if k >= 2:  # the first batches pay one-off kernel set-up
                    t += time.perf_counter() - t0
                    n += tokens
            results[name].append(n / t)
            print(f"{name:60} {n / t:6.0f} tokens/s", flush=True)
    likelihood.MIN_SHARED_PREFIX = min_prefix
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

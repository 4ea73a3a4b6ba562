"""Side-by-side measurements behind the CPU defaults, on the real SmolLM2 and a prepared run's training data.

    .venv/bin/python bench/cpu_levers.py runs/medical-terms        # after `make run`

Reports, each pair in one process on the same batches:
1. LoRA training tokens/s: dropout 0.05 vs 0 (lora.dropout default), sdpa vs eager attention (attn_implementation).
2. Peak activation memory growth per step: max_batch_tokens None vs 2048 vs 1024 (each in a fresh subprocess,
   since peak RSS never goes down).
3. Greedy decoding, batch 16: LoRA adapter unmerged vs merged (why evaluate scores the tuned model merged).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

STEPS, WARMUP = 12, 3


def _setup(run_dir: Path):
    from domain_expert.config import load_config
    from domain_expert.data.records import read_records
    from domain_expert.finetune.batching import encode_records, length_grouped_batches
    from domain_expert.models.reference import resolve_model
    from domain_expert.models.tokenizer import load_tokenizer
    from domain_expert.prompts import PromptFormat

    cfg = load_config(run_dir / "finetune" / "config.yaml")
    path = resolve_model(cfg.model).path
    tok = load_tokenizer(path)
    exs, _ = encode_records(read_records(run_dir / "data" / "train.jsonl"), PromptFormat.load(run_dir / "finetune"),
                            tok, cfg.train.max_seq_len)  # fmt: skip
    batches = length_grouped_batches(len(exs), [len(e.ids) for e in exs], cfg.train.batch_size, 0, 0)
    return cfg, path, tok, exs, batches


def train_tokens_per_s(run_dir: Path, *, dropout: float, attn: str, max_tokens: int | None) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from domain_expert.finetune.batching import split_by_tokens
    from domain_expert.likelihood import causal_lm_loss, collate
    from domain_expert.models.loader import load_model
    from domain_expert.provenance import peak_rss_mib

    cfg, path, tok, exs, batches = _setup(run_dir)
    lengths = [len(e.ids) for e in exs]
    model = load_model(path, dtype=torch.bfloat16, attn=attn)
    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=dropout,
                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(model, lcfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    before = peak_rss_mib()
    tokens, t0 = 0, 0.0
    for i, b in enumerate(batches[: WARMUP + STEPS]):
        if i == WARMUP:
            tokens, t0 = 0, time.time()
        n_lab = sum(len(exs[j].ids) - exs[j].start for j in b)
        for mb in split_by_tokens(b, lengths, max_tokens):
            ids, mask, labels = collate([exs[j] for j in mb], tok.pad_token_id)
            s, _ = causal_lm_loss(model, ids, mask, labels, reduction="sum")
            (s / n_lab).backward()
            tokens += int(mask.sum())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"tokens_per_s": round(tokens / (time.time() - t0), 1), "peak_growth_mib": round(peak_rss_mib() - before)}


def decode_tokens_per_s(run_dir: Path) -> dict:
    from domain_expert.data.records import read_records
    from domain_expert.generate import generate_detailed
    from domain_expert.models.loader import load_for_inference

    lm = load_for_inference(run_dir)
    prompts = [r.prompt for r in read_records(run_dir / "data" / "test.jsonl") if r.task == "define"][:16]
    out = {}
    for name in ("unmerged", "merged"):
        if name == "merged":
            lm.model.merge_adapter()
        generate_detailed(lm, prompts[:2], max_new_tokens=4)  # warm-up
        t = time.time()
        res = generate_detailed(lm, prompts, max_new_tokens=48, batch_size=16)
        out[name] = {"seconds": round(time.time() - t, 2), "tokens": sum(r["tokens"] for r in res)}
    return out


def _child(run_dir: str, kwargs: str) -> dict:
    """Each configuration in its own process, so peak memory of one does not hide another's."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import cpu_levers as c; "
        f"from pathlib import Path; print(json.dumps(c.train_tokens_per_s(Path({run_dir!r}), **{kwargs})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    run_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/medical-terms"
    rows = {
        "dropout 0.05, eager, 1024": "dict(dropout=0.05, attn='eager', max_tokens=1024)",
        "dropout 0, eager, 1024 (default)": "dict(dropout=0.0, attn='eager', max_tokens=1024)",
        "dropout 0, sdpa, 1024": "dict(dropout=0.0, attn='sdpa', max_tokens=1024)",
        "dropout 0, eager, 2048": "dict(dropout=0.0, attn='eager', max_tokens=2048)",
        "dropout 0, eager, no cap": "dict(dropout=0.0, attn='eager', max_tokens=None)",
    }
    print(f"LoRA training, {STEPS} steps after {WARMUP} warm-up, same batches (trained tokens/s, peak RSS growth):")
    for name, kwargs in rows.items():
        print(f"  {name:34} {_child(run_dir, kwargs)}", flush=True)
    dec = decode_tokens_per_s(Path(run_dir))
    ratio = dec["unmerged"]["seconds"] / dec["merged"]["seconds"]
    print(f"greedy decoding, 16 prompts x 48 tokens: {dec}  -> merged is {ratio:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())

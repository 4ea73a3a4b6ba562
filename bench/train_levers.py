"""A training lever not yet in `finetune`, measured: LoRA adapter weights in fp32 (PEFT's default with a bf16 base:
every adapted layer casts its input to fp32 and back) vs bf16 adapter weights, same bf16 base, same batches, forward
and backward only (no optimizer step), two rounds each. Keeping bf16 adapters in training would need an fp32 master
copy for the optimizer; this only measures the speed side.

    .venv/bin/python bench/train_levers.py        # needs runs/medical-terms/data (after `make run`)
"""

import time

import torch
from peft import LoraConfig, get_peft_model

from domain_expert.batching import collate, encode_records, length_grouped_batches, split_by_tokens
from domain_expert.config import load_config
from domain_expert.data.records import read_records
from domain_expert.losses import causal_lm_loss
from domain_expert.models import load_causal_lm, load_tokenizer, resolve_model
from domain_expert.prompts import from_config

cfg = load_config("medical-terms")
r = resolve_model(cfg.model, progress=False)
tok = load_tokenizer(r.path)
fmt = from_config(cfg.prompt.style, cfg.prompt.system)
train, _ = encode_records(read_records("runs/medical-terms/data/train.jsonl"), fmt, tok, cfg.train.max_seq_len)
lengths = [len(e.ids) for e in train]
batches = length_grouped_batches(len(train), lengths, cfg.train.batch_size, 0, 0)
for adapter_fp32 in (True, False, True, False):
    model = load_causal_lm(r.path, dtype=torch.bfloat16, device="cpu", attn="eager")
    lc = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=0.0,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lc, autocast_adapter_dtype=adapter_fp32)
    n = 0
    t = None
    for k, b in enumerate(batches[:8]):
        if k == 2:
            t = time.perf_counter()
            n = 0
        for mb in split_by_tokens(b, lengths, cfg.train.max_batch_tokens):
            ids, mask, labels = collate([train[i] for i in mb], tok.pad_token_id)
            s, _ = causal_lm_loss(model, ids, mask, labels, reduction="sum")
            s.backward()
            n += int(mask.sum())
    print(
        "adapter fp32" if adapter_fp32 else "adapter bf16",
        {p.dtype for p in model.parameters() if p.requires_grad},
        "%.0f tok/s" % (n / (time.perf_counter() - t)),
        flush=True,
    )

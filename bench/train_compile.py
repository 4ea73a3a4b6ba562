"""torch.compile for LoRA training on CPU, measured: SmolLM2 + LoRA (bf16 base, bf16 adapters + fp32 master),
forward + backward on 12 length-grouped batches of the default run, the decoder eager vs `torch.compile(dynamic=True)`,
two interleaved rounds; the first 3 batches of each are timed apart (compilation happens there). The shared-prefix
pass is off in both (its cache would sit inside the compiled graph).

One run, 2-core EPYC, 2026-11-28: eager 510 / 499 tokens/s, compiled 587 / 552 (+11-15%), but the first compiled
batch took 336 s: more than the default run's whole 4.5-minute training budget, so finetune does not compile.

    .venv/bin/python bench/train_compile.py        # needs runs/medical-terms/data (after `make run`); ~8 min
"""

import time

import torch
from peft import LoraConfig, get_peft_model

from domain_expert import likelihood
from domain_expert.config import load_config
from domain_expert.data.records import read_records
from domain_expert.finetune.adapter_precision import MasterWeights
from domain_expert.finetune.batching import encode_records, length_grouped_batches, split_by_tokens
from domain_expert.likelihood import collate
from domain_expert.models.loader import load_model
from domain_expert.models.reference import resolve_model
from domain_expert.models.tokenizer import load_tokenizer
from domain_expert.prompts import from_config

cfg = load_config("medical-terms")
r = resolve_model(cfg.model, progress=False)
tok = load_tokenizer(r.path)
fmt = from_config(cfg.prompt.style, cfg.prompt.system, tok)
train, _ = encode_records(read_records("runs/medical-terms/data/train.jsonl"), fmt, tok, 256)
lengths = [len(e.ids) for e in train]
model = load_model(r.path, dtype=torch.bfloat16, device="cpu", attn="eager")
lc = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")  # fmt: skip
model = get_peft_model(model, lc)
mw = MasterWeights(model, torch.bfloat16)
likelihood.MIN_SHARED_PREFIX = 10**9  # plain path: no cache inside the compiled graph
base = model.get_base_model()
dec = base.get_decoder()
cdec = torch.compile(dec, dynamic=True)
head = base.get_output_embeddings()


def loss(d, ids, mask, labels):
    h = d(input_ids=ids, attention_mask=mask).last_hidden_state
    t = labels[:, 1:]
    keep = t != -100
    return torch.nn.functional.cross_entropy(head(h[:, :-1][keep]).float(), t[keep], reduction="sum")


batches = length_grouped_batches(len(train), lengths, 16, 0, 0, 50)[:12]
for name, d in (("eager", dec), ("compiled", cdec), ("eager", dec), ("compiled", cdec)):
    n = 0
    t = 0
    for k, b in enumerate(batches):
        t0 = time.perf_counter()
        for mb in split_by_tokens(b, lengths, 1024):
            ids, mask, labels = collate([train[i] for i in mb], tok.pad_token_id)
            loss(d, ids, mask, labels).backward()
            if k >= 3:
                n += int(mask.sum())
        mw.grads_to_master()
        dt = time.perf_counter() - t0
        if k < 3:
            print(name, "batch", k, f"{dt:.1f}s", flush=True)
        else:
            t += dt
    print(name, "%.0f tok/s steady" % (n / t), flush=True)

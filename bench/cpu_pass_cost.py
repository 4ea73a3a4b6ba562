"""Two CPU facts behind the training-speed notes in docs/scale.md, measured:

1. matrix-product rate, bf16 vs fp32, at SmolLM2's layer shapes (1024 tokens) and one large square product;
2. the fixed cost of a forward + backward pass through SmolLM2 + LoRA (bf16 base and adapters): time per pass for
   a few (rows, tokens) shapes; a one-row 20-token pass (the shared-prefix pass) is nearly all fixed cost.

    .venv/bin/python bench/cpu_pass_cost.py        # ~2 min
"""

import time

import torch
from peft import LoraConfig, get_peft_model

from domain_expert.config import load_config
from domain_expert.finetune.adapter_precision import MasterWeights
from domain_expert.models.loader import load_model
from domain_expert.models.reference import resolve_model


def rate(a, b, n=10):
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(n):
        a @ b
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / ((time.perf_counter() - t) / n) / 1e9


print(f"threads: {torch.get_num_threads()}")
for t, i, o in [(1024, 576, 576), (1024, 576, 1536), (1024, 1536, 576), (4096, 4096, 4096)]:
    row = []
    for dt in (torch.bfloat16, torch.float32):
        x, w = torch.randn(t, i, dtype=dt), torch.randn(o, i, dtype=dt)
        row.append(rate(x, w.t()))
    print(f"matmul {t}x{i} @ {i}x{o}: bf16 {row[0]:.0f} GFLOP/s, fp32 {row[1]:.0f} GFLOP/s ({row[0] / row[1]:.1f}x)")

cfg = load_config("medical-terms")
model = load_model(resolve_model(cfg.model, progress=False).path, dtype=torch.bfloat16, device="cpu", attn="eager")
lc = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")  # fmt: skip
model = get_peft_model(model, lc)
MasterWeights(model, torch.bfloat16)  # bf16 adapters, as finetune trains them
decoder = model.get_base_model().get_decoder()
for rows, tokens in [(1, 20), (4, 20), (16, 20), (16, 50), (16, 100)]:
    ids = torch.randint(100, 1000, (rows, tokens))
    best = float("inf")
    for _ in range(4):
        t = time.perf_counter()
        decoder(input_ids=ids).last_hidden_state.float().sum().backward()
        best = min(best, time.perf_counter() - t)
    print(f"forward+backward pass {rows}x{tokens}: {best * 1e3:.0f} ms ({best * 1e3 / (rows * tokens):.2f} ms/token)")

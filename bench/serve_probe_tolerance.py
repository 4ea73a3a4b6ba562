"""How far apart two equivalent computations of the same log-probs land, per dtype: what the serving engine's lean
probe (serve/decoding/admission.py: PROBE_TOLERANCE) must tolerate, and what a real structural difference costs.

For random tiny Llama-style models (and, with --model, a real folder such as the built-in SmolLM2's) it prints the
largest |log-prob difference| over each position's 20 likeliest tokens (`admission.logprob_gap`) of a 16-token
prefill and 4 decoding steps (20 tokens for the two forward comparisons) between:
- the lean path and the model's own forward (`admission.probe`, what the engine checks at load);
- the model's own forward with eager and with sdpa attention (two equivalent computations in transformers itself);
- the model's own forward and the same with final-logit soft-capping at 30 dropped (the bug class the probe guards);
and how long the probe takes (one lane; the engine probes the base lane too when there is one).

    python bench/serve_probe_tolerance.py [--model ~/.cache/domain-expert/models/smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from domain_expert.serve.decoding.admission import logprob_gap, probe
from domain_expert.serve.decoding.lean_decoder import LeanDecoder


def tiny(model_type: str, seed: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(
        model_type, vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2, max_position_embeddings=256,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # non-zero biases (Qwen2's q/k/v), as trained models have
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.2)
    return model


def eager_vs_sdpa(model) -> float:
    ids = torch.randint(model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    out = {}
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        out[impl] = model(input_ids=ids).logits[0]
    return logprob_gap(out["eager"], out["sdpa"])


def softcap_cost(model) -> float:
    ids = torch.randint(model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    logits = model(input_ids=ids).logits[0].float()
    return logprob_gap(logits, torch.tanh(logits / 30) * 30)


def measure(label: str, build) -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model = build().to(dtype)
        with torch.no_grad():
            eager_sdpa, cap = eager_vs_sdpa(model), softcap_cost(model)
            model.set_attn_implementation("sdpa")
            lean = LeanDecoder(model)
            started = time.perf_counter()
            lean_diff, tolerance = probe(model, lean)
            seconds = time.perf_counter() - started
        rows.append(dict(model=label, dtype=str(dtype).removeprefix("torch."), lean_vs_forward=lean_diff,
                         eager_vs_sdpa=eager_sdpa, softcap30_dropped=cap, tolerance=tolerance,
                         probe_seconds=round(seconds, 3)))  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a Llama-style HF folder to measure as well")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    for model_type in ("llama", "qwen2"):
        for seed in range(args.seeds):
            measure(f"tiny {model_type} seed {seed}", lambda m=model_type, s=seed: tiny(m, s))
    if args.model:
        from transformers import AutoModelForCausalLM

        measure(args.model, lambda: AutoModelForCausalLM.from_pretrained(args.model).eval())


if __name__ == "__main__":
    main()

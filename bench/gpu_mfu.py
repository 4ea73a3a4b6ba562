"""LoRA training tokens/s and model-FLOPs utilization (MFU) of a Llama-2-7B-shaped model with random weights (no
download), bf16, one CUDA GPU, in a few minutes. Needs only torch, transformers and peft.

    python bench/gpu_mfu.py                                   # llama2-7b shape, 8 x 2048 tokens, checkpointing on
    python bench/gpu_mfu.py --batch 4 --no-grad-ckpt --json mfu.json
    python bench/gpu_mfu.py --preset tiny --device cpu        # smoke test (tests/test_gpu_mfu.py)

FLOPs counted per trained token (T tokens per step, L layers, d hidden, s sequence length):
- N_lin: weights of every frozen matmul (q,k,v,o,gate,up,down in each layer, and the LM head; not the embedding,
  which is a lookup). N_lora: the adapter weights.
- forward 2*N_lin + 2*N_lora, plus attention 4*L*d*s (QK^T and AV, full square as in PaLM/nanoGPT; causal
  kernels skip about half, so this term is an upper bound on the work done).
- backward: gradients w.r.t. activations only for frozen weights, 2*N_lin (no weight gradients: this is why LoRA's
  count is ~4N, not 6N); activations and weights for the adapters, 4*N_lora; attention 2x its forward, 8*L*d*s.
- model FLOPs/token = 4*N_lin + 6*N_lora + 12*L*d*s. MFU = model FLOPs/s / peak. Recomputation under gradient
  checkpointing is not model work: it is counted only in HFU (hardware FLOPs utilization), which adds one more
  forward of the decoder layers.
- For comparison the conventional full-fine-tuning figure 6*N_params + 12*L*d*s ("mfu_6n"), which overstates the
  work of a LoRA step by ~1.5x and so flatters a LoRA run.
Peak dense bf16 FLOP/s comes from a table by device name (--peak-tflops overrides); a device not in it (a CPU, an
unlisted GPU) gets a timed bf16 matmul as its peak, labelled as such.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA datasheets, TFLOP/s. Longest matching name wins.
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM
    "H200": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 125.0,  # AWS g5 (ml.g5.*), as for A10
    "A10": 125.0,
}

PRESETS = {
    # Llama-2-7B: 6.74B params
    "llama2-7b": {
        "hidden": 4096,
        "layers": 32,
        "heads": 32,
        "kv_heads": 32,
        "intermediate": 11008,
        "vocab": 32000,
        "batch": 8,
        "seq_len": 2048,
        "grad_ckpt": True,
    },
    # seconds on a CPU, for the smoke test
    "tiny": {
        "hidden": 64,
        "layers": 2,
        "heads": 4,
        "kv_heads": 2,
        "intermediate": 160,
        "vocab": 512,
        "batch": 2,
        "seq_len": 64,
        "grad_ckpt": False,
    },
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_tflops(device_name: str) -> float | None:
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_BF16_TFLOPS[key]
    return None


def matmul_probe_tflops(device: str, n: int, reps: int) -> float:
    """Measured bf16 matmul rate: the peak for devices missing from the table (labelled "matmul probe")."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def flops_per_token(*, n_lin: int, n_lora: int, n_params: int, layers: int, hidden: int, seq_len: int,
                    n_layer_lin: int, grad_ckpt: bool) -> dict[str, float]:  # fmt: skip
    attn_fwd = 4 * layers * hidden * seq_len
    model = 4 * n_lin + 6 * n_lora + 3 * attn_fwd
    # checkpointing re-runs each decoder layer's forward (adapters included) during backward; the head is not re-run
    recompute = (2 * n_layer_lin + 2 * n_lora + attn_fwd) if grad_ckpt else 0
    return {"model": model, "hardware": model + recompute, "six_n": 6 * n_params + 3 * attn_fwd}


def build(p: dict, device: str, dtype, attn: str, lora_r: int, adapter_dtype: str):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        vocab_size=p["vocab"],
        hidden_size=p["hidden"],
        intermediate_size=p["intermediate"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["kv_heads"],
        max_position_embeddings=max(4096, p["seq_len"]),
        tie_word_embeddings=False,
    )
    with torch.device(device):  # random init directly in place and dtype: no fp32 copy of 7B weights on the host
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
    lcfg = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      task_type="CAUSAL_LM")  # fmt: skip
    # PEFT keeps adapters in fp32 over a bf16 base by default (as `domain-expert finetune` does); bf16 is the lighter
    # alternative many recipes use
    return get_peft_model(model, lcfg, autocast_adapter_dtype=adapter_dtype == "fp32")


def run(args) -> dict:
    import torch

    p = dict(PRESETS[args.preset])
    for k in ("batch", "seq_len", "layers"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    grad_ckpt = p["grad_ckpt"] if args.grad_ckpt is None else args.grad_ckpt
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    torch.manual_seed(0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_build = time.perf_counter()
    model = build(p, device, dtype, args.attn, args.lora_r, args.adapter_dtype)
    if grad_ckpt:
        # non-reentrant: no need to make the embedding output require grad (which would add backward work)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    _sync(device)
    build_s = time.perf_counter() - t_build

    base = model.get_base_model()
    lin = [m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n]
    n_lin = sum(m.weight.numel() for m in lin)
    n_head = base.get_output_embeddings().weight.numel()
    n_lora = sum(q.numel() for q in model.parameters() if q.requires_grad)
    n_params = sum(q.numel() for q in model.parameters()) - n_lora
    per_token = flops_per_token(n_lin=n_lin, n_lora=n_lora, n_params=n_params, layers=p["layers"],
                                hidden=p["hidden"], seq_len=p["seq_len"], n_layer_lin=n_lin - n_head,
                                grad_ckpt=grad_ckpt)  # fmt: skip

    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4, fused=device == "cuda")
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, p["vocab"], (p["batch"], p["seq_len"]), generator=gen).to(device)
    tokens_per_step = ids.numel()

    def step() -> float:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    try:
        for _ in range(args.warmup):
            step()
        _sync(device)
        t = time.perf_counter()
        for _ in range(args.steps):
            last_loss = step()
        _sync(device)
        seconds = time.perf_counter() - t
    except torch.OutOfMemoryError:
        raise SystemExit(
            f"out of GPU memory at batch {p['batch']} x {p['seq_len']}: add --grad-ckpt or lower --batch"
        ) from None

    name = torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    peak, source = args.peak_tflops, "--peak-tflops"
    if peak is None:
        peak, source = peak_tflops(name) if device == "cuda" else None, "datasheet table (dense bf16)"
    if peak is None:
        n = 4096 if device == "cuda" else 512
        peak, source = matmul_probe_tflops(device, n, reps=20), f"matmul probe (bf16 {n}^3)"
    tps = tokens_per_step * args.steps / seconds
    achieved = {k: v * tps / 1e12 for k, v in per_token.items()}
    from importlib.metadata import version

    return {
        "preset": args.preset,
        "device": device,
        "device_name": name,
        "dtype": args.dtype,
        "adapter_dtype": args.adapter_dtype,
        "attn": args.attn,
        "grad_ckpt": grad_ckpt,
        "batch": p["batch"],
        "seq_len": p["seq_len"],
        "layers": p["layers"],
        "hidden": p["hidden"],
        "params_total": n_params,
        "params_frozen_matmul": n_lin,
        "params_lora": n_lora,
        "lora_r": args.lora_r,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "build_s": round(build_s, 2),
        "step_s": round(seconds / args.steps, 4),
        "tokens_per_s": round(tps, 1),
        "flops_per_token": per_token,
        "achieved_tflops": {k: float(f"{v:.4g}") for k, v in achieved.items()},
        "peak_tflops": float(f"{peak:.4g}"),
        "peak_source": source,
        "mfu": float(f"{achieved['model'] / peak:.4g}"),
        "hfu": float(f"{achieved['hardware'] / peak:.4g}"),
        "mfu_6n": float(f"{achieved['six_n'] / peak:.4g}"),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "last_loss": round(last_loss, 4),
        "formula": "model = 4*N_lin + 6*N_lora + 12*L*d*s per token; hardware adds 2*N_layers_lin + 2*N_lora + "
        "4*L*d*s under grad checkpointing; six_n = 6*N_params + 12*L*d*s",
        "versions": {pkg: version(pkg) for pkg in ("torch", "transformers", "peft")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="llama2-7b")
    ap.add_argument("--batch", type=int, help="sequences per step (default: the preset's)")
    ap.add_argument("--seq-len", type=int, help="tokens per sequence (default: the preset's)")
    ap.add_argument("--layers", type=int, help="fewer layers for a quicker look (MFU is per layer alike)")
    ap.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None,
                    help="gradient checkpointing (default: on for llama2-7b, whose 8x2048 batch needs it)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, kernel selection)")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--adapter-dtype", choices=["fp32", "bf16"], default="fp32",
                    help="fp32: PEFT's default over a bf16 base (what finetune does)")  # fmt: skip
    ap.add_argument("--attn", choices=["sdpa", "eager", "flash_attention_2"], default="sdpa")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--peak-tflops", type=float, help="peak dense FLOP/s of the device in TFLOP/s (table override)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    res = run(args)
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))  # the stamp, also from an uninstalled clone
        from domain_expert.provenance import stamp

        stamped = {**res, "stamp": stamp(None if argv is None else [__file__, *argv])}
        args.json.write_text(json.dumps(stamped, indent=1) + "\n")
    print(
        f"{res['device_name']}: {res['tokens_per_s']:.0f} tokens/s, MFU {res['mfu']:.1%} (HFU {res['hfu']:.1%}, "
        f"6N convention {res['mfu_6n']:.1%}) of {res['peak_tflops']:.0f} TFLOP/s ({res['peak_source']})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

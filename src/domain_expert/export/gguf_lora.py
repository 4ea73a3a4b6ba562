"""A run's PEFT LoRA adapter as a GGUF LoRA adapter for llama.cpp (`llama-server --lora FILE`), on the `gguf` package.

Why: `serve --engine llamacpp` keeps one copy of the base weights in llama-server and applies the adapter per request
(scale 1 for `<name>`, 0 for `<name>:base`), as our own engine does. llama.cpp's `convert_lora_to_gguf.py` would
need its source tree and the base model's HF folder at serve time; this writer needs neither and is checked against
the PEFT tensors without llama.cpp (tests/test_llamacpp_engine.py).

The format is what llama.cpp's loader (src/llama-adapter.cpp) reads: `general.type = adapter`,
`general.architecture` equal to the base GGUF's, `adapter.type = lora`, `adapter.lora.alpha`, and per adapted weight
`blk.N.<tensor>.weight.lora_a` (PEFT's A, shape rank x in) and `.lora_b` (PEFT's B, out x rank). llama.cpp scales
B·A by `scale * alpha / rank`, so PEFT's `lora_alpha / r` is reproduced exactly, and rsLoRA's `alpha / sqrt(r)` by
writing `alpha * sqrt(r)`. The rows of q and k weights are permuted for llama.cpp's rotary kernel in the base GGUF
(gguf_writer._permute); the same row permutation of B keeps B·A equal to the permuted delta.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from domain_expert.errors import ExportError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."


def lora_settings(adapter_dir: Path) -> dict:
    """The adapter's rank and the alpha llama.cpp needs; refuses, with the reason, what llama.cpp cannot apply."""
    cfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    where = str(adapter_dir / ADAPTER_CONFIG)
    reasons = []
    if cfg.get("peft_type", "LORA") != "LORA":
        reasons.append(f"peft_type {cfg.get('peft_type')} (LoRA only)")
    if cfg.get("use_dora"):
        reasons.append("DoRA (use_dora) has no llama.cpp adapter form")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        reasons.append("per-module rank_pattern/alpha_pattern (one alpha per adapter file in llama.cpp)")
    if cfg.get("modules_to_save"):
        reasons.append(f"modules_to_save {cfg['modules_to_save']} (fully trained modules are not LoRA factors)")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        reasons.append("trained biases (bias / lora_bias) are not written")
    for key in ("trainable_token_indices", "target_parameters", "layer_replication"):
        if cfg.get(key):
            reasons.append(f"{key} (not a plain LoRA on linear weights)")
    if reasons:
        raise ExportError(
            "cannot write this adapter as a llama.cpp LoRA: " + "; ".join(reasons),
            where=where,
            fix="serve it with the default --engine transformers, which applies any PEFT LoRA adapter",
        )
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    # llama.cpp multiplies B·A by alpha / rank; PEFT by lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA
    gguf_alpha = alpha * math.sqrt(r) if cfg.get("use_rslora") else alpha
    return {"r": r, "lora_alpha": alpha, "gguf_alpha": gguf_alpha, "scaling": gguf_alpha / r}


def lora_pairs(adapter_dir: Path):
    """(module name as in the base model, A, B) per adapted module, float32 numpy arrays, sorted by name."""
    from safetensors import safe_open

    found: dict[str, dict[str, object]] = {}
    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as st:
        for key in st.keys():  # noqa: SIM118 (safe_open is not a dict)
            name = key.removeprefix(_PEFT_PREFIX)
            for part, tag in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
                if name.endswith(part):
                    found.setdefault(name.removesuffix(part), {})[tag] = st.get_tensor(key).float().numpy()
                    break
            else:
                raise ExportError(
                    f"adapter tensor {key} is not a LoRA factor (lora_A/lora_B)",
                    where=str(adapter_dir / ADAPTER_WEIGHTS),
                    fix="serve it with the default --engine transformers",
                )
    for module, ab in sorted(found.items()):
        if set(ab) != {"A", "B"}:
            raise ExportError(
                f"module {module} has only lora_{''.join(ab)}", where=str(adapter_dir), fix="re-run finetune"
            )
        yield module, ab["A"], ab["B"]


def write_lora_gguf(adapter_dir: Path, base_config: dict, path: Path) -> dict:
    """Write the adapter in `adapter_dir` (PEFT) for a base whose HF config is `base_config`; return what was
    written. Every factor is stored f32 (a few MB at most): llama.cpp adds B·A in f32 on top of any base precision."""
    import gguf
    import numpy as np

    from domain_expert.export.gguf_writer import _permute, check_convertible

    check_convertible(base_config, str(adapter_dir))
    settings = lora_settings(adapter_dir)
    n_head = int(base_config["num_attention_heads"])
    n_kv = int(base_config.get("num_key_value_heads") or n_head)
    layers = int(base_config["num_hidden_layers"])
    arch = gguf.MODEL_ARCH.LLAMA
    names = gguf.get_tensor_name_map(arch, layers)
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, settings["gguf_alpha"])
    written = []
    for module, a, b in lora_pairs(adapter_dir):
        mapped = names.get_name(module)
        if mapped is None or module.endswith(("embed_tokens", "lm_head")):
            raise ExportError(
                f"adapted module {module} has no llama.cpp LoRA tensor here",
                where=str(adapter_dir),
                fix="train LoRA on attention/MLP projections only (the default), or serve with --engine transformers",
            )
        if module.endswith("q_proj"):
            b = _permute(b, n_head, n_head)
        elif module.endswith("k_proj"):
            b = _permute(b, n_head, n_kv)
        # numpy shapes are ggml's ne reversed: A (r, in) -> ne (in, r), B (out, r) -> ne (r, out), as the loader checks
        w.add_tensor(f"{mapped}.weight.lora_a", np.ascontiguousarray(a, dtype=np.float32))
        w.add_tensor(f"{mapped}.weight.lora_b", np.ascontiguousarray(b, dtype=np.float32))
        written.append(mapped)
    if not written:
        raise ExportError("the adapter has no LoRA factors", where=str(adapter_dir), fix="re-run finetune")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"modules": len(written), **settings}

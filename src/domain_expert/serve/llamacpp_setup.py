"""What `serve --engine llamacpp` needs before it starts llama-server: the binary (found, recent enough) and the run's
weights in llama.cpp's format, converted once and cached.

Weights: the run's BASE model as one GGUF (our Llama-family writer, export/gguf_writer.py, checked by transformers
reload as the `gguf` export target is) plus the run's LoRA adapter as a GGUF LoRA (export/gguf_lora.py). llama-server
loads both once and applies the adapter per request (scale 1: `<name>`, scale 0: `<name>:base`), so base and tuned
share one copy of the weights. The tokenizer written into the GGUF is the run's (what training used); prompts are
sent as token ids anyway, so llama.cpp's tokenizer never decides what the model sees.

The converted files are cached under `<run>/serve-llamacpp/<precision>/` (or `$DOMAIN_EXPERT_CACHE/llamacpp/<key>`
when the run folder is not writable or has no adapter), keyed by the sha256 of every source file and the precision:
a second start reuses them after hashing the sources (well under a second for SmolLM2).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from domain_expert.errors import DomainExpertError, ExportError

LLAMA_SERVER_ENV = "DOMAIN_EXPERT_LLAMA_SERVER"
PRECISIONS = ("f32", "bf16", "q8_0")
BUILD_SUBPATH = Path(".cache/llama.cpp/build/bin/llama-server")  # where `make llamacpp` puts it
BASE_GGUF, ADAPTER_GGUF = "model.gguf", "adapter.gguf"
# bump when the written files change meaning: old caches are then rebuilt, never reused
CONVERTER_VERSION = "llamacpp-1"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
# flags this engine passes; a llama-server whose --help lacks one is too old for it
_REQUIRED_FLAGS = ("--lora-init-without-apply", "--parallel", "--kv-unified")


class LlamaCppUnavailableError(DomainExpertError):
    """llama-server is missing, too old, or would not start."""


@dataclass(frozen=True)
class LlamaServerBinary:
    path: Path
    version: str  # e.g. "6789 (abc1234)"


@dataclass(frozen=True)
class LlamaCppWeights:
    folder: Path
    base: Path
    adapter: Path | None
    key: str
    reused: bool
    info: dict


def find_llama_server(explicit: str | Path | None = None) -> Path:
    """`explicit` (--llama-server), then DOMAIN_EXPERT_LLAMA_SERVER, then `make llamacpp`'s output under this project
    or the working directory, then PATH."""
    given = explicit or os.environ.get(LLAMA_SERVER_ENV)
    if given:
        path = Path(given).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
        raise LlamaCppUnavailableError(
            "no executable llama-server at this path",
            where=f"--llama-server / {LLAMA_SERVER_ENV}={given}",
            fix="point at llama.cpp's build/bin/llama-server, or unset it to search .cache/llama.cpp and PATH",
        )
    project = Path(__file__).resolve().parents[3]  # src/domain_expert/serve/ -> the checkout (editable installs)
    for root in dict.fromkeys([project, Path.cwd()]):
        cand = root / BUILD_SUBPATH
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand.resolve()
    found = shutil.which("llama-server")
    if found:
        return Path(found).resolve()
    raise LlamaCppUnavailableError(
        "--engine llamacpp needs llama.cpp's llama-server, which was not found",
        where=f"{LLAMA_SERVER_ENV}, ./{BUILD_SUBPATH}, PATH",
        fix="run `make llamacpp` in the project folder (builds llama-server from source: about 5-8 minutes on 2 cores),"
        f" or set {LLAMA_SERVER_ENV}=/path/to/llama-server, or use the default --engine transformers",
    )


def inspect_llama_server(path: Path) -> LlamaServerBinary:
    """Its version, and a refusal when it lacks a flag this engine relies on (older builds ignore per-request LoRA
    scales, which would silently serve the tuned model as the base)."""
    try:
        ver = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
        helptext = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LlamaCppUnavailableError(
            f"llama-server did not run ({e})", where=str(path), fix="rebuild it with `make llamacpp`"
        ) from None
    out = (ver.stdout or "") + (ver.stderr or "")
    m = re.search(r"version:\s*(.+)", out)
    version = m.group(1).strip() if m else "unknown"
    missing = [f for f in _REQUIRED_FLAGS if f not in (helptext.stdout or "") + (helptext.stderr or "")]
    if missing:
        raise LlamaCppUnavailableError(
            f"this llama-server (version {version}) is too old: it lacks {', '.join(missing)}",
            where=str(path),
            fix="build a recent one with `make llamacpp` (llama-cpp-python 0.3.36's llama.cpp is known to work)",
        )
    return LlamaServerBinary(path, version)


def _base_folder(src) -> Path:
    path = Path(src.weights.path)
    if path.is_dir():
        return path
    try:  # a hub id: only what is already downloaded (serving never fetches)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(src.weights.path), local_files_only=True))
    except Exception:
        raise ExportError(
            "the base model's files are not on this machine",
            where=str(src.weights.path),
            fix="run the default engine once (it downloads the model), or pass a local model folder",
        ) from None


def _sources(src) -> list[Path]:
    base = _base_folder(src)
    files = [base / "config.json", *sorted(base.glob("*.safetensors"))]
    tok = Path(src.tokenizer_path)
    files += [tok / f for f in _TOKENIZER_FILES if (tok / f).is_file()]
    if src.has_adapter:
        files += [src.adapter_dir / "adapter_config.json", src.adapter_dir / "adapter_model.safetensors"]
    return files


def weights_key(src, precision: str) -> str:
    from domain_expert.fsutil import sha256_file

    h = hashlib.sha256(f"{CONVERTER_VERSION}\n{precision}\n".encode())
    for f in _sources(src):
        h.update(f"{f.name}\n{sha256_file(f)}\n".encode())
    return h.hexdigest()


def _cache_folder(src, precision: str, key: str) -> Path:
    if src.has_adapter and os.access(src.adapter_dir.parent, os.W_OK):
        return src.adapter_dir.parent / "serve-llamacpp" / precision
    root = Path(os.environ.get("DOMAIN_EXPERT_CACHE") or Path.home() / ".cache" / "domain-expert")
    return root / "llamacpp" / key[:16]


def prepare_weights(src, precision: str) -> LlamaCppWeights:
    """The base GGUF (+ adapter GGUF) for `src` (models.reference.RunModel), converted or reused from the cache."""
    from domain_expert.fsutil import read_json, staged_dir, write_json_atomic

    if precision not in PRECISIONS:
        raise ExportError(
            f"unknown llama.cpp precision '{precision}'",
            where="--llamacpp-precision",
            fix=f"use {', '.join(PRECISIONS)}",
        )
    _refuse_unconvertible(src)
    key = weights_key(src, precision)
    folder = _cache_folder(src, precision, key)
    stage = folder / "stage.json"
    if stage.is_file() and read_json(stage).get("key") == key:
        info = read_json(stage)
        adapter = folder / ADAPTER_GGUF if info.get("adapter") else None
        return LlamaCppWeights(folder, folder / BASE_GGUF, adapter, key, True, info)
    with staged_dir(folder, overwrite=True) as tmp:
        info = _convert(src, precision, tmp)
        info["key"] = key
        write_json_atomic(tmp / "stage.json", info)
    adapter = folder / ADAPTER_GGUF if info.get("adapter") else None
    return LlamaCppWeights(folder, folder / BASE_GGUF, adapter, key, False, info)


def _refuse_unconvertible(src) -> None:
    from domain_expert.export.gguf_writer import check_convertible

    base = _base_folder(src)
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    if config.get("is_encoder_decoder"):
        raise ExportError(
            f"--engine llamacpp serves decoder-only models; {(config.get('architectures') or ['?'])[0]} is an"
            " encoder-decoder (seq2seq) model",
            where=str(base),
            fix="serve it with the default --engine transformers",
        )
    try:
        check_convertible(config, str(base))
    except ExportError as e:
        raise ExportError(
            f"--engine llamacpp: {e.what}", where=e.where, fix="serve it with the default --engine transformers"
        ) from None
    if not list(base.glob("*.safetensors")):
        raise ExportError(
            "the base model has no safetensors weights to convert",
            where=str(base),
            fix="save it with safetensors (save_pretrained's default), or use --engine transformers",
        )


def _convert(src, precision: str, out: Path) -> dict:
    """Write model.gguf (checked by transformers reload) and adapter.gguf into `out`; return stage.json's body."""
    from transformers import AutoTokenizer

    from domain_expert.export.gguf_export import check_gguf
    from domain_expert.export.gguf_lora import write_lora_gguf
    from domain_expert.export.gguf_writer import write_gguf
    from domain_expert.export.hf import _fidelity_prompts
    from domain_expert.fsutil import read_json

    base = _base_folder(src)
    view = out / "base-view"  # the base weights with the run's tokenizer: what training saw, in one folder
    view.mkdir()
    for f in [base / "config.json", *base.glob("*.safetensors")]:
        (view / f.name).symlink_to(f.resolve())
    tok_dir = Path(src.tokenizer_path)
    for name in _TOKENIZER_FILES:
        f = tok_dir / name if (tok_dir / name).is_file() else base / name
        if f.is_file():
            (view / name).symlink_to(f.resolve())
    t0 = time.time()
    gguf_type = precision
    written = write_gguf(view, out / BASE_GGUF, gguf_type, Path(src.reference).name)
    seconds = round(time.time() - t0, 1)
    tokenizer = AutoTokenizer.from_pretrained(view)
    fmt = src.prompt_format(tokenizer)
    ft_stage = read_json(src.adapter_dir / "stage.json") if src.has_adapter else {}
    batch = [fmt.encode_prompt(tokenizer, p) for p in _fidelity_prompts(ft_stage, 4)]
    check = check_gguf(out, view, batch, gguf_type)
    shutil.rmtree(view)
    info: dict = {
        "stage": "serve-llamacpp",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "precision": precision,
        "base": {"source": str(base), "written": written, "seconds": seconds, "check": check},
        "adapter": None,
    }
    if src.has_adapter:
        config = json.loads((base / "config.json").read_text(encoding="utf-8"))
        info["adapter"] = {
            "source": str(src.adapter_dir),
            **write_lora_gguf(src.adapter_dir, config, out / ADAPTER_GGUF),
        }
    return info

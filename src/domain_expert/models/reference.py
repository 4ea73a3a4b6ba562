"""What a model reference names, resolved on disk before any weights are loaded.

A reference is a built-in alias, a local Hugging Face folder, a hub id, or a run: `runs/<name>` (the tuned model:
base + the LoRA adapter of its finetune/ stage), `runs/<name>/finetune`, or `runs/<name>/export` (the merged folder).
Every stage resolves references here, so "which weights, which adapter, which tokenizer, which prompt format" has one
answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from domain_expert.errors import ModelNotFoundError, RunFolderError
from domain_expert.fsutil import read_json
from domain_expert.models.builtin import BUILTINS, ensure_converted
from domain_expert.prompts import PromptFormat
from domain_expert.runs import completed_stage, stage_info


@dataclass(frozen=True)
class ResolvedModel:
    reference: str  # what the user wrote
    path: str  # local folder or hub id passed to from_pretrained
    source: str  # builtin | local | hub
    origin: str  # human-readable provenance for manifests and model cards
    license: str


@dataclass(frozen=True)
class RunModel:
    """A model to load for inference: weights (`weights`), optionally a LoRA adapter on them, and the tokenizer and
    prompt format it was trained with."""

    reference: str
    weights: ResolvedModel  # the base model for an adapter; the model itself otherwise
    adapter_dir: Path | None  # a finetune/ folder with the LoRA adapter, or None
    tokenizer_path: str
    label: str

    @property
    def has_adapter(self) -> bool:
        return self.adapter_dir is not None

    def prompt_format(self, tokenizer) -> PromptFormat:
        """The trained format when the folder records one; else chat if the tokenizer has a template."""
        folder = Path(self.adapter_dir or self.tokenizer_path)
        if (folder / "prompt_format.json").exists():
            return PromptFormat.load(folder)
        return PromptFormat("chat" if getattr(tokenizer, "chat_template", None) else "plain")


def resolve_model(ref: str, *, progress: bool = True) -> ResolvedModel:
    """A base model reference (config `model:`): built-in alias, local folder, or hub id."""
    if ref in BUILTINS:
        b = BUILTINS[ref]
        folder = ensure_converted(b, progress=progress)
        return ResolvedModel(ref, str(folder), "builtin", b.origin, b.license)
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

    hub_guard(lambda: AutoConfig.from_pretrained(ref), ref)
    return ResolvedModel(ref, ref, "hub", f"Hugging Face hub {ref}", "see the model card on the hub")


def is_tuned_run(path: str | Path) -> bool:
    """True for a run folder or a finetune folder: a base model plus a LoRA adapter."""
    return completed_stage(Path(path), "finetune") is not None


def resolve_run(ref: str | Path, *, base: bool = False) -> RunModel:
    """A model to run inference with. `ref`: a run folder, its finetune/ or export/ folder, any plain HF folder,
    or (when no such path exists) a built-in alias or hub id. `base` asks for the untuned base of a run (for an
    export folder, the base of the run it was exported from)."""
    path = Path(ref)
    if not path.exists():
        if str(ref) in BUILTINS or ("/" in str(ref) and not str(ref).startswith((".", "/", "~"))):
            resolved = resolve_model(str(ref))
            return RunModel(str(ref), resolved, None, resolved.path, resolved.reference)
        raise RunFolderError(
            "run or model folder not found",
            where=str(path),
            fix="pass runs/<name> (made by `domain-expert run`) or a model folder",
        )
    ft = completed_stage(path, "finetune")
    if ft is not None:
        info = read_json(ft / "stage.json")
        weights = ResolvedModel(**info["base_model"])
        name = weights.reference
        return RunModel(str(ref), weights, ft, str(ft), f"{name} (base)" if base else f"{name} + LoRA")
    if base:
        exp = stage_info(path) or {}
        if exp.get("stage") == "export":
            return resolve_run(exp["finetune_dir"], base=True)
        raise RunFolderError(
            "--base needs a run or finetune folder (to know the base model)",
            where=str(path),
            fix="pass the run folder instead of a plain model folder",
        )
    if not (path / "config.json").exists():
        raise RunFolderError(
            "not a run, finetune or model folder",
            where=str(path),
            fix="pass runs/<name>, runs/<name>/finetune or runs/<name>/export",
        )
    local = ResolvedModel(str(ref), str(path), "local", f"local folder {path.resolve()}", "see model folder")
    return RunModel(str(ref), local, None, str(path), str(path))


def hub_guard(fn, path: str):
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

"""Load weights: a base model in a dtype and on a device chosen by capability (or asked for), and a run's LoRA adapter
on it, merged, unmerged (switchable off per call: base and tuned share one copy of the weights) or off.

The only place in the project that calls a model class's `from_pretrained` (the built-in GGUF conversion and export's
reload check aside, which write and verify folders).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from domain_expert.errors import UnsupportedModelError
from domain_expert.models.kinds import CAUSAL, SEQ2SEQ, auto_class, model_kind
from domain_expert.models.reference import RunModel, hub_guard, resolve_run
from domain_expert.prompts import PromptFormat

AdapterMode = Literal["unmerged", "merged", "off"]


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    fmt: PromptFormat
    label: str
    has_adapter: bool  # True when the base can be reached by disabling the adapter (no second copy in memory)
    kind: str = CAUSAL  # causal | seq2seq (models.kinds)
    source: RunModel | None = None  # what the reference resolved to


def load_model(
    path: str,
    *,
    dtype,
    device: str = "cpu",
    quantization: str = "none",
    attn: str = "auto",
    kind: str | None = None,
):
    """A base model from a folder or hub id, with the head its kind needs. `quantization="4bit"`: NF4 (QLoRA, CUDA)."""
    kind = kind or model_kind(path)
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
    cls = auto_class(kind)
    model = hub_guard(lambda: cls.from_pretrained(path, **kwargs), path)
    if quantization != "4bit":
        model.to(device)
    return model


_TASK_KIND = {"CAUSAL_LM": CAUSAL, "SEQ_2_SEQ_LM": SEQ2SEQ}


def attach_adapter(model, adapter_dir: str | Path, tokenizer, *, trainable: bool = False):
    """The run's LoRA adapter on `model` (a PeftModel), the embeddings first grown to the tokenizer if training
    added tokens (a pad token). An adapter trained for another kind of model, or on weights of other shapes, is
    refused naming both."""
    from peft import PeftModel

    check_adapter_fits(model, adapter_dir)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        raise UnsupportedModelError(
            f"the adapter's weights do not fit {_model_label(model)} "
            f"(adapter trained on {_adapter_base(adapter_dir)}): {str(e).splitlines()[-1].strip()[:160]}",
            where=str(adapter_dir),
            fix="load the adapter on the base model it was trained on (its finetune/stage.json names it)",
        ) from None


def check_adapter_fits(model, adapter_dir: str | Path) -> None:
    """Refuse an adapter whose PEFT task (causal or seq2seq LM) is not the kind of `model`."""
    import json

    try:
        task = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8")).get("task_type")
    except (OSError, ValueError):
        return  # PEFT reports a missing or broken adapter itself
    adapter_kind = _TASK_KIND.get(task or "")
    model_kind = SEQ2SEQ if getattr(model.config, "is_encoder_decoder", False) else CAUSAL
    if adapter_kind is not None and adapter_kind != model_kind:
        raise UnsupportedModelError(
            f"a {adapter_kind} adapter (task_type {task}, trained on {_adapter_base(adapter_dir)}) cannot load on "
            f"{_model_label(model)}, a {model_kind} model",
            where=str(adapter_dir),
            fix="load the adapter on the base model it was trained on (its finetune/stage.json names it)",
        )


def _adapter_base(adapter_dir: str | Path) -> str:
    import json

    try:
        cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "an unknown base"
    return str(cfg.get("base_model_name_or_path") or "an unknown base")


def _model_label(model) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = getattr(base.config, "name_or_path", "") or getattr(base.config, "_name_or_path", "")
    return f"{type(base).__name__} ({name})" if name else type(base).__name__


def load_for_inference(
    ref: str | Path,
    *,
    base: bool = False,
    adapter: AdapterMode = "unmerged",
    device: str = "auto",
    dtype: str = "auto",
) -> LoadedModel:
    """`ref`: a run folder, its finetune/ folder (base + adapter), its export/ folder, any plain HF folder, or a
    built-in alias / hub id. A run's adapter is attached `unmerged` (the base reachable per call through
    `adapter_off`), `merged` into the weights (the tuned model alone, fastest to decode), or `off` (not loaded: the
    base alone). `device` and `dtype` "auto" pick by what the machine can do (hardware.py)."""
    from domain_expert.hardware import resolve_device, resolve_dtype
    from domain_expert.models.tokenizer import load_tokenizer

    src = resolve_run(ref, base=base)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    tok = load_tokenizer(src.tokenizer_path)
    kind = model_kind(src.weights.path)
    fmt = dataclasses.replace(src.prompt_format(tok), kind=kind)  # a plain folder records no kind: its config says
    model = load_model(src.weights.path, dtype=dt, device=dev, kind=kind)
    has_adapter = False
    if src.has_adapter and adapter != "off":
        model = attach_adapter(model, src.adapter_dir, tok).to(dev)
        if adapter == "merged":
            model = model.merge_and_unload()
        has_adapter = adapter == "unmerged"
    elif len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))  # the tuned run's tokenizer may carry an added pad token
    model.eval()
    return LoadedModel(model, tok, fmt, src.label, has_adapter, kind, src)


def adapter_off(lm: LoadedModel, base: bool):
    """A context in which `lm` runs as its base model (adapter disabled) when `base`, else as it is."""
    if base and lm.has_adapter:
        return lm.model.disable_adapter()
    return contextlib.nullcontext()


def adapter_merged(model) -> bool:
    """True when a PeftModel's adapter is currently merged into its weights (merge_adapter)."""
    return any(getattr(m, "merged", False) for m in model.modules() if hasattr(m, "merged_adapters"))


def load_encoder(folder: str | Path, *, device: str = "cpu"):
    """(tokenizer, model) of a local sentence encoder (evaluation's embedding similarity), never from the hub.
    Raises OSError / ValueError as transformers does: the caller says how to reinstall it."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    return tokenizer, model.to(device).eval()

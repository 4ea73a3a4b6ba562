"""The model kind, decided here and nowhere else: `causal` (decoder-only: Llama, Mistral, Qwen2, Gemma, Phi, GPT-2,
...) or `seq2seq` (encoder-decoder: T5, Flan-T5, BART, ...). Read from the model's config alone, before any weights
are loaded, so an architecture no stage can handle fails with a project error that says what is supported."""

from __future__ import annotations

from pathlib import Path

from domain_expert.errors import UnsupportedModelError

CAUSAL = "causal"
SEQ2SEQ = "seq2seq"
KINDS = (CAUSAL, SEQ2SEQ)
_EXAMPLES = {CAUSAL: "Llama, Mistral, Qwen2, Gemma, Phi, GPT-2", SEQ2SEQ: "T5, Flan-T5, BART"}


def load_config(path: str):
    """The transformers config of a model folder or hub id; an unknown model type is an UnsupportedModelError."""
    from transformers import AutoConfig

    from domain_expert.models.reference import hub_guard

    try:
        return hub_guard(lambda: AutoConfig.from_pretrained(path), path)
    except (ValueError, KeyError) as e:  # transformers does not know the model_type at all
        raise UnsupportedModelError(
            f"transformers does not know this model type ({str(e).splitlines()[0][:160]})",
            where=str(path),
            fix=f"use a supported kind: {supported()}; code shipped with a model (trust_remote_code) is never run",
        ) from None


def kind_of_config(config, where: str = "model") -> str:
    """`causal` or `seq2seq` for a transformers config; anything else is refused with what is supported."""
    from transformers.models.auto import modeling_auto as auto

    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False) and model_type in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return SEQ2SEQ
    if model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "is_encoder_decoder", False):
        return CAUSAL
    archs = ", ".join(getattr(config, "architectures", None) or []) or str(model_type)
    raise UnsupportedModelError(
        f"architecture {archs} is neither a causal (decoder-only) nor an encoder-decoder language model",
        where=where,
        fix=f"use a supported kind: {supported()}",
    )


def model_kind(path: str | Path) -> str:
    """The kind of the model at `path` (folder or hub id), from its config."""
    return kind_of_config(load_config(str(path)), where=str(path))


def require_kind(kind: str, allowed: tuple[str, ...], what: str, where: str) -> None:
    """Stages that do not handle every kind yet refuse the others here, with one clear message."""
    if kind not in allowed:
        raise UnsupportedModelError(
            f"{what} does not support {kind} models yet",
            where=where,
            fix=f"use a {' or '.join(allowed)} model ({'; '.join(_EXAMPLES[k] for k in allowed)})",
        )


def supported() -> str:
    return "; ".join(f"{k} ({v})" for k, v in _EXAMPLES.items())


def auto_class(kind: str):
    """The transformers Auto class that loads a model of this kind with its language-model head."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return {CAUSAL: AutoModelForCausalLM, SEQ2SEQ: AutoModelForSeq2SeqLM}[kind]

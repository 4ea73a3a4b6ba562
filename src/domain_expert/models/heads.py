"""Whether a causal LM's logits are its output head applied to its decoder's hidden states, nothing more.

Training's loss, evaluation's scoring and the serving engine call the decoder and the head separately where they may
(logits only at the positions needed; a contiguous input to the head). That is exact only for models whose forward
ends in `logits = lm_head(hidden)`: Gemma 2/3 soft-cap the logits, Cohere multiplies them by `logit_scale`, Granite
divides them by `logits_scaling`, and calling the head alone silently gives other log-probs. So it is an allow-list
(model types whose forward was read and ends in the head, checked against the installed transformers by
tests/test_serve_exact.py) plus a check of the config attributes known to post-process logits; anything else takes
the model's own forward, which is always exact.
"""

from __future__ import annotations

# model types whose ForCausalLM.forward computes `logits = self.lm_head(hidden_states)` and returns them unchanged
PLAIN_HEAD_TYPES = frozenset(
    {
        "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "olmo", "olmo2", "starcoder2", "mixtral", "qwen2_moe",
        "qwen3_moe", "phi", "stablelm", "gpt_neox", "smollm3",
    }
)  # fmt: skip

# config attributes that, set, change logits after the head (or mark a family that does)
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def logits_postprocessing(model) -> str | None:
    """Why `model`'s logits may differ from `model.get_output_embeddings()(decoder hidden states)`; None when they are
    exactly that (same arithmetic). `model` is the plain transformers model (not a PEFT wrapper)."""
    cfg = model.config
    model_type = getattr(cfg, "model_type", None)
    for name in LOGIT_POSTPROCESSING:
        value = getattr(cfg, name, None)
        if value is not None:
            return f"{name}={value} post-processes the logits"
    if model_type not in PLAIN_HEAD_TYPES:
        return f"model_type {model_type!r} is not known to compute logits as head(hidden states)"
    return None


def logits_are_head(model) -> bool:
    """True when the decoder and the head may be called separately with the same result as the model's forward."""
    return logits_postprocessing(model) is None

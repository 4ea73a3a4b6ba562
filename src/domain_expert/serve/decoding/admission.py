"""Which models the lean decoder (lean_decoder.py) may serve: explicit checks of every structural feature it
implements, then a probe at load that compares its log-probs with the model's own forward.

The lean forward implements exactly: token embeddings unscaled; per layer RMSNorm (weight * x, not Gemma's
(1 + weight) * x) with the config's eps, q/k/v projections (biases allowed) without q/k norms, rotary embeddings over
the whole head (static frequencies, rotate-half layout), attention over every earlier token (no sliding window, no
soft-capping, the module's own scaling), an o projection (bias allowed), RMSNorm, a SiLU-gated MLP without biases;
a final RMSNorm and a head without bias whose output the model returns unchanged (models.heads). Anything else is not
admitted, with the reason; the engine then runs the model's own forward (batcher.py), which is exact by definition.

The checks read the config and the module tree: a model type that grows a feature the checks do not know fails the
module-name comparisons (`_EXPECTED_CHILDREN`) rather than being served wrongly, and the probe catches what slips
through both.
"""

from __future__ import annotations

import contextlib

LEAN_MODEL_TYPES = ("llama", "mistral", "qwen2")
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")  # weight * normalised x (Gemma's is 1 + weight)
SILU = ("SiLU", "SiLUActivation")
# config attributes of features the lean forward does not implement, whatever the model type says
UNSUPPORTED_CONFIG = (
    "attn_logit_softcapping", "query_pre_attn_scalar", "embedding_multiplier", "residual_multiplier",
    "attention_multiplier", "use_qk_norm", "qk_layernorm",
)  # fmt: skip
_EXPECTED_CHILDREN = {
    "decoder": {"embed_tokens", "layers", "norm", "rotary_emb"},
    "layer": {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"},
    "attention": {"q_proj", "k_proj", "v_proj", "o_proj"},
    "mlp": {"gate_proj", "up_proj", "down_proj", "act_fn"},
}

# Largest |log-prob difference| (nats, over each probed position's PROBE_TOP likeliest tokens: `logprob_gap`) between
# the lean path and the model's own forward that still counts as the same computation, per serving dtype. Measured by
# bench/serve_probe_tolerance.py: in fp32 two equivalent computations (lean vs forward, eager vs sdpa attention) land
# within 5e-5 on SmolLM2 and 1e-5 on tiny models; in bf16 the model's own forward differs from itself by up to 0.36
# nats between eager and sdpa attention on SmolLM2 (0.16 on tiny models), so bf16 allows 2x that. Dropping a
# soft-cap of 30 moves SmolLM2's log-probs by 3.1 nats (tiny models: 0.05-0.08, caught in fp32 only). float16 is not
# measured: it gets bf16's bound.
PROBE_TOP = 20
PROBE_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.75, "float16": 0.75}


def _children(module) -> set[str]:
    return {name for name, _ in module.named_children()}


def _config_reason(cfg) -> str | None:
    if cfg.model_type not in LEAN_MODEL_TYPES:
        return f"model_type {cfg.model_type!r}"
    for name in UNSUPPORTED_CONFIG:
        if getattr(cfg, name, None):
            return f"{name}={getattr(cfg, name)}"
    window = getattr(cfg, "sliding_window", None)
    limit = getattr(cfg, "max_position_embeddings", None)
    uses_window = window and getattr(cfg, "use_sliding_window", True) and not (limit and window >= limit)
    if uses_window or "sliding_attention" in (getattr(cfg, "layer_types", None) or ()):
        return "sliding-window attention"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    rope = getattr(cfg, "rope_parameters", None) or {}
    # frequencies fixed at load (read from the model's rotary module); dynamic and longrope rescale with the
    # sequence length inside transformers' forward
    if rope.get("rope_type", "default") not in STATIC_ROPE_TYPES:
        return f"rope_type {rope.get('rope_type')!r}"
    if rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0)) not in (None, 1, 1.0):
        return "partial rotary embeddings"
    if getattr(cfg, "mlp_bias", False):
        return "MLP biases"
    return None


def _layer_reason(i: int, layer, cfg, head_dim: int) -> str | None:
    import torch

    for part, module in (("layer", layer), ("attention", layer.self_attn), ("mlp", layer.mlp)):
        if _children(module) != _EXPECTED_CHILDREN[part]:
            return f"layer {i}: {part} modules {sorted(_children(module))}"
    at, mlp = layer.self_attn, layer.mlp
    projections = (at.q_proj, at.k_proj, at.v_proj, at.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    if any(type(p) is not torch.nn.Linear for p in projections):
        return f"layer {i}: projections that are not plain Linear layers"
    if len({p.bias is None for p in (at.q_proj, at.k_proj, at.v_proj)}) > 1:
        return f"layer {i}: biases on some of q/k/v only"
    if any(p.bias is not None for p in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)):
        return f"layer {i}: MLP biases"
    if type(mlp.act_fn).__name__ not in SILU:
        return f"layer {i}: activation {type(mlp.act_fn).__name__}"
    if getattr(at, "sliding_window", None) or getattr(layer, "attention_type", "full_attention") != "full_attention":
        return f"layer {i}: sliding-window attention"
    if at.head_dim != head_dim or at.q_proj.out_features != cfg.num_attention_heads * head_dim:
        return f"layer {i}: head_dim {at.head_dim} differs from the first layer's or the heads'"
    for norm in (layer.input_layernorm, layer.post_attention_layernorm):
        if type(norm).__name__ not in RMS_NORMS or getattr(norm, "variance_epsilon", None) != cfg.rms_norm_eps:
            return f"layer {i}: norm {type(norm).__name__} (eps {getattr(norm, 'variance_epsilon', None)})"
    return None


def unsupported(model) -> str | None:
    """Why the lean forward cannot run `model` exactly (None if every feature of it is one the lean forward
    implements)."""
    import torch

    from domain_expert.models.heads import logits_postprocessing

    cfg = model.config
    why = _config_reason(cfg) or logits_postprocessing(model)
    if why:
        return why
    dec = model.get_decoder()
    if _children(dec) != _EXPECTED_CHILDREN["decoder"]:
        return f"decoder modules {sorted(_children(dec))}"
    if type(dec.embed_tokens) is not torch.nn.Embedding:
        return f"embeddings {type(dec.embed_tokens).__name__} (scaled or otherwise not plain)"
    if type(dec.norm).__name__ not in RMS_NORMS or getattr(dec.norm, "variance_epsilon", None) != cfg.rms_norm_eps:
        return f"final norm {type(dec.norm).__name__}"
    head_dim = dec.layers[0].self_attn.head_dim
    rotary = dec.rotary_emb
    if getattr(rotary, "rope_type", "default") not in STATIC_ROPE_TYPES or not hasattr(rotary, "inv_freq"):
        return f"rotary embedding {type(rotary).__name__} ({getattr(rotary, 'rope_type', None)})"
    if rotary.inv_freq.numel() * 2 != head_dim:
        return f"rotary over {rotary.inv_freq.numel() * 2} of {head_dim} head dimensions"
    for i, layer in enumerate(dec.layers):
        why = _layer_reason(i, layer, cfg, head_dim)
        if why:
            return why
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return "output head with a bias or not a plain Linear layer"
    return None


def logprob_gap(got, want, top: int = PROBE_TOP) -> float:
    """Largest |log-prob difference| between logits `got` and `want` ([positions, vocab]) over each position's `top`
    most likely tokens under `want`: the tokens greedy decoding picks and the API returns (top_logprobs <= 20). Over
    the whole vocabulary bf16 rounding alone reaches 0.2-0.55 nats in the far tail (logits of magnitude 16-32 have a
    rounding step of 0.125; bench/serve_probe_tolerance.py), which would hide a real difference."""
    import torch

    got, want = torch.log_softmax(got.float(), -1), torch.log_softmax(want.float(), -1)
    index = want.topk(min(top, want.shape[-1]), dim=-1).indices
    return float((got.gather(-1, index) - want.gather(-1, index)).abs().max())


def probe(model, lean, delta=None, *, prompt_tokens: int = 16, steps: int = 4) -> tuple[float, float]:
    """(largest |log-prob difference| of the likeliest tokens (`logprob_gap`), the dtype's tolerance) between the
    lean path and the model's own forward (`model(input_ids).logits`: its logits processing included) on a fixed
    pseudo-random prompt: every prefill position and `steps` greedy decoding steps through the lean path's cache, in
    the serving dtype, for the tuned lane and, with `delta`, the base lane (the reference then runs with the delta's
    forward hooks)."""
    import torch
    from transformers import DynamicCache

    weight = lean.embed.weight
    vocab, device = weight.shape[0], weight.device
    prompt = torch.randint(vocab, (1, prompt_tokens), generator=torch.Generator().manual_seed(0)).to(device)
    worst = 0.0
    for subtract in (False, True) if delta is not None else (False,):
        cache, seq = DynamicCache(), prompt
        positions = torch.arange(prompt_tokens, device=device)[None]
        got = [lean.logits(lean(seq, torch.ones_like(seq), positions, cache, subtract=subtract)[0])]
        for _ in range(steps):
            token = got[-1][-1:].argmax(-1)[None]  # [1, 1]
            seq = torch.cat([seq, token], dim=1)
            at = torch.tensor([[seq.shape[1] - 1]], device=device)
            got.append(lean.logits(lean(token, torch.ones_like(seq), at, cache, subtract=subtract)[0]))
        with delta.subtracting() if subtract else contextlib.nullcontext():
            want = model(input_ids=seq).logits[0].float()
        worst = max(worst, logprob_gap(torch.cat(got), want))
    return worst, PROBE_TOLERANCE.get(str(weight.dtype).removeprefix("torch."), PROBE_TOLERANCE["bfloat16"])

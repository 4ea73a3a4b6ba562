"""A lean forward pass for Llama-architecture decoders, used by the batching engine (batcher.py).

Why: on this CPU a SmolLM2 decoding step spends most of its time outside the matrix products: transformers runs ~60
tensor operations and several decorated Python calls per layer, builds a 4D mask per step through its generic mask
machinery, and computes the rotary tables per call (bench/serve_decode_cost.py measures both paths side by side). This
computes the same arithmetic with fewer operations:

- q/k/v and gate/up as one matrix product each, over weights concatenated once at load (the model's own Linear
  weights become views into them: no second copy, and the transformers forward still works);
- rotary embedding applied to queries and keys together, with the cos/sin tables and the attention mask built once
  per step for all layers;
- one `scaled_dot_product_attention` call per layer (grouped-query attention without repeating keys/values);
- the base lane of a merged LoRA run subtracts the adapter's delta inside the same products (`addmm`), instead of
  forward hooks on every projection.

It reads and writes the same `DynamicCache` as the transformers forward (so the engine's join/trim code is unchanged)
and takes the same inputs: left-padded ids, a [rows, cached + new] 0/1 mask and position ids. tests/test_serve.py
checks logits and greedy continuations against the transformers forward, with and without the base-lane delta.
Only plain Llama-style models are accepted (`unsupported` says why not); the engine falls back to transformers.
"""

from __future__ import annotations

from dataclasses import dataclass


def unsupported(model) -> str | None:
    """Why the lean forward cannot run `model` exactly (None if it can)."""
    cfg = model.config
    if cfg.model_type not in ("llama", "mistral", "qwen2"):
        return f"model_type {cfg.model_type!r}"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return "sliding-window attention"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope_type {rope.get('rope_type')!r}"
    if getattr(cfg, "mlp_bias", False):
        return "MLP biases"
    dec = model.get_decoder()
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(dec, name):
            return f"decoder without {name}"
    attn = dec.layers[0].self_attn
    if any(not hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return "attention without q/k/v/o projections"
    if type(attn.q_proj).__name__ != "Linear" or getattr(attn, "sliding_window", None):
        return "non-plain attention projections"
    return None


@dataclass
class _Layer:
    ln1: object
    ln2: object
    qkv: object  # [q + k + v out, hidden]
    qkv_bias: object
    o: object
    gu: object  # [2 * intermediate, hidden]
    down: object
    # base lane: (A concatenated [sum r, in], B block-diagonal and scaled [out, sum r]) per product, or None
    d_qkv: tuple | None = None
    d_o: tuple | None = None
    d_gu: tuple | None = None
    d_down: tuple | None = None


def _fuse(linears) -> object:
    """One weight for several Linear layers of the same input; each layer's weight becomes a view into it."""
    import torch

    with torch.no_grad():
        fused = torch.cat([m.weight for m in linears])
    offset = 0
    for m in linears:
        n = m.weight.shape[0]
        m.weight = torch.nn.Parameter(fused[offset : offset + n], requires_grad=False)
        offset += n
    return fused


def _delta(linears, parts: dict, dtype) -> tuple | None:
    """The LoRA delta of a group of projections as one (A, B) pair; a projection without an adapter gets a zero-rank
    block. None when none of them is adapted."""
    import torch

    if not any(m in parts for m in linears):
        return None
    a_s, b_s = [], []
    for m in linears:
        if m in parts:
            a, b, s = parts[m]
            a_s.append(a.to(dtype))
            b_s.append((b * s).to(dtype))
        else:
            a_s.append(m.weight.new_zeros((0, m.in_features)))
            b_s.append(m.weight.new_zeros((m.out_features, 0)))
    return torch.cat(a_s), torch.block_diag(*b_s)


class LeanDecoder:
    """The decoder of a (merged) Llama-style model as one lean function; `delta` (batcher.LoraDelta, already bound to
    the merged model) enables `subtract=True`, the base model's output."""

    def __init__(self, model, delta=None) -> None:
        import torch

        why = unsupported(model)
        if why:
            raise ValueError(f"the lean decoder does not support this model: {why}")
        cfg, dec = model.config, model.get_decoder()
        attn0 = dec.layers[0].self_attn
        self.embed = dec.embed_tokens
        self.final_norm = dec.norm.weight
        self.eps = cfg.rms_norm_eps
        self.inv_freq = dec.rotary_emb.inv_freq
        self.rope_scaling = dec.rotary_emb.attention_scaling
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = attn0.head_dim
        self.scale = attn0.scaling
        self.intermediate = dec.layers[0].mlp.gate_proj.out_features
        parts = {lin: (a, b, s) for lin, a, b, s in (delta.parts if delta is not None else [])}
        dtype = attn0.q_proj.weight.dtype
        self.layers = []
        for layer in dec.layers:
            at, mlp = layer.self_attn, layer.mlp
            qkv_l, gu_l = [at.q_proj, at.k_proj, at.v_proj], [mlp.gate_proj, mlp.up_proj]
            biases = [m.bias for m in qkv_l]
            qkv_bias = None
            if any(b is not None for b in biases):  # Qwen2: q/k/v biases
                qkv_bias = torch.cat([b.detach() if b is not None else m.weight.new_zeros(m.out_features)
                                      for b, m in zip(biases, qkv_l, strict=True)])  # fmt: skip
            self.layers.append(
                _Layer(
                    ln1=layer.input_layernorm.weight,
                    ln2=layer.post_attention_layernorm.weight,
                    qkv=_fuse(qkv_l),
                    qkv_bias=qkv_bias,
                    o=at.o_proj.weight,
                    gu=_fuse(gu_l),
                    down=mlp.down_proj.weight,
                    d_qkv=_delta(qkv_l, parts, dtype),
                    d_o=_delta([at.o_proj], parts, dtype),
                    d_gu=_delta(gu_l, parts, dtype),
                    d_down=_delta([mlp.down_proj], parts, dtype),
                )
            )

    def _norm(self, x, weight):
        import torch

        # as LlamaRMSNorm: in float32, scaled in the input's dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * xf.to(x.dtype)

    @staticmethod
    def _linear(x, weight, bias=None, delta=None):
        import torch
        import torch.nn.functional as F

        y = F.linear(x, weight, bias)
        if delta is not None:  # the base lane: y - B(A x), in the same pass as the add
            a, b = delta
            y = torch.addmm(y, F.linear(x, a), b.t(), alpha=-1)
        return y

    def _attend(self, q, keys, values, bias):
        """Attention of q [rows, heads, new, dim] over keys/values [rows, kv heads, total, dim]: [rows * new,
        heads * dim]. Written out rather than `scaled_dot_product_attention`, whose CPU kernel took ~0.8 ms per layer
        for a decoding step of 16 rows here, about as long as all the layer's matrix products
        (bench/serve_decode_cost.py). Query heads are grouped onto their key/value head (no repeated keys), scores
        and softmax in float32 as transformers' eager attention does."""
        import torch

        rows, hq, new, d = q.shape
        hk = keys.shape[1]
        g = hq // hk
        qg = q.reshape(rows, hk, g * new, d)  # query head h reads key/value head h // g
        scores = torch.matmul(qg, keys.transpose(-1, -2)).float() * self.scale  # [rows, hk, g * new, total]
        scores = scores.view(rows, hk, g, new, -1) + bias[:, :, None]  # bias [rows, 1, new or 1, total]
        probs = torch.softmax(scores, dim=-1).to(q.dtype).view(rows, hk, g * new, -1)
        o = torch.matmul(probs, values)  # [rows, hk, g * new, dim]
        return o.view(rows, hq, new, d).transpose(1, 2).reshape(rows * new, hq * d)

    def __call__(self, ids, mask, positions, cache, subtract: bool = False):
        """Final-normed hidden states [rows, new, hidden] for `ids` [rows, new] at `positions`, attending to the
        cache's keys/values and themselves as `mask` [rows, cached + new] allows; the cache grows by `new`."""
        import torch
        import torch.nn.functional as F

        rows, new = ids.shape
        total = mask.shape[1]
        x = self.embed(ids).reshape(rows * new, -1)
        dtype = x.dtype
        freqs = positions[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scaling).to(dtype)[:, None]  # [rows, 1, new, dim]
        sin = (emb.sin() * self.rope_scaling).to(dtype)[:, None]
        allowed = mask.bool()[:, None, None, :]  # [rows, 1, 1, total]
        if new > 1:
            past = total - new
            q_pos = torch.arange(new, device=ids.device)[:, None] + past
            k_pos = torch.arange(total, device=ids.device)[None, :]
            # causal over the new tokens, and every query sees itself: a left-padding query would otherwise see
            # no key at all (softmax of nothing is NaN, and NaN * 0 is NaN in the rows that do attend)
            allowed = (allowed & (k_pos <= q_pos)) | (k_pos == q_pos)
        # additive, in float32 like the scores it is added to: 0 where allowed, -inf elsewhere
        bias = torch.zeros(allowed.shape, dtype=torch.float32, device=ids.device).masked_fill_(~allowed, float("-inf"))
        hq, hk, d = self.heads, self.kv_heads, self.head_dim
        half = d // 2
        for i, L in enumerate(self.layers):
            h = self._norm(x, L.ln1)
            qkv = self._linear(h, L.qkv, L.qkv_bias, L.d_qkv if subtract else None)
            qkv = qkv.view(rows, new, hq + 2 * hk, d).transpose(1, 2)  # [rows, heads, new, dim]
            qk, v = qkv[:, : hq + hk], qkv[:, hq + hk :]
            rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = qk * cos + rotated * sin
            keys, values = cache.update(qk[:, hq:], v, i)
            o = self._attend(qk[:, :hq], keys, values, bias)
            x = x + self._linear(o, L.o, None, L.d_o if subtract else None)
            h = self._norm(x, L.ln2)
            gu = self._linear(h, L.gu, None, L.d_gu if subtract else None)
            g, u = gu.split(self.intermediate, dim=-1)
            x = x + self._linear(F.silu(g) * u, L.down, None, L.d_down if subtract else None)
        return self._norm(x, self.final_norm).reshape(rows, new, -1)

"""A lean forward pass for Llama-architecture decoders, used by the batching engine (batcher.py).

Why: a SmolLM2 decoding step of 16 rows through transformers spent, on a Zen EPYC, about as long in the CPU kernel of
`scaled_dot_product_attention` (~0.8 ms per layer for a one-token query) as in all the layer's matrix products, and
oneDNN re-lays out each bf16 weight on every call. This computes the same arithmetic with:

- the weights pre-packed once in oneDNN's layout on CPU (`torch.ops.mkldnn`, as inductor does for frozen weights):
  the same results bit for bit in bf16, 1.3-2x faster products at 1-16 rows here; checked at load against
  `F.linear`, skipped when unavailable; it costs one more copy of the layer weights (~250 MB for SmolLM2);
- q/k/v and gate/up as one product each, over weights concatenated once at load (the model's own Linear weights
  become views into them, so the transformers forward still works without a second copy);
- attention written out (grouped-query heads onto their key/value head, scores and softmax in float32 as
  transformers' eager attention) or the fused kernel, whichever a probe at load finds faster on this CPU
  (`probe_attention`: the two CPUs measured here disagree), the rotary tables and the mask built once per step;
- the base lane of a merged LoRA run subtracting the adapter's delta inside the same products (`addmm`) instead of
  forward hooks on every projection.

It reads and writes the same `DynamicCache` as the transformers forward (the engine's join/trim code is unchanged)
and takes the same inputs: left-padded ids, a [rows, cached + new] 0/1 mask and position ids.
tests/test_lean_decoder.py checks hidden states and caches against the transformers forward, with and without the
base-lane delta, and tests/test_serve_batching.py the engine's answers both ways. bench/serve_decode_cost.py
measures both paths side by side. Only models whose every structural feature it implements are accepted
(admission.py: `unsupported` says why not, and a probe at load compares its log-probs with the model's own
forward); the engine runs the model's own forward for the others, and `serve --decoder transformers` chooses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain_expert.lora_math import fuse_linears, lora_as_one
from domain_expert.serve.decoding.admission import unsupported

__all__ = ["LeanDecoder", "probe_attention", "unsupported"]


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
    o_bias: object = None  # Llama with attention_bias has one


def _delta(linears, parts: dict, dtype) -> tuple | None:
    """The LoRA delta of a group of projections as one (A, B) pair; a projection without an adapter gets a zero-rank
    block. None when none of them is adapted."""
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
    return lora_as_one(a_s, b_s)


# float32 attention scores ([rows, heads, new, total] elements) up to which CPU attention is written out: 16 MiB
WRITTEN_OUT_MAX_SCORES = 1 << 22
ATTENTION_CHOICES = ("auto", "written", "fused")


def probe_attention(heads: int, kv_heads: int, head_dim: int, dtype, rounds: int = 3, calls: int = 10) -> tuple:
    """Which CPU attention is faster on this machine for a decoding step of 16 rows over 128 cached columns (the
    serving engine's busy case): ("written" or "fused", {name: best microseconds per call}).

    Why a probe and not a rule: the same step measured opposite ways on two CPUs. On a Zen EPYC (AVX-512 bf16, no AMX)
    the fused `scaled_dot_product_attention` kernel took ~0.8 ms per layer at 16 rows, as long as the layer's
    products, and writing attention out won; on a Sapphire Rapids Xeon (AMX) the fused kernel took 71 us against
    190 us written out, and a whole 16-row SmolLM2 step was 1.2x faster with it (bench/serve_decode_cost.py). The
    probe costs a few milliseconds at load. Inputs are views into wider buffers, as the engine's key/value slots are."""
    import time

    import torch

    g = torch.Generator().manual_seed(0)
    rows, total = 16, 128
    q = torch.randn(rows, heads, 1, head_dim, generator=g).to(dtype)
    buf = torch.randn(2, rows, kv_heads, total + 64, head_dim, generator=g).to(dtype)
    keys, values = buf[0, :, :, 32 : 32 + total], buf[1, :, :, 32 : 32 + total]
    allowed = torch.ones(rows, 1, 1, total, dtype=torch.bool)
    allowed[::2, :, :, :16] = False  # left padding in half the rows
    probe = LeanDecoder.__new__(LeanDecoder)  # only _attend's inputs: the scale
    probe.scale = head_dim**-0.5
    masks = {"written": _additive(allowed), "fused": allowed}
    best = dict.fromkeys(masks, float("inf"))
    for mask in masks.values():  # first calls pay one-off set-up
        probe._attend(q, keys, values, mask)
    for _ in range(rounds):  # interleaved, so that drift hits both alike
        for name, mask in masks.items():
            t = time.perf_counter()
            for _ in range(calls):
                probe._attend(q, keys, values, mask)
            best[name] = min(best[name], (time.perf_counter() - t) / calls * 1e6)
    return min(best, key=best.get), best


def _prepack(weights) -> dict:
    """oneDNN-packed copies of frozen Linear weights on CPU, keyed by id(weight), if packing works here and gives
    what `F.linear` gives (bit for bit in bf16; fp32 may take another kernel, so within 1e-4 relative)."""
    import torch
    import torch.nn.functional as F

    w0 = weights[0]
    if (
        w0.device.type != "cpu"
        or not torch.backends.mkldnn.is_available()
        or w0.dtype not in (torch.bfloat16, torch.float32)
    ):
        return {}
    try:
        x = torch.randn(3, w0.shape[1], dtype=w0.dtype, generator=torch.Generator().manual_seed(0))
        probe = torch.ops.mkldnn._reorder_linear_weight(w0, 16)
        got = torch.ops.mkldnn._linear_pointwise(x, probe, None, "none", [], "")
        want = F.linear(x, w0)
        tol = 0 if w0.dtype == torch.bfloat16 else 1e-4 * float(want.abs().max())
        if got.shape != want.shape or float((got.float() - want.float()).abs().max()) > tol:
            return {}
        return {id(w): torch.ops.mkldnn._reorder_linear_weight(w.detach(), 16) for w in weights}
    except (RuntimeError, AttributeError):  # an older or differently built torch: plain products
        return {}


class LeanDecoder:
    """The decoder of a (merged) Llama-style model as one lean function; `delta` (lora_delta.LoraDelta, already bound to
    the merged model) enables `subtract=True`, the base model's output."""

    def __init__(self, model, delta=None, attention: str = "auto") -> None:
        """`attention`: on CPU, "written" (out, float32 scores as transformers' eager attention), "fused"
        (`scaled_dot_product_attention`) or "auto" (`probe_attention` picks the faster here). GPUs always use the
        fused kernel, and so do prompts whose scores would exceed WRITTEN_OUT_MAX_SCORES."""
        why = unsupported(model)
        if why:
            raise ValueError(f"the lean decoder does not support this model: {why}")
        if attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_CHOICES)}, not {attention!r}")
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
            qkv, qkv_bias = fuse_linears(qkv_l)  # Qwen2 has q/k/v biases
            gu, _ = fuse_linears(gu_l)  # no MLP biases (`unsupported`)
            self.layers.append(
                _Layer(
                    ln1=layer.input_layernorm.weight,
                    ln2=layer.post_attention_layernorm.weight,
                    qkv=qkv,
                    qkv_bias=qkv_bias,
                    o=at.o_proj.weight,
                    gu=gu,
                    down=mlp.down_proj.weight,
                    o_bias=at.o_proj.bias,
                    d_qkv=_delta(qkv_l, parts, dtype),
                    d_o=_delta([at.o_proj], parts, dtype),
                    d_gu=_delta(gu_l, parts, dtype),
                    d_down=_delta([mlp.down_proj], parts, dtype),
                )
            )
        self.head_weight = model.get_output_embeddings().weight
        weights = [w for L in self.layers for w in (L.qkv, L.o, L.gu, L.down)] + [self.head_weight]
        self.packed = _prepack(weights)  # id(weight) -> packed weight; empty where oneDNN packing is unavailable
        self.attention, self.attention_probe_us = attention, None
        if attention == "auto":
            if self.head_weight.device.type == "cpu":
                self.attention, self.attention_probe_us = probe_attention(
                    self.heads, self.kv_heads, self.head_dim, dtype
                )
            else:
                self.attention = "fused"

    def logits(self, hidden):
        """The output head on [rows, hidden] (float32 logits)."""
        return self._linear(hidden, self.head_weight).float()

    def _norm(self, x, weight):
        import torch.nn.functional as F

        # as LlamaRMSNorm (normalised in float32, rounded to the input's dtype, then scaled) in one fused kernel,
        # not five operations and two conversions: bit-identical in bf16 here, 23 -> 18.5 us at 16 rows on a Zen EPYC
        # (one-off check, no script kept; a whole step did not change measurably, bench/serve_decode_cost.py)
        return weight * F.rms_norm(x, (x.shape[-1],), None, self.eps)

    def _linear(self, x, weight, bias=None, delta=None):
        import torch
        import torch.nn.functional as F

        packed = self.packed.get(id(weight))
        if packed is not None:
            y = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        else:
            y = F.linear(x, weight, bias)
        if delta is not None:  # the base lane: y - B(A x), in the same pass as the add
            a, b = delta
            y = torch.addmm(y, F.linear(x, a), b.t(), alpha=-1)
        return y

    def _attend(self, q, keys, values, mask):
        """Attention of q [rows, heads, new, dim] over keys/values [rows, kv heads, total, dim]: [rows * new,
        heads * dim]. `mask` is the additive float32 bias of `_written_out` steps, else the boolean mask for
        `scaled_dot_product_attention`.

        Written out (on CPUs where `probe_attention` finds it faster than the fused kernel): query heads grouped onto
        their key/value head (no repeated keys), scores and softmax in float32 as transformers' eager attention
        does."""
        import torch
        import torch.nn.functional as F

        rows, hq, new, d = q.shape
        hk = keys.shape[1]
        if mask.dtype == torch.bool:
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale, enable_gqa=hq != hk)
            return o.transpose(1, 2).reshape(rows * new, hq * d)
        g = hq // hk
        qg = q.reshape(rows, hk, g * new, d)  # query head h reads key/value head h // g
        scores = torch.matmul(qg, keys.transpose(-1, -2)).float() * self.scale  # [rows, hk, g * new, total]
        scores = scores.view(rows, hk, g, new, -1) + mask[:, :, None]  # bias [rows, 1, new or 1, total]
        probs = torch.softmax(scores, dim=-1).to(q.dtype).view(rows, hk, g * new, -1)
        o = torch.matmul(probs, values)  # [rows, hk, g * new, dim]
        return o.view(rows, hq, new, d).transpose(1, 2).reshape(rows * new, hq * d)

    def _written_out(self, rows: int, new: int, total: int, device) -> bool:
        """Attention written out (CPU where chosen, float32 scores no larger than WRITTEN_OUT_MAX_SCORES) or the
        fused kernel (GPUs, CPUs where it is faster, and long prompts, whose [rows, heads, new, total] scores would not
        fit comfortably in memory)."""
        return (
            device.type == "cpu"
            and self.attention == "written"
            and rows * self.heads * new * total <= WRITTEN_OUT_MAX_SCORES
        )

    def __call__(self, ids, mask, positions, cache, subtract: bool = False):
        """Final-normed hidden states [rows, new, hidden] for `ids` [rows, new] at `positions`, attending to the
        cache's keys/values and themselves as `mask` [rows, cached + new] allows; the cache grows by `new`."""
        return self.mixed([(ids, mask, positions, cache)], subtract)[0]

    def mixed(self, parts: list[tuple], subtract: bool = False) -> list:
        """Several batches in one pass: `parts` is a list of (ids, mask, positions, cache) as `__call__` takes them
        (e.g. a lane's decoding step and a prefill of its arrivals); returns each one's hidden states.

        Why: the matrix products run once over all parts' tokens (concatenated), attention per part. On CPU a
        product's cost grows far less than its rows (SmolLM2's 30 layers: 5.1 ms at 1 row, 8.4 at 16, 20.6 at 64 on a
        Zen EPYC, bench/serve_decode_cost.py --products), and each separate pass pays the per-operation overhead of
        the norms, rotary and attention again."""
        import torch

        segments, xs = [], []
        for ids, mask, positions, cache in parts:
            rows, new = ids.shape
            xs.append(self.embed(ids).reshape(rows * new, -1))
            cos, sin = self._rotary(positions, xs[-1].dtype)
            segments.append((rows, new, cos, sin, self._attention_mask(mask, rows, new, ids.device), cache.update))
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        x = self._norm(self._layers(x, self.layers, segments, self._linear, subtract), self.final_norm)
        out, start = [], 0
        for rows, new, *_ in segments:
            out.append(x[start : start + rows * new].reshape(rows, new, -1))
            start += rows * new
        return out

    def _attention_mask(self, mask, rows: int, new: int, device):
        """The attention mask for `_attend`: boolean [rows, 1, new or 1, total], or its additive float32 form where
        attention is written out."""
        import torch

        total = mask.shape[1]
        allowed = mask.bool()[:, None, None, :]  # [rows, 1, 1, total]
        if new > 1:
            past = total - new
            q_pos = torch.arange(new, device=device)[:, None] + past
            k_pos = torch.arange(total, device=device)[None, :]
            # causal over the new tokens, and every query sees itself: a left-padding query would otherwise see
            # no key at all (softmax of nothing is NaN, and NaN * 0 is NaN in the rows that do attend)
            allowed = (allowed & (k_pos <= q_pos)) | (k_pos == q_pos)
        if self._written_out(rows, new, total, device):
            return _additive(allowed)
        return allowed

    def _rotary(self, positions, dtype):
        """cos and signed sin [rows, 1, new, dim] for `positions` [rows, new]: the sine's first half negated, so that
        rotate_half(x) * sin is x.roll(dim / 2) * signed sin (one copy per layer instead of a negation and a
        concatenation; (-a) * b and a * (-b) are the same float)."""
        import torch

        freqs = positions[..., None].float() * self.inv_freq.float()
        cos, sin = freqs.cos() * self.rope_scaling, freqs.sin() * self.rope_scaling
        return torch.cat((cos, cos), dim=-1).to(dtype)[:, None], torch.cat((-sin, sin), dim=-1).to(dtype)[:, None]

    def _layers(self, x, layers, segments, linear, subtract: bool):
        """The decoder layers on x [tokens, hidden], the tokens of one or more `segments` (rows, new, cos, sin,
        attention mask, update) one after the other: the products run on all of them, attention per segment.
        `update(keys, values, layer)` appends to a segment's cache and returns the layer's whole keys/values;
        `linear(x, weight, bias, delta)` is the product (`_linear`, or plain `F.linear` for the compiled step, whose
        compiler packs the frozen weights itself)."""
        import torch
        import torch.nn.functional as F

        hq, hk, d = self.heads, self.kv_heads, self.head_dim
        half = d // 2
        for i, L in enumerate(layers):
            h = self._norm(x, L.ln1)
            qkv_all = linear(h, L.qkv, L.qkv_bias, L.d_qkv if subtract else None)
            outs, start = [], 0
            for rows, new, cos, sin, attn_mask, update in segments:
                qkv = qkv_all if len(segments) == 1 else qkv_all[start : start + rows * new]
                start += rows * new
                qkv = qkv.view(rows, new, hq + 2 * hk, d).transpose(1, 2)  # [rows, heads, new, dim]
                qk, v = qkv[:, : hq + hk], qkv[:, hq + hk :]
                qk = qk * cos + qk.roll(half, dims=-1) * sin  # sin signed (`_rotary`)
                keys, values = update(qk[:, hq:], v, i)
                outs.append(self._attend(qk[:, :hq], keys, values, attn_mask))
            o = outs[0] if len(outs) == 1 else torch.cat(outs)
            x = x + linear(o, L.o, L.o_bias, L.d_o if subtract else None)
            h = self._norm(x, L.ln2)
            gu = linear(h, L.gu, None, L.d_gu if subtract else None)
            g, u = gu.split(self.intermediate, dim=-1)
            x = x + linear(F.silu(g) * u, L.down, None, L.d_down if subtract else None)
        return x


def _additive(allowed):
    """0 where allowed, -inf elsewhere, in float32 like the attention scores it is added to."""
    import torch

    return torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill(~allowed, float("-inf"))

"""The lean decoder's decoding step (one new token per row) compiled by torch.compile with the weights frozen, for
`serve --compile`.

Why: in the eager lean step, ~45 small operations per layer (norms, rotary, softmax, reshapes) each pay PyTorch's
dispatch cost, ~8 ms of a ~25 ms one-row SmolLM2 step on this CPU. Inductor fuses them into a few loops, and with
`freezing` it treats the weights as constants and lays them out for oneDNN itself (it cannot take our pre-packed
weights as graph inputs: compiled on plain weights, the step only matched the eager packed one). Measured on the
2-core CPU (one step, same inputs): 18.0 / 17.7 / 28.1 ms at 1 / 4 / 16 rows vs 25.7 / 26.9 / 37.4 eager;
whole-server figures in docs/benchmarks.md.

Costs, which is why it is a flag: compilation at start-up (~3 minutes for SmolLM2 on 2 cores: one graph for one
row and one for several, since dynamo specialises a size of 1), inductor's own copy of the weights, and
`torch._inductor.config.freezing` set for the process. Only the tuned lane's decoding steps run compiled; prefills
and the base lane's steps (which subtract the adapter's delta) stay on the eager lean decoder. The arithmetic is
the lean decoder's own (`LeanDecoder._layers`), but fused loops round bf16 intermediates differently, so bf16
logits differ in the last bits (fp32 SmolLM2: max logit difference 3e-5; tests/test_compiled_step.py checks fp32
within 1e-4, and tests/test_serve_batching.py the engine's answers).
"""

from __future__ import annotations

import logging
import time

from domain_expert.serve.decoding.lean_decoder import _additive, _Layer

log = logging.getLogger(__name__)


def _module(lean):
    """An nn.Module holding the decoder's weights as (frozen) parameters: inductor's freezing folds a compiled
    module's parameters into constants. No copies: the parameters share the lean decoder's tensors."""
    import torch
    import torch.nn.functional as F

    def frozen(tensors):
        return torch.nn.ParameterList([torch.nn.Parameter(t.detach(), requires_grad=False) for t in tensors])

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = frozen([L.ln1 for L in lean.layers])
            self.ln2 = frozen([L.ln2 for L in lean.layers])
            self.qkv = frozen([L.qkv for L in lean.layers])
            self.o = frozen([L.o for L in lean.layers])
            self.gu = frozen([L.gu for L in lean.layers])
            self.down = frozen([L.down for L in lean.layers])
            biased = lean.layers[0].qkv_bias is not None
            self.qkv_bias = frozen([L.qkv_bias for L in lean.layers]) if biased else None
            o_biased = lean.layers[0].o_bias is not None
            self.o_bias = frozen([L.o_bias for L in lean.layers]) if o_biased else None
            self.embed = torch.nn.Parameter(lean.embed.weight.detach(), requires_grad=False)
            self.final_norm = torch.nn.Parameter(lean.final_norm.detach(), requires_grad=False)
            self.head = torch.nn.Parameter(lean.head_weight.detach(), requires_grad=False)

        def forward(self, ids, mask, positions, keys: list, values: list):
            rows = ids.shape[0]
            x = F.embedding(ids, self.embed).reshape(rows, -1)
            cos, sin = lean._rotary(positions, x.dtype)
            attn_mask = _additive(mask.bool()[:, None, None, :])
            keys, values = list(keys), list(values)

            def update(k, v, i):
                keys[i] = torch.cat([keys[i], k], dim=2)
                values[i] = torch.cat([values[i], v], dim=2)
                return keys[i], values[i]

            layers = [  # dataclasses are traced by dynamo (a SimpleNamespace breaks the graph)
                _Layer(ln1=self.ln1[i], ln2=self.ln2[i], qkv=self.qkv[i], o=self.o[i], gu=self.gu[i],
                       down=self.down[i], qkv_bias=None if self.qkv_bias is None else self.qkv_bias[i],
                       o_bias=None if self.o_bias is None else self.o_bias[i])
                for i in range(len(self.qkv))
            ]  # fmt: skip
            x = lean._layers(x, layers, [(rows, 1, cos, sin, attn_mask, update)], _plain_linear, False)
            hidden = lean._norm(x, self.final_norm)
            return F.linear(hidden, self.head).float(), keys, values

    return Step().eval()


def _plain_linear(x, weight, bias=None, delta=None):
    import torch.nn.functional as F

    return F.linear(x, weight, bias)


class CompiledStep:
    """`step(ids [rows, 1], mask [rows, total], positions [rows, 1], cache)` -> float32 logits [rows, vocab], the
    DynamicCache's layers grown by one column, as the lean decoder + head would give."""

    def __init__(self, lean):
        import torch
        import torch._inductor.config as inductor_config

        self.kv_heads, self.head_dim = lean.kv_heads, lean.head_dim
        self.module = _module(lean)
        # process-wide: passing it in torch.compile's options left the weights as graph inputs (no gain measured)
        inductor_config.freezing = True
        self.fn = torch.compile(self.module, dynamic=True)

    def __call__(self, ids, mask, positions, cache):
        layers = cache.layers
        # contiguous inputs (the engine keeps them so): a sliced cache has other strides, and every new stride
        # pattern would recompile (~50 s here)
        keys = [x.keys.contiguous() for x in layers]
        values = [x.values.contiguous() for x in layers]
        logits, keys, values = self.fn(ids, mask.contiguous(), positions.contiguous(), keys, values)
        for layer, k, v in zip(layers, keys, values, strict=True):
            layer.keys, layer.values = k, v
        return logits

    def warm_up(self, context: int = 8) -> float:
        """Compile now for one row and for several (dynamo specialises a size of 1), on dummy inputs; seconds taken."""
        import torch
        from transformers import DynamicCache

        started = time.perf_counter()
        m = self.module
        dtype, device = m.embed.dtype, m.embed.device
        for rows in (1, 2):
            t = time.perf_counter()
            shape = (rows, self.kv_heads, context, self.head_dim)
            cache = DynamicCache(
                ddp_cache_data=[
                    (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                    for _ in range(len(m.qkv))
                ]
            )
            ids = torch.zeros((rows, 1), dtype=torch.long, device=device)
            mask = torch.ones((rows, context + 1), dtype=torch.long, device=device)
            self(ids, mask, torch.full((rows, 1), context, device=device), cache)
            log.info("compiled the decoding step for %s in %.0f s", "one row" if rows == 1 else "several rows",
                     time.perf_counter() - t)  # fmt: skip
        return time.perf_counter() - started

"""`serve --compile`: the lean decoder's decoding step under torch.compile with frozen weights
(serve/decoding/compiled_step.py) gives the eager lean decoder's logits and grows the cache alike, for one row and
several (fp32 tiny Llama)."""

from __future__ import annotations

import pytest
import torch

from domain_expert.serve.decoding.compiled_step import CompiledStep
from domain_expert.serve.decoding.lean_decoder import LeanDecoder
from test_lean_decoder import _left_padded, _model


@pytest.mark.slow  # torch.compile: ~2-3 min on 2 cores
def test_compiled_step_equals_the_eager_lean_step():
    from transformers import DynamicCache

    model = _model(bias=True, seed=5)
    with torch.no_grad():
        lean = LeanDecoder(model)
        step = CompiledStep(lean)
        assert step.warm_up() > 0
        for rows in (1, 3):
            ids, mask, pos = _left_padded(rows=rows)
            eager, compiled = DynamicCache(), DynamicCache()
            lean(ids, mask, pos, eager)
            lean(ids, mask, pos, compiled)
            last, pos = ids[:, -1:], pos[:, -1:]
            for _ in range(3):
                mask = torch.cat([mask, torch.ones(rows, 1, dtype=torch.long)], dim=1)
                pos = pos + 1
                want = lean.logits(lean(last, mask, pos, eager)[:, -1])
                got = step(last, mask, pos, compiled)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
                last = want.argmax(-1, keepdim=True)
            for a, b in zip(compiled.layers, eager.layers, strict=True):
                torch.testing.assert_close(a.keys, b.keys, rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(a.values, b.values, rtol=1e-4, atol=1e-4)

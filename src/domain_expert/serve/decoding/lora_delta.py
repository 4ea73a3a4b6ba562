"""The base lane of a LoRA run served from merged weights: the adapter's low-rank delta, subtracted again on demand."""

from __future__ import annotations

import contextlib


class LoraDelta:
    """The LoRA delta of a PEFT model whose adapter was merged into the weights: while `subtracting()` is active, every
    adapted Linear returns base_out - scale * B(A(dropout-free x)), i.e. the base model's output."""

    def __init__(self, peft_model):
        name = peft_model.active_adapter
        self.parts = []  # (LoRA-wrapped Linear, A weight, B weight, scaling)
        for module in peft_model.modules():
            if hasattr(module, "lora_A") and hasattr(module, "base_layer") and name in module.lora_A:
                a = module.lora_A[name].weight.detach().clone()
                b = module.lora_B[name].weight.detach().clone()
                self.parts.append((module, a, b, module.scaling[name]))
        if not self.parts:
            raise ValueError("no LoRA layers found: only LoRA adapters can be served with their base")

    def bind(self, merged_model) -> None:
        """After merge_and_unload: point at the plain Linear layers that replaced the LoRA wrappers."""
        self.parts = [(m.get_base_layer(), a, b, s) for m, a, b, s in self.parts]

    @contextlib.contextmanager
    def subtracting(self):
        handles = []

        def make_hook(a, b, s):
            def hook(module, inputs, output):
                x = inputs[0]
                return output - s * ((x.to(a.dtype) @ a.T) @ b.T).to(output.dtype)

            return hook

        try:
            for linear, a, b, s in self.parts:
                handles.append(linear.register_forward_hook(make_hook(a, b, s)))
            yield
        finally:
            for h in handles:
                h.remove()

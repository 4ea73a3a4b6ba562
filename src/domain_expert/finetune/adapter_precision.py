"""LoRA adapters computed in bf16, updated in fp32.

PEFT keeps adapter weights in fp32 when the base is bf16, so every adapted layer casts its input to fp32, runs the
two small matmuls in fp32 and casts back: 14% of a SmolLM2 training step on this CPU went to those casts, and the
fp32 matmuls run at half the bf16 rate. Running the adapters in the base's bf16 removes both, but an optimizer
stepping bf16 weights loses updates smaller than bf16's resolution (8 bits of mantissa: a 5e-4 step on a weight of
1.0 rounds away). So the optimizer keeps the fp32 weights (the "master" copy, as in mixed-precision training) and
the model gets bf16 copies: gradients are cast up after backward, the step runs in fp32, the weights are cast down.

`bench/train_levers.py` measures the speed; checkpoints and the saved adapter hold the fp32 weights (`master_in_model`),
so resuming continues exactly and the adapter loses nothing to bf16.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class MasterWeights:
    """Swap each trainable parameter of `model` for a `dtype` copy; the original fp32 parameters (which the optimizer
    already holds, with any state restored from a checkpoint) become the master copy."""

    def __init__(self, model, dtype) -> None:
        import torch

        self._slots = []  # (module, attribute name, low-precision parameter, fp32 master parameter)
        for name, master in list(model.named_parameters()):
            if not master.requires_grad:
                continue
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            low = torch.nn.Parameter(master.detach().to(dtype), requires_grad=True)
            setattr(module, attr, low)
            self._slots.append((module, attr, low, master))

    @property
    def master(self) -> list:
        return [m for *_, m in self._slots]

    def grads_to_master(self) -> None:
        """After backward: the fp32 master gradients are the low-precision ones cast up (accumulated into any
        master gradient already there); the low-precision gradients are dropped."""
        for _, _, low, master in self._slots:
            if low.grad is None:
                continue
            g = low.grad.float()
            master.grad = g if master.grad is None else master.grad.add_(g)
            low.grad = None

    def master_to_model(self) -> None:
        """After the optimizer step: the model computes with the updated weights, rounded to its dtype."""
        import torch

        with torch.no_grad():
            for _, _, low, master in self._slots:
                low.copy_(master)

    @contextmanager
    def master_in_model(self) -> Iterator[None]:
        """The fp32 weights in the model for the duration (saving a checkpoint or the final adapter)."""
        for module, attr, _, master in self._slots:
            setattr(module, attr, master)
        try:
            yield
        finally:
            for module, attr, low, _ in self._slots:
                setattr(module, attr, low)


def wanted(dtype, quantization: str) -> bool:
    """bf16 only: fp16 gradients would need loss scaling, fp32 has nothing to gain; QLoRA's kbit preparation manages
    its own dtypes."""
    import torch

    return dtype == torch.bfloat16 and quantization == "none"

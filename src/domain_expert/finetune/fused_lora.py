"""Fused LoRA projections for training: one matrix product where a layer has several adapted projections of the
same input.

A Llama-style layer projects the same hidden states three times for attention (q, k, v) and twice for the MLP (gate,
up). PEFT wraps each projection on its own, so a step of SmolLM2 runs, per layer, seven frozen products, fourteen
thin adapter products (rank 16) and fourteen element-wise passes (scale, add). On a CPU the thin products and the
element-wise passes cost far more than their arithmetic. Here each group of projections that reads the same input
runs as one frozen product over the concatenated weights, one adapter product over the concatenated A matrices and one
`addmm` that multiplies by the block-diagonal (scaled) B matrices and adds in the same pass; single projections
(o, down) get the `addmm` too. The arithmetic is the same LoRA (tests/test_fused_lora.py: loss and every adapter
gradient equal PEFT's own forward), the parameters stay PEFT's own (saving, merging and checkpoints do not change),
and the frozen weights are not copied: each projection's weight becomes a view into its group's concatenated weight.

How: each wrapped projection gets an instance `forward`. The first projection of a group called with a tensor
computes the whole group and keeps the other outputs until their projections ask for them with the same tensor
object; any other call (a different input, adapters disabled or merged, several adapters, dropout, extra arguments)
runs PEFT's own forward. `bench/train_levers.py` measures the speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from domain_expert.lora_math import fuse_linears, lora_as_one

# projections that read the same input in Llama, Mistral, Qwen2, Gemma and Phi-3-style decoder layers
GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("o_proj",),
                                       ("down_proj",))  # fmt: skip


class _Group:
    def __init__(self, members: list) -> None:

        self.members = members  # [(name, peft LoRA Linear)]
        bases = [m.base_layer for _, m in members]
        self.sizes = [b.out_features for b in bases]
        self.weight, self.bias = fuse_linears(bases)
        self._x = None  # the input of the pending outputs
        self._pending: dict[str, object] = {}

    def fusable(self) -> str | None:
        """The one adapter every member runs plainly (no dropout, no variant, not merged), or None."""
        import torch

        name = None
        for _, m in self.members:
            active = m.active_adapters
            if m.disable_adapters or m.merged or len(active) != 1 or active[0] not in m.lora_A:
                return None
            a = active[0]
            if a in m.lora_variant or not isinstance(m.lora_dropout[a], torch.nn.Identity):
                return None
            if name not in (None, a):
                return None
            name = a
        return name

    def compute(self, x, adapter: str) -> list:
        import torch
        import torch.nn.functional as F

        mods = [m for _, m in self.members]
        flat = x.reshape(-1, x.shape[-1])
        y = F.linear(flat, self.weight, self.bias)
        a, b = lora_as_one([m.lora_A[adapter].weight for m in mods],
                           [m.lora_B[adapter].weight * m.scaling[adapter] for m in mods])  # fmt: skip
        h = F.linear(flat.to(a.dtype), a)
        if h.dtype == y.dtype:
            y = torch.addmm(y, h, b.t())
        else:  # fp32 adapters on a bf16 base, as PEFT keeps them: add in fp32, return the base's dtype
            y = torch.addmm(y.to(h.dtype), h, b.t()).to(y.dtype)
        y = y.reshape(*x.shape[:-1], y.shape[-1])
        return list(torch.split(y, self.sizes, dim=-1)) if len(mods) > 1 else [y]

    def forward(self, name: str, original, x, *args, **kwargs):
        if args or kwargs:
            return original(x, *args, **kwargs)
        if x is not self._x or name not in self._pending:
            adapter = self.fusable()
            if adapter is None:
                return original(x)
            outs = self.compute(x, adapter)
            self._x, self._pending = x, {n: o for (n, _), o in zip(self.members, outs, strict=True)}
        out = self._pending.pop(name)
        if not self._pending:
            self._x = None  # nothing left to hand out: drop the reference to the input
        return out


def _fusable_module(module) -> bool:
    import torch
    from peft.tuners.lora.layer import Linear

    # quantized (bitsandbytes) and other base layers keep PEFT's forward
    return isinstance(module, Linear) and type(module.base_layer) is torch.nn.Linear


def _groups(model) -> list[_Group]:
    groups = []
    for parent in model.modules():
        for names in GROUPS:
            mods = [(n, getattr(parent, n, None)) for n in names]
            if not all(_fusable_module(m) for _, m in mods):
                continue
            ws = [m.base_layer.weight for _, m in mods]
            if len({(w.dtype, w.device, w.shape[1]) for w in ws}) != 1:
                continue
            groups.append(_Group(mods))
    return groups


def fuse(model) -> int:
    """From now on the model's LoRA projections run fused (see the module docstring); returns how many groups were
    fused (0 for models without Llama-style projection names, or with quantized base layers). `unfuse` undoes it."""
    groups = _groups(model)
    for g in groups:
        for name, m in g.members:
            original = m.forward  # PEFT's (bound) forward

            def forward(x, *args, _g=g, _n=name, _o=original, **kwargs):
                return _g.forward(_n, _o, x, *args, **kwargs)

            forward.fused = True  # what `unfuse` removes (and nothing else that may wrap a forward)
            m.forward = forward
    return len(groups)


def unfuse(model) -> None:
    """PEFT's own forward again (the base weights stay views into the fused ones: the same values)."""
    for m in model.modules():
        if getattr(vars(m).get("forward"), "fused", False):
            del m.forward


@contextmanager
def fused_projections(model) -> Iterator[int]:
    """`fuse` for the duration of the block."""
    try:
        yield fuse(model)
    finally:
        unfuse(model)

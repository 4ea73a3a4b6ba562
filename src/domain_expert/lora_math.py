"""LoRA arithmetic that training and serving share: several projections of one input as one product, and their
low-rank factors as one pair. Training fuses adapted projections with it (finetune's fused LoRA); the serving engine's
lean decoder fuses frozen and merged weights with it."""

from __future__ import annotations


def fuse_linears(linears) -> tuple:
    """(weight, bias or None) of one product computing several Linear layers of the same input, their outputs
    concatenated. Each layer's weight becomes a view into the fused weight: no second copy, and an in-place change to
    either (merging an adapter) is seen by both. A missing bias among biased layers counts as zeros."""
    import torch

    if len(linears) == 1:
        m = linears[0]
        return m.weight.detach(), (m.bias.detach() if m.bias is not None else None)
    with torch.no_grad():
        fused = torch.cat([m.weight for m in linears])
    offset = 0
    for m in linears:
        m.weight = torch.nn.Parameter(fused[offset : offset + m.out_features], requires_grad=False)
        offset += m.out_features
    bias = None
    if any(m.bias is not None for m in linears):
        bias = torch.cat([m.bias.detach() if m.bias is not None else fused.new_zeros(m.out_features)
                          for m in linears])  # fmt: skip
    return fused, bias


def lora_as_one(a: list, b: list) -> tuple:
    """LoRA factors of several projections of one input as one pair: the A matrices stacked [sum r, in] and the
    (already scaled) B matrices block-diagonal [sum out, sum r], so that x A^T B^T is every delta, concatenated."""
    import torch

    if len(a) == 1:
        return a[0], b[0]
    return torch.cat(a), torch.block_diag(*b)

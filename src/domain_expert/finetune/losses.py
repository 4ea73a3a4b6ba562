"""Training's loss over packed rows (batching.Packed): several examples per row, each attending only to itself and
one copy of the shared prefix at the row's start, through a 4D attention mask and per-example position ids.
Validation, scoring and `train.packing: false` use likelihood.causal_lm_loss (padded rows, selective head)."""

from __future__ import annotations

from domain_expert.likelihood import supports_selective_head


def packed_loss(model, pk, *, reduction: str = "sum"):
    """Next-token cross-entropy of a packed batch (batching.Packed): (sum of token losses, token count) with
    reduction="sum". The examples of a row do not see each other, so the loss and gradients are those of the same
    examples run one per row."""
    import torch
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype = next(p.dtype for p in base.parameters() if p.is_floating_point())
    # an additive mask for eager attention (sdpa takes it too): 0 where allowed, the dtype's minimum elsewhere
    mask = torch.zeros(pk.allowed.shape, dtype=dtype, device=pk.ids.device)
    mask.masked_fill_(~pk.allowed, torch.finfo(dtype).min)
    if supports_selective_head(base):
        hidden = base.get_decoder()(input_ids=pk.ids, attention_mask=mask, position_ids=pk.positions).last_hidden_state
        logits = base.get_output_embeddings()(hidden.flatten(0, 1)[pk.source]).float()
    else:
        out = model(input_ids=pk.ids, attention_mask=mask, position_ids=pk.positions).logits
        logits = out.flatten(0, 1)[pk.source].float()
    if reduction == "sum":
        return F.cross_entropy(logits, pk.target, reduction="sum"), int(pk.target.numel())
    return F.cross_entropy(logits, pk.target)

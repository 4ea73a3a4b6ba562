"""Causal-LM loss that only runs the output head where there is a label.

The head of a small model is a large share of its FLOPs (SmolLM2: 49k vocab x 576 hidden = 28M of 135M params), and
in instruction data most positions are prompt: computing logits only at answer positions saves that work.
"""

from __future__ import annotations

from domain_expert.batching import IGNORE


def supports_selective_head(model) -> bool:
    """Models that post-process logits (soft-capping, scaling) need the full forward path to stay exact."""
    cfg = model.config
    return getattr(cfg, "final_logit_softcapping", None) is None and not hasattr(cfg, "logit_scale")


def labelled_logits(model, ids, mask, labels):
    """(fp32 logits at labelled positions [N, vocab], their targets [N], keep mask [B, T-1]) for next-token loss."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    target = labels[:, 1:]
    keep = target != IGNORE
    if supports_selective_head(base):
        hidden = base.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
    else:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][keep].float()
    return logits, target[keep], keep


def causal_lm_loss(model, ids, mask, labels, *, reduction: str = "mean"):
    """Next-token cross-entropy over labelled positions. `model` is a (PEFT-wrapped) causal LM.

    With reduction="sum" returns (sum of token losses, token count) for token-weighted averages.
    """
    import torch.nn.functional as F

    logits, target, keep = labelled_logits(model, ids, mask, labels)
    if reduction == "sum":
        return F.cross_entropy(logits, target, reduction="sum"), int(keep.sum())
    return F.cross_entropy(logits, target)


def sequence_nll(model, ids, mask, labels):
    """Per-sequence (sum of token NLL, labelled token count) for scoring: reference answers, multiple-choice options,
    text perplexity. Same selective head as training, so scoring never materialises full-vocabulary logits."""
    import torch
    import torch.nn.functional as F

    logits, target, keep = labelled_logits(model, ids, mask, labels)
    token_nll = F.cross_entropy(logits, target, reduction="none")
    rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(keep)[keep]
    sums = torch.zeros(ids.shape[0], device=ids.device).index_add_(0, rows, token_nll)
    return sums.tolist(), keep.sum(dim=1).tolist()

"""Causal-LM loss that only runs the output head where there is a label.

The head of a small model is a large share of its FLOPs (SmolLM2: 49k vocab x 576 hidden = 28M of 135M params), and
in instruction data most positions are prompt: computing logits only at answer positions saves that work.

Rows of a batch that start with the same tokens (a shared system prompt: 20 of SmolLM2's ~69 tokens per example in
the default run) share one pass over that prefix: it runs once as a single row, its key/value cache is repeated for
every row, and the rest of each row attends to it. Same loss and gradients (the prefix's gradient is the sum over the
rows), about 29% fewer tokens through the model in the default run; `bench/train_levers.py` measures it.

Training packs examples by default (`packed_loss`, batching.Packed): several per row, each attending only to itself
and one copy of the shared prefix at the row's start, through a 4D attention mask and per-example position ids;
validation, scoring and `train.packing: false` use the path above.
"""

from __future__ import annotations

from domain_expert.batching import IGNORE, MIN_SHARED_PREFIX


def supports_selective_head(model) -> bool:
    """Models that post-process logits (soft-capping, scaling) need the full forward path to stay exact."""
    cfg = model.config
    return getattr(cfg, "final_logit_softcapping", None) is None and not hasattr(cfg, "logit_scale")


def shared_prefix_len(ids, mask, labels) -> int:
    """Tokens at the start that every row has in common, unpadded, and with no label predicted from them (their
    hidden states are needed only as keys and values). 0 when sharing would not pay."""
    if ids.shape[0] < 2:
        return 0
    same = ((ids == ids[:1]) & (mask == 1)).all(dim=0)
    n = int(same.long().cumprod(dim=0).sum())
    unlabelled = (labels == IGNORE).all(dim=0)  # labels[:, t] is predicted from position t-1
    n = min(n, int(unlabelled.long().cumprod(dim=0).sum()) - 1, ids.shape[1] - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


def _checkpointing(model) -> bool:
    # activation checkpointing turns the cache off in training: sharing needs it
    return bool(getattr(model, "is_activation_checkpointing", False))


def labelled_logits(model, ids, mask, labels):
    """(fp32 logits at labelled positions [N, vocab], their targets [N], keep mask [B, T-1-P]) for next-token loss,
    where P is the shared prefix that ran once (0 when not shared)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not supports_selective_head(base):
        target = labels[:, 1:]
        keep = target != IGNORE
        return model(input_ids=ids, attention_mask=mask).logits[:, :-1][keep].float(), target[keep], keep
    decoder = base.get_decoder()
    p = 0 if _checkpointing(base) else shared_prefix_len(ids, mask, labels)
    if p:
        from domain_expert.models import cache_kwarg

        name = cache_kwarg(decoder)
        out = decoder(input_ids=ids[:1, :p], use_cache=True)
        cache = getattr(out, name)
        cache.batch_repeat_interleave(ids.shape[0])  # autograd sums the rows' gradients into the one prefix pass
        hidden = decoder(input_ids=ids[:, p:], attention_mask=mask, use_cache=True, **{name: cache}).last_hidden_state
    else:
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
    target = labels[:, p + 1 :]
    keep = target != IGNORE
    logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
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

"""Token log-likelihoods of labelled positions: the one computation that training's loss and evaluation's scoring
share, so the two can never score an answer differently.

The output head of a small model is a large share of its FLOPs (SmolLM2: 49k vocab x 576 hidden = 28M of 135M
params), and in instruction data most positions are prompt: logits are computed only at answer positions.

Rows of a batch that start with the same tokens (a shared system prompt: 20 of SmolLM2's ~69 tokens per example in
the default run) share one pass over that prefix: it runs once as a single row, its key/value cache is repeated for
every row, and the rest of each row attends to it. Same loss and gradients (the prefix's gradient is the sum over the
rows), about 29% fewer tokens through the model in the default run; `bench/train_levers.py` measures it.

Encoder-decoder models (T5): an Example's `ids[:start]` is the encoder input and `ids[start:]` the decoder's labels
(prompts.py); `collate(..., seq2seq=True)` pads the two apart, and the decoder's inputs are the labels shifted right
after the model's own decoder start token (`prepare_decoder_input_ids_from_labels`: pad for T5).
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100
MIN_SHARED_PREFIX = 8  # below this a shared prefix is not worth a special case (packed rows use the same bound)


@dataclass
class Example:
    ids: list[int]
    start: int  # first answer token: loss is taken on ids[start:] (0 for raw text)


def collate(examples: list[Example], pad_id: int, *, seq2seq: bool = False):
    """Right-padded input ids, attention mask and labels (IGNORE on prompt and padding). seq2seq: the encoder's
    input ids and mask, and the decoder's labels (IGNORE on padding)."""
    import torch

    if seq2seq:
        return _collate_seq2seq(examples, pad_id)

    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        labels[i, e.start : n] = ids[i, e.start : n]
    return ids, mask, labels


def _collate_seq2seq(examples: list[Example], pad_id: int):
    import torch

    enc_w = max(e.start for e in examples)
    dec_w = max(len(e.ids) - e.start for e in examples)
    ids = torch.full((len(examples), enc_w), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), enc_w), dtype=torch.long)
    labels = torch.full((len(examples), dec_w), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : e.start] = torch.tensor(e.ids[: e.start], dtype=torch.long)
        mask[i, : e.start] = 1
        labels[i, : len(e.ids) - e.start] = torch.tensor(e.ids[e.start :], dtype=torch.long)
    return ids, mask, labels


def is_seq2seq(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base.config, "is_encoder_decoder", False))


def supports_selective_head(model) -> bool:
    """Whether the head may run on the labelled positions alone: only where the logits are exactly head(hidden)
    (models.heads); models that post-process logits (soft-capping, scaling) or are not known take the full forward."""
    from domain_expert.models.heads import logits_are_head

    return logits_are_head(model)


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
    if getattr(base.config, "is_encoder_decoder", False):
        # labels are the decoder's own sequence: every position is predicted, no shift, no prefix to share
        dec_in = base.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in).logits
        keep = labels != IGNORE
        return logits[keep].float(), labels[keep], keep
    if not supports_selective_head(base):
        target = labels[:, 1:]
        keep = target != IGNORE
        return model(input_ids=ids, attention_mask=mask).logits[:, :-1][keep].float(), target[keep], keep
    decoder = base.get_decoder()
    p = 0 if _checkpointing(base) else shared_prefix_len(ids, mask, labels)
    if p:
        from domain_expert.models.compat import cache_kwarg

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
    """Next-token cross-entropy over labelled positions. `model` is a (PEFT-wrapped) causal or seq2seq LM (for
    seq2seq, `ids`/`mask` are the encoder's and `labels` the decoder's: collate(..., seq2seq=True)).

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


def choice_nll(model, contexts: list[list[int]], options: list[list[list[int]]], pad_id: int) -> list[list[tuple]]:
    """(sum NLL, tokens) of every option of every question, several questions per pass: the contexts run once as one
    left-padded batch, their cache is repeated per option, and only the options' tokens run on top of it.

    In fp32 the same numbers as scoring each (context, option) row in full (`sequence_nll`; a test, and 1e-4 on
    SmolLM2), at about half the work when options are short (names, genes): multiple-choice scoring is a large part of
    an evaluation on a CPU. In bf16 both ways round, differently: summed option NLLs differed by up to ~1.2 nats and
    the chosen option in 6 of 406 questions (bench/eval_choice_scoring.py). Causal
    models whose logits are head(hidden) only (`supports_selective_head`); callers fall back to `sequence_nll`."""
    import torch
    import torch.nn.functional as F

    from domain_expert.models.compat import cache_kwarg

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    device = next(model.parameters()).device
    n, width = len(contexts), max(len(c) for c in contexts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, c in enumerate(contexts):  # left padding: every context ends at the same column
        ids[i, width - len(c) :] = torch.tensor(c)
        mask[i, width - len(c) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
    name = cache_kwarg(decoder)
    out = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    k = max(len(o) for o in options)
    cache = getattr(out, name)
    cache.batch_repeat_interleave(k)
    rows = [opts[j] if j < len(opts) else opts[0] for opts in options for j in range(k)]  # short lists: padded
    o_width = max(len(r) for r in rows)
    o_ids = torch.full((n * k, o_width), pad_id, dtype=torch.long)
    o_mask = torch.zeros((n * k, o_width), dtype=torch.long)
    for r, o in enumerate(rows):
        o_ids[r, : len(o)] = torch.tensor(o)
        o_mask[r, : len(o)] = 1
    o_ids, o_mask = o_ids.to(device), o_mask.to(device)
    o_pos = pos[:, -1:].repeat_interleave(k, 0) + 1 + torch.arange(o_width, device=device)
    full_mask = torch.cat([mask.repeat_interleave(k, 0), o_mask], dim=1)
    hidden = decoder(input_ids=o_ids, attention_mask=full_mask, position_ids=o_pos, use_cache=True,
                     **{name: cache}).last_hidden_state  # fmt: skip
    # an option's first token is predicted by the context's last position, token j by the option's token j - 1
    first = out.last_hidden_state[:, -1:].repeat_interleave(k, 0)
    predictors = torch.cat([first, hidden[:, :-1]], dim=1)
    keep = o_mask.bool()
    token_nll = F.cross_entropy(head(predictors[keep]).float(), o_ids[keep], reduction="none")
    row_of = torch.arange(n * k, device=device).unsqueeze(1).expand_as(keep)[keep]
    sums = torch.zeros(n * k, device=device).index_add_(0, row_of, token_nll).tolist()
    counts = keep.sum(dim=1).tolist()
    return [[(sums[i * k + j], counts[i * k + j]) for j in range(len(options[i]))] for i in range(n)]

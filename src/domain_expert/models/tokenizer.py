"""The tokenizer of a model or run, with a pad token that is not EOS."""

from __future__ import annotations

from domain_expert.models.reference import hub_guard


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = hub_guard(lambda: AutoTokenizer.from_pretrained(path), path)
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        # pad must differ from EOS or the EOS label gets masked with padding and the model never learns to stop (a
        # common complaint about fine-tuned models that never stop). We mask by attention/labels, not by token id,
        # so reusing unk or adding a pad is safe.
        if tok.unk_token is not None and tok.unk_token_id != tok.eos_token_id:
            tok.pad_token = tok.unk_token
        else:
            tok.add_special_tokens({"pad_token": "<|pad|>"})
    return tok

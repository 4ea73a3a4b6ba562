"""Packed rows (several examples per row, none attending to another) must give the loss and gradients of the same
examples run one per row, and lay every example out exactly once within the row and pass budgets."""

from __future__ import annotations

import random

import pytest
import torch

from domain_expert.data.records import Record
from domain_expert.finetune.batching import (
    collate_packed,
    common_prefix_len,
    encode_records,
    pack_rows,
    packed_micro_batches,
)
from domain_expert.finetune.losses import packed_loss
from domain_expert.likelihood import Example, causal_lm_loss, collate
from domain_expert.models.tokenizer import load_tokenizer
from domain_expert.prompts import PromptFormat


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def _examples(tok, n=7, system="You are a careful assistant for medical terms."):
    fmt = PromptFormat("chat", system)
    rng = random.Random(0)
    prompts = [f"What is term {i}?" + " really" * rng.randrange(4) for i in range(n)]
    recs = [Record(str(i), "g", "s", "define", q, "An answer " * rng.randrange(1, 12)) for i, q in enumerate(prompts)]
    exs, _ = encode_records(recs, fmt, tok, 128)
    return exs


def _lora(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32, attn_implementation="eager")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # B starts at zero: perturb it so the adapter's gradients reach every LoRA weight
            torch.nn.init.normal_(p, std=0.2)
    return model


def _loss_and_grads(model, fn):
    model.zero_grad()
    s, n = fn()
    s.backward()
    return float(s.detach()), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("system", ["You are a careful assistant for medical terms.", None])
def test_packed_rows_give_the_loss_and_gradients_of_one_example_per_row(tiny_model_dir, tok, system):
    exs = _examples(tok, system=system)
    p = common_prefix_len(exs)
    assert (p > 0) == (system is not None)
    lengths = sorted(len(e.ids) - p for e in exs)
    rows = pack_rows(exs, row_tokens=p + lengths[-1] + lengths[0])  # the longest fits with the shortest, no more
    assert any(len(r) > 1 for r in rows) and len(rows) > 1
    model = _lora(tiny_model_dir)
    pk = collate_packed(exs, rows, tok.pad_token_id)
    s1, n1, g1 = _loss_and_grads(model, lambda: packed_loss(model, pk))
    ids, mask, labels = collate(exs, tok.pad_token_id)
    s0, n0, g0 = _loss_and_grads(model, lambda: causal_lm_loss(model, ids, mask, labels, reduction="sum"))
    assert n1 == n0 == sum(len(e.ids) - max(1, e.start) for e in exs)
    assert pk.tokens == int(mask.sum())
    assert s1 == pytest.approx(s0, rel=1e-5)
    assert g1.keys() == g0.keys() and len(g0) == 3 * 2 * 2  # 2 layers x 3 modules x (A, B)
    for k in g0:
        assert g0[k].abs().max() > 0, k
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6)


def test_a_packed_example_sees_only_itself_and_the_shared_prefix(tok):
    exs = _examples(tok)
    p = common_prefix_len(exs)
    rows = pack_rows(exs, row_tokens=120)
    pk = collate_packed(exs, rows, tok.pad_token_id)
    allowed = pk.allowed[:, 0]
    for r, row in enumerate(rows):
        assert (pk.ids[r, :p] == torch.tensor(exs[row[0]].ids[:p])).all()  # the prefix, once
        o = p
        for i in row:
            n = len(exs[i].ids) - p
            assert pk.ids[r, o : o + n].tolist() == exs[i].ids[p:]
            assert pk.positions[r, o : o + n].tolist() == list(range(p, p + n))  # as if alone after the prefix
            block = allowed[r, o : o + n]
            seen = block.nonzero()[:, 1]
            assert ((seen < p) | ((seen >= o) & (seen < o + n))).all()  # no other example's tokens
            assert block[:, :p].all() and block[:, o : o + n].equal(torch.ones(n, n, dtype=torch.bool).tril())
            o += n
        assert allowed[r, o:].equal(torch.eye(allowed.shape[-1], dtype=torch.bool)[o:])  # padding: itself only


def test_rows_and_passes_hold_every_example_once_within_budget():
    rng = random.Random(1)
    prefix = list(range(100, 110))
    for trial in range(30):
        exs = [Example(prefix + [rng.randrange(1000) for _ in range(rng.randrange(1, 80))], 10) for _ in range(40)]
        row_tokens = rng.choice([32, 64, 128, 200])
        max_tokens = rng.choice([None, 128, 400, 1000])
        p = common_prefix_len(exs)
        assert p == 10
        passes = packed_micro_batches(exs, row_tokens, max_tokens)
        flat = sorted(i for mb in passes for row in mb for i in row)
        assert flat == list(range(len(exs))), trial
        for mb in passes:
            widths = [p + sum(len(exs[i].ids) - p for i in row) for row in mb]
            for w, row in zip(widths, mb, strict=True):
                assert w <= row_tokens or len(row) == 1
            if max_tokens and len(mb) > 1:
                assert max(widths) * len(mb) <= max_tokens


def test_common_prefix_is_never_trained_on():
    a = Example(list(range(20)) + [50, 51], 12)
    b = Example(list(range(20)) + [60], 15)
    assert common_prefix_len([a, b]) == 12  # the shared tokens stop where an answer starts
    assert common_prefix_len([a]) == 0
    assert common_prefix_len([a, Example([99] + list(range(1, 20)), 15)]) == 0
    assert common_prefix_len([Example(list(range(5)), 4), Example(list(range(6)), 4)]) == 0  # below the minimum


def test_packed_rows_under_activation_checkpointing_match(tiny_model_dir, tok):
    """train.gradient_checkpointing recomputes each layer in the backward pass: the 4D mask and position ids must
    reach the recomputation too."""
    exs = _examples(tok)
    p = common_prefix_len(exs)
    lengths = sorted(len(e.ids) - p for e in exs)
    pk = collate_packed(exs, pack_rows(exs, p + lengths[-1] + lengths[0]), tok.pad_token_id)
    plain = _lora(tiny_model_dir)
    s0, _, g0 = _loss_and_grads(plain, lambda: packed_loss(plain, pk))
    ckpt = _lora(tiny_model_dir)
    ckpt.gradient_checkpointing_enable()  # as finetune's _add_lora does
    ckpt.enable_input_require_grads()
    ckpt.train()
    assert ckpt.get_base_model().is_activation_checkpointing
    s1, _, g1 = _loss_and_grads(ckpt, lambda: packed_loss(ckpt, pk))
    assert s1 == pytest.approx(s0, rel=1e-5)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6)

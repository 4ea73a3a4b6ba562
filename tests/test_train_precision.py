"""Training levers that must not change the numbers: shared-prefix passes and bf16 adapters with fp32 master weights."""

from __future__ import annotations

import pytest
import torch

from domain_expert import likelihood
from domain_expert.data.records import Record
from domain_expert.finetune.adapter_precision import MasterWeights
from domain_expert.finetune.batching import encode_records
from domain_expert.likelihood import IGNORE, causal_lm_loss, collate, sequence_nll, shared_prefix_len
from domain_expert.models.tokenizer import load_tokenizer
from domain_expert.prompts import PromptFormat


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def _lora(tiny_model_dir, dtype=torch.float32, autocast=True):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=dtype)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg, autocast_adapter_dtype=autocast)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # B starts at zero: perturb it so the adapter's gradients reach every LoRA weight
            torch.nn.init.normal_(p, std=0.2)
    return model


def _batch(tok, n=4, system="You are a careful assistant for medical terms."):
    fmt = PromptFormat("chat", system)
    recs = [Record(str(i), "g", "s", "define", f"What is term {i}?", "An answer " * (i + 1)) for i in range(n)]
    exs, _ = encode_records(recs, fmt, tok, 128)
    return collate(exs, tok.pad_token_id)


def test_shared_prefix_len_is_the_common_unlabelled_unpadded_start(tok):
    ids, mask, labels = _batch(tok)
    p = shared_prefix_len(ids, mask, labels)
    assert p >= likelihood.MIN_SHARED_PREFIX
    assert (ids[:, :p] == ids[:1, :p]).all() and (labels[:, : p + 1] == IGNORE).all()
    assert not (ids[:, p] == ids[0, p]).all() or (labels[:, p + 1] != IGNORE).any()  # the longest such prefix
    assert shared_prefix_len(ids[:1], mask[:1], labels[:1]) == 0  # one row: nothing to share
    other = ids.clone()
    other[1, 0] += 1
    assert shared_prefix_len(other, mask, labels) == 0  # rows differ from the first token
    lab = labels.clone()
    lab[:, 3] = ids[:, 3]  # a label inside the prefix: its position's hidden state is needed per row
    assert shared_prefix_len(ids, mask, lab) == 0  # 3 - 1 = 2 tokens, below the minimum


def test_shared_prefix_gives_the_same_loss_and_gradients(tiny_model_dir, tok, monkeypatch):
    ids, mask, labels = _batch(tok)
    assert shared_prefix_len(ids, mask, labels) > 0

    def run(share: bool):
        model = _lora(tiny_model_dir)
        if not share:
            monkeypatch.setattr(likelihood, "MIN_SHARED_PREFIX", 10**6)
        s, n = causal_lm_loss(model, ids, mask, labels, reduction="sum")
        s.backward()
        monkeypatch.undo()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
        return float(s.detach()), n, grads, model

    s1, n1, g1, model = run(True)
    s0, n0, g0, _ = run(False)
    assert n1 == n0 == int((labels[:, 1:] != IGNORE).sum())
    assert s1 == pytest.approx(s0, rel=1e-5)
    assert len(g1) == 12 and g1.keys() == g0.keys()
    for k in g0:
        assert g0[k].abs().max() > 0, k
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6)

    with torch.no_grad():
        shared = sequence_nll(model, ids, mask, labels)
        monkeypatch.setattr(likelihood, "MIN_SHARED_PREFIX", 10**6)
        plain = sequence_nll(model, ids, mask, labels)
    assert shared[1] == plain[1]
    assert shared[0] == pytest.approx(plain[0], rel=1e-5)


def test_master_weights_keep_updates_bf16_would_round_away(tiny_model_dir, tok):
    model = _lora(tiny_model_dir, dtype=torch.bfloat16)  # PEFT's default: fp32 adapters on a bf16 base
    master = [p for p in model.parameters() if p.requires_grad]
    assert {p.dtype for p in master} == {torch.float32}
    opt = torch.optim.SGD(master, lr=1.0)
    mw = MasterWeights(model, torch.bfloat16)
    assert mw.master == master
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}

    ids, mask, labels = _batch(tok, n=2)
    s, _ = causal_lm_loss(model, ids, mask, labels, reduction="sum")
    s.backward()
    lows = [p for p in model.parameters() if p.requires_grad]
    expected = [p.grad.float() for p in lows]
    mw.grads_to_master()
    assert all(p.grad is None for p in lows)
    for m, g in zip(master, expected, strict=True):
        torch.testing.assert_close(m.grad, g)

    # a step far below bf16's resolution near 1.0 (2**-8): the fp32 master keeps it, a bf16 weight would not
    with torch.no_grad():
        for m in master:
            m.fill_(1.0)
            m.grad = torch.full_like(m, 1e-4)
    for _ in range(10):
        opt.step()
    assert all(torch.allclose(m, torch.full_like(m, 1 - 1e-3)) for m in master)
    bf16 = torch.ones(3, dtype=torch.bfloat16)
    for _ in range(10):
        bf16 -= 1e-4
    assert (bf16 == 1).all()
    mw.master_to_model()
    assert all(torch.equal(p, m.to(torch.bfloat16)) for p, m in zip(lows, master, strict=True))

    with mw.master_in_model():
        state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        assert {v.dtype for v in state.values()} == {torch.float32}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}

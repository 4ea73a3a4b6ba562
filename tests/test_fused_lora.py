"""Fused LoRA projections (finetune/fused_lora.py) must compute PEFT's own LoRA: the same loss and adapter gradients,
the same saved and merged adapter, and PEFT's forward wherever fusing does not apply."""

from __future__ import annotations

import pytest
import torch

from domain_expert.finetune import fused_lora

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _base(bias=False, dtype=torch.float32, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, attention_bias=bias, mlp_bias=bias, initializer_range=0.2)  # fmt: skip
    base = LlamaForCausalLM(cfg).to(dtype)
    base.config._attn_implementation = "eager"
    return base


def _model(targets=ALL, bias=False, dtype=torch.float32, seed=0):
    from peft import LoraConfig, get_peft_model

    base = _base(bias, dtype, seed)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=12, target_modules=targets, task_type="CAUSAL_LM"))
    for n, p in model.named_parameters():
        if "lora_B" in n:  # B starts at zero: perturb it so every LoRA weight gets a gradient
            torch.nn.init.normal_(p, std=0.3)
    return model


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (3, 11), generator=g)
    return ids, torch.ones_like(ids)


def _loss_grads(model):
    model.zero_grad()
    ids, mask = _batch()
    loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    return float(loss.detach()), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


def _assert_same(a, b, rtol=1e-5):
    (la, ga), (lb, gb) = a, b
    assert la == pytest.approx(lb, rel=rtol)
    assert ga.keys() == gb.keys()
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=rtol, atol=rtol * float(ga[k].abs().max()), msg=k)


@pytest.mark.parametrize("bias", [False, True])
def test_fused_equals_peft_loss_and_every_gradient(bias):
    model = _model(bias=bias)
    plain = _loss_grads(model)
    with fused_lora.fused_projections(model) as n:
        assert n == 2 * 4  # per layer: q/k/v, gate/up, o, down
        fused = _loss_grads(model)
    _assert_same(plain, fused)
    assert all("forward" not in vars(m) for m in model.modules())  # PEFT's forward is back
    _assert_same(plain, _loss_grads(model))


def test_fused_matches_under_activation_checkpointing():
    model = _model()
    plain = _loss_grads(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    with fused_lora.fused_projections(model):
        fused = _loss_grads(model)
    _assert_same(plain, fused)


def test_groups_need_every_member_adapted():
    # q and v adapted, k not: the attention group stays PEFT's; o/gate/up/down are not adapted at all
    model = _model(targets=["q_proj", "v_proj", "down_proj"])
    plain = _loss_grads(model)
    with fused_lora.fused_projections(model) as n:
        assert n == 2  # down_proj alone, in each layer
        _assert_same(plain, _loss_grads(model))


def test_disabled_adapter_runs_the_base():
    model = _model()
    ids, mask = _batch()
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad(), fused_lora.fused_projections(model):
        with model.disable_adapter():
            off = model(input_ids=ids, attention_mask=mask).logits
        on = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(off, base)
    assert (on - base).abs().max() > 1e-3  # and the adapter is back on afterwards


def test_trained_while_fused_then_saved_and_merged(tmp_path):
    """A step taken through the fused path changes PEFT's own parameters: the saved adapter reloads to the same
    logits, and merging into the (view-shared) base weights gives them too."""
    from peft import PeftModel

    model = _model()
    ids, mask = _batch()
    fused_lora.fuse(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    opt.step()
    with torch.no_grad():
        trained = model(input_ids=ids, attention_mask=mask).logits
    fused_lora.unfuse(model)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, trained, rtol=1e-5, atol=1e-5)
        reloaded = PeftModel.from_pretrained(_base(), tmp_path)
        torch.testing.assert_close(reloaded(input_ids=ids, attention_mask=mask).logits, trained, rtol=1e-5,
                                   atol=1e-5)  # fmt: skip
        merged = model.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=ids, attention_mask=mask).logits, trained, rtol=1e-4, atol=1e-4)


def test_bf16_adapters_as_close_to_fp32_as_peft():
    """bf16 sums in another order: no element-wise equality, but the fused gradients must be as close to an fp32
    reference (same bf16-rounded base) as PEFT's own bf16 gradients are."""
    from domain_expert.finetune.adapter_precision import MasterWeights

    ref_model = _model()
    with torch.no_grad():
        for p in ref_model.parameters():
            if not p.requires_grad:
                p.copy_(p.to(torch.bfloat16).float())
    ref_loss, ref = _loss_grads(ref_model)
    model = _model(dtype=torch.bfloat16)
    MasterWeights(model, torch.bfloat16)  # bf16 adapters, as finetune runs them on a bf16 base
    plain_loss, plain = _loss_grads(model)
    with fused_lora.fused_projections(model):
        fused_loss, fused = _loss_grads(model)

    def err(g):
        diff = sum(float((g[k].float() - ref[k]).norm() ** 2) for k in ref) ** 0.5
        return diff / sum(float(v.norm() ** 2) for v in ref.values()) ** 0.5

    assert 0 < err(plain) < 0.1
    print(f"bf16 gradient error vs fp32: PEFT {err(plain):.4f}, fused {err(fused):.4f}")
    assert err(fused) < 2 * err(plain)
    assert abs(fused_loss - ref_loss) < 2 * abs(plain_loss - ref_loss) + 1e-2


def test_frozen_weights_are_not_copied():
    model = _model()
    before = sum(p.numel() for p in model.parameters())
    with fused_lora.fused_projections(model):
        attn = model.get_base_model().model.layers[0].self_attn
        q, k = attn.q_proj.base_layer.weight, attn.k_proj.base_layer.weight
        assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()  # views of one fused weight
        assert sum(p.numel() for p in model.parameters()) == before


def test_a_projection_called_on_another_input_is_computed_for_it():
    """The group's pending outputs belong to one input tensor: k_proj on a different tensor must not get them."""
    model = _model()
    attn = model.get_base_model().model.layers[0].self_attn
    x1, x2 = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    with torch.no_grad():
        want_k, want_q = attn.k_proj(x2), attn.q_proj(x2)
        with fused_lora.fused_projections(model):
            attn.q_proj(x1)  # leaves k and v of x1 pending
            got_k, got_q = attn.k_proj(x2), attn.q_proj(x2)
    torch.testing.assert_close(got_k, want_k)
    torch.testing.assert_close(got_q, want_q)

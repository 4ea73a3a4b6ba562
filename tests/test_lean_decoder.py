"""The serving engine's lean decoder (serve/decoding/lean_decoder.py) must compute what the transformers forward
computes: left-padded prefills, prefix-cached prefills and decoding steps, with and without the base lane's LoRA
delta; models it cannot run exactly are refused with the reason. (tests/test_serve_batching.py runs it inside the
engine.)"""

from __future__ import annotations

import pytest
import torch

from domain_expert.serve.decoding.lean_decoder import LeanDecoder, unsupported


def _model(bias=False, seed=0, rope=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                      num_key_value_heads=2, attention_bias=bias, initializer_range=0.2, max_position_embeddings=256,
                      rope_parameters=rope or {"rope_type": "default", "rope_theta": 1000.0})  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    model.config._attn_implementation = "sdpa"
    return model


def _hf(model, ids, mask, pos, cache):
    return model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                               past_key_values=cache).last_hidden_state  # fmt: skip


def _left_padded(rows=3, width=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 101, (rows, width), generator=g)
    mask = torch.ones(rows, width, dtype=torch.long)
    for r in range(rows):
        mask[r, : 3 * r] = 0  # rows of 9, 6 and 3 real tokens
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def _run(fn, steps=4):
    """Prefill the left-padded rows, then greedy decoding steps; hidden states at real positions and per step."""
    from transformers import DynamicCache

    ids, mask, pos = _left_padded()
    cache = DynamicCache()
    out = [fn(ids, mask, pos, cache)[mask.bool()]]
    last, pos = ids[:, -1:], pos[:, -1:]
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones(len(ids), 1, dtype=torch.long)], dim=1)
        pos = pos + 1
        h = fn((last * 7 + 3) % 101, mask, pos, cache)
        out.append(h[:, -1])
        last = h[:, -1, :1].abs().mul(1000).long() % 101
    return out, (cache, mask)


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 1000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8}  # fmt: skip


@pytest.mark.parametrize(
    "bias,attention,rope",
    [
        (False, "written", None),
        (True, "written", None),
        (False, "fused", None),
        (False, "too long to write out", None),
        (False, "written", LLAMA3_ROPE),
    ],
)
def test_prefill_and_decoding_equal_transformers(bias, attention, rope, monkeypatch):
    """Attention written out and through the fused kernel (the CPU probe's two choices; GPUs and long prompts always
    take the fused kernel) alike; Llama 3's rotary scaling (frequencies fixed at load) too."""
    from domain_expert.serve.decoding import lean_decoder

    if attention == "too long to write out":  # written out asked for, but the scores exceed the limit
        monkeypatch.setattr(lean_decoder, "WRITTEN_OUT_MAX_SCORES", 0)
        attention = "written"
    model = _model(bias=bias, rope=rope)
    with torch.no_grad():
        want, want_cache = _run(lambda *a: _hf(model, *a))
        lean = LeanDecoder(model, attention=attention)
        got, (got_cache, mask) = _run(lambda ids, m, p, c: lean(ids, m, p, c))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    real = mask.bool()  # padding positions hold whatever a query that may see nothing computes: masked, never read
    for gl, wl in zip(got_cache.layers, want_cache[0].layers, strict=True):
        for a, b in ((gl.keys, wl.keys), (gl.values, wl.values)):
            torch.testing.assert_close(a.transpose(1, 2)[real], b.transpose(1, 2)[real], rtol=1e-4, atol=1e-4)


def test_prefix_cache_then_rest_equals_whole_prompt():
    """The engine prefills [shared prefix][padding][rest]: the prefix's cached keys/values, expanded to the rows."""
    from transformers import DynamicCache

    model = _model()
    ids, mask, pos = _left_padded()
    prefix = torch.randint(0, 101, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        lean = LeanDecoder(model)
        pc = DynamicCache()
        lean(prefix, torch.ones_like(prefix), torch.arange(5)[None], pc)
        kv = [(layer.keys.expand(3, -1, -1, -1), layer.values.expand(3, -1, -1, -1)) for layer in pc.layers]
        cache = DynamicCache(ddp_cache_data=kv)
        full_mask = torch.cat([torch.ones(3, 5, dtype=torch.long), mask], dim=1)
        got = lean(ids, full_mask, pos + 5, cache)[:, -1]
        whole = [torch.cat([prefix[0], ids[r][mask[r].bool()]]) for r in range(3)]
        want = torch.stack([_hf(model, w[None], torch.ones(1, len(w), dtype=torch.long), torch.arange(len(w))[None],
                                DynamicCache())[0, -1] for w in whole])  # fmt: skip
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_base_lane_delta_gives_the_base_model():
    """A merged LoRA model with `subtract=True` computes the base; without, the tuned model (the unmerged PEFT one)."""
    from peft import LoraConfig, get_peft_model

    from domain_expert.serve.decoding.lora_delta import LoraDelta

    model = _model()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj",
                                                  "gate_proj", "down_proj"], task_type="CAUSAL_LM"))  # fmt: skip
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.3)
    with torch.no_grad():
        tuned, _ = _run(lambda *a: _hf(peft_model, *a))
        with peft_model.disable_adapter():
            base, _ = _run(lambda *a: _hf(peft_model, *a))
        delta = LoraDelta(peft_model)
        merged = peft_model.merge_and_unload()
        delta.bind(merged)
        lean = LeanDecoder(merged, delta)
        got_base, _ = _run(lambda ids, m, p, c: lean(ids, m, p, c, subtract=True))
        got_tuned, _ = _run(lambda ids, m, p, c: lean(ids, m, p, c))
    assert (tuned[0] - base[0]).abs().max() > 1e-2  # the adapter matters
    for g, w in zip(got_base, base, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    for g, w in zip(got_tuned, tuned, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_transformers_forward_unchanged_after_fusing():
    model = _model()
    with torch.no_grad():
        before, _ = _run(lambda *a: _hf(model, *a))
        LeanDecoder(model)  # the projections' weights become views into the fused ones
        after, _ = _run(lambda *a: _hf(model, *a))
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.untyped_storage().data_ptr() == attn.v_proj.weight.untyped_storage().data_ptr()


def test_unsupported_models_are_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    assert unsupported(_model()) is None
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert "gpt2" in unsupported(gpt2)
    scaled = _model()
    scaled.config.rope_parameters = {**scaled.config.rope_parameters, "rope_type": "dynamic", "factor": 2.0}
    assert "dynamic" in unsupported(scaled)
    with pytest.raises(ValueError, match="does not support"):
        LeanDecoder(gpt2)


def _packing_refused(dtype) -> str | None:
    """Why oneDNN cannot pack `dtype` weights on this machine (None if it can): its bf16 packing needs AVX512 or
    AVX-NE-CONVERT (an AVX2-only CPU, such as a Zen 3 EPYC, refuses it; the decoder then runs plain products)."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN"
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), 16)
    except RuntimeError as e:
        return f"oneDNN refuses {dtype} packing on this CPU: {e}"
    return None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_prepacked_weights_give_the_plain_results(dtype):
    """On CPU the products run on oneDNN-packed weights: bit for bit what plain bf16 products give; in fp32 (which
    may take another kernel) within float rounding."""
    model = _model().to(dtype)
    lean = LeanDecoder(model)
    why = _packing_refused(dtype)
    if why:
        assert lean.packed == {}  # refused packing falls back to plain products
        pytest.skip(why)
    assert len(lean.packed) == 4 * 3 + 1  # every layer's four products and the head
    with torch.no_grad():
        packed, _ = _run(lambda ids, m, p, c: lean(ids, m, p, c))
        h = packed[-1].contiguous()
        logits = lean.logits(h)
        lean.packed = {}
        plain, _ = _run(lambda ids, m, p, c: lean(ids, m, p, c))
        plain_logits = lean.logits(h)
    for a, b in zip(packed, plain, strict=True):
        if dtype == torch.bfloat16:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    if dtype == torch.bfloat16:
        assert torch.equal(logits, plain_logits)
    else:
        torch.testing.assert_close(logits, plain_logits, rtol=1e-4, atol=1e-4)


def test_attention_probe_picks_the_faster_and_bad_choices_are_refused(monkeypatch):
    """On CPU, attention="auto" takes what `probe_attention` measured to be faster; an unknown choice is an error."""
    from domain_expert.serve.decoding import lean_decoder

    choice, timings = lean_decoder.probe_attention(4, 2, 8, torch.float32, rounds=1, calls=2)
    assert set(timings) == {"written", "fused"} and all(t > 0 for t in timings.values())
    assert choice == min(timings, key=timings.get)
    model = _model()
    for pick in ("written", "fused"):
        monkeypatch.setattr(lean_decoder, "probe_attention", lambda *a, pick=pick, **k: (pick, {"probed": 1.0}))
        lean = LeanDecoder(model)
        assert (lean.attention, lean.attention_probe_us) == (pick, {"probed": 1.0})
        assert lean._written_out(2, 1, 8, torch.device("cpu")) == (pick == "written")
    with pytest.raises(ValueError, match="attention must be one of"):
        LeanDecoder(model, attention="flash")

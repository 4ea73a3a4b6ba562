"""The serving engine is exact or says no: tiny random models of several architectures (non-zero biases, sliding
windows, soft-capping, q/k norms, scaled embeddings, fused projections), each served by the engine, give the model's
own log-probs (prompt scoring and greedy decoding, batched with left padding and the shared prefix) in fp32 and bf16;
models the lean decoder does not implement are routed to the model's own forward, and the path is named."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from conftest import ASSETS
from domain_expert.models.heads import PLAIN_HEAD_TYPES, logits_are_head, logits_postprocessing
from domain_expert.models.loader import LoadedModel
from domain_expert.prompts import PromptFormat
from domain_expert.serve.decoding.admission import PROBE_TOLERANCE, logprob_gap, probe, unsupported
from domain_expert.serve.decoding.lanes import BASE, TUNED, Sequence
from domain_expert.serve.engine import TransformersEngine

# per architecture: config fields, and whether the lean decoder serves it
ARCHS = {
    "llama": (dict(attention_bias=True), True),  # q/k/v and o biases
    "qwen2": (dict(), True),  # q/k/v biases
    "mistral": (dict(sliding_window=4), False),
    "gemma2": (
        dict(
            head_dim=8,
            sliding_window=4,
            query_pre_attn_scalar=8,
            final_logit_softcapping=3.0,
            attn_logit_softcapping=5.0,
        ),
        False,
    ),  # fmt: skip
    "gemma3_text": (
        dict(
            head_dim=8, sliding_window=4, query_pre_attn_scalar=8, layer_types=["sliding_attention", "full_attention"]
        ),
        False,
    ),  # fmt: skip
    "phi3": (dict(), False),  # fused qkv and gate/up projections
}
# served vs reference log-probs of the prompt and chosen tokens: fp32 within float rounding (measured <= 2e-6
# here); bf16 within the rounding of two equivalent bf16 computations (measured <= 0.032 here)
TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 0.1}


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ASSETS / "tiny-tokenizer"))


def tiny(arch: str, tok, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(
        arch, vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **ARCHS[arch][0],
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # biases and norm weights initialise to constants: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)
            elif "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def engine_for(model, tok, has_adapter=False, **kw) -> TransformersEngine:
    lm = LoadedModel(model, tok, PromptFormat("chat"), "tiny", has_adapter)
    return TransformersEngine(lm, "tiny", max_queue=16, max_batch=8, **kw)


def run(engine, seqs: list[dict]) -> list[dict]:
    """Submit every sequence at once (they batch, left-padded); each one's prompt log-probs and (token, logprob)."""
    out, done = [dict(tokens=[], prompt=None) for _ in seqs], [threading.Event() for _ in seqs]

    def emitter(i):
        def emit(kind, payload):
            if kind == "token":
                out[i]["tokens"].append((payload[0], payload[1][0]))
            elif kind == "prompt_logprobs":
                out[i]["prompt"] = payload
            elif kind in ("done", "error"):
                out[i]["end"] = (kind, payload)
                done[i].set()

        return emit

    for i, s in enumerate(seqs):
        engine.scheduler.submit(Sequence(emit=emitter(i), logprobs=0, **s))
    assert all(d.wait(60) for d in done)
    assert all(o["end"][0] == "done" for o in out), [o["end"] for o in out]
    return out


def prompts(engine, vocab: int) -> list[dict]:
    """Scoring requests (prompt log-probs) and greedy ones, two of them after the chat template's shared prefix."""
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    prefix = list(engine.scheduler.prefix) or ids(6)
    return [
        dict(prompt_ids=ids(5), max_new_tokens=1, prompt_logprobs=True),
        dict(prompt_ids=ids(13), max_new_tokens=1, prompt_logprobs=True),
        dict(prompt_ids=ids(9), max_new_tokens=8),
        dict(prompt_ids=prefix + ids(2), max_new_tokens=8),
        dict(prompt_ids=prefix + ids(7), max_new_tokens=6),
    ]


def check_against_model(reference, seqs, results, tol: float, base=False) -> float:
    """Served log-probs equal the model's own forward (`reference`, run on each sequence alone, unpadded) within
    `tol`; greedy tokens are its argmax wherever its top-2 margin exceeds 2 * tol. Returns the largest difference."""
    import contextlib

    worst = 0.0
    for s, r in zip(seqs, results, strict=True):
        prompt, generated = s["prompt_ids"], [t for t, _ in r["tokens"]]
        full = torch.tensor([prompt + generated])
        with torch.no_grad(), reference.disable_adapter() if base else contextlib.nullcontext():
            logp = torch.log_softmax(reference(input_ids=full).logits[0].float(), -1)
        got, want = [], []
        if s.get("prompt_logprobs"):
            assert r["prompt"][0] is None and len(r["prompt"]) == len(prompt)
            got += [lp for _, lp, _ in r["prompt"][1:]]
            want += [float(logp[t - 1, prompt[t]]) for t in range(1, len(prompt))]
        for j, (token, lp) in enumerate(r["tokens"]):
            row = logp[len(prompt) - 1 + j]
            got.append(lp)
            want.append(float(row[token]))
            top2 = row.topk(2).values
            if float(top2[0] - top2[1]) > 2 * tol:
                assert token == int(row.argmax()), f"greedy token {j} is not the model's argmax"
        diff = (torch.tensor(got) - torch.tensor(want)).abs().max()
        assert diff <= tol, f"served log-probs differ from the model's own by {float(diff):.3g} (> {tol})"
        worst = max(worst, float(diff))
    return worst


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_served_logprobs_and_greedy_tokens_are_the_models_own(arch, dtype, tok):
    model = tiny(arch, tok).to(dtype)
    reference = copy.deepcopy(model)
    engine = engine_for(model, tok)
    try:
        lean = ARCHS[arch][1]
        assert (engine.scheduler.lean is not None) == lean, engine.serving_path
        assert engine.serving_path.startswith("lean (" if lean else "transformers forward (")
        if "sliding_window" in ARCHS[arch][0]:  # a cached prefix would leave padding inside the window
            assert engine.scheduler.prefix == ()
        seqs = prompts(engine, len(tok))
        check_against_model(reference, seqs, run(engine, seqs), TOLERANCE[dtype])
    finally:
        engine.close()


def test_generic_path_names_why_and_how(tok):
    """Soft-capped logits go through the model's own forward; a plain head on a model the lean decoder does not
    implement (Phi-3's fused projections) keeps the faster decoder + head."""
    paths = {}
    for arch in ("gemma2", "phi3", "mistral"):
        engine = engine_for(tiny(arch, tok), tok)
        paths[arch] = engine.serving_path
        engine.close()
    assert "model's own forward" in paths["gemma2"] and "model_type 'gemma2'" in paths["gemma2"]
    assert "decoder + head" in paths["phi3"] and "model_type 'phi3'" in paths["phi3"]
    assert "sliding-window" in paths["mistral"]


def test_head_alone_would_be_wrong_for_softcapped_logits(tok):
    """The bug this guards against: serving Gemma 2 through decoder + head skips its soft-capping; the check above
    would catch it."""
    engine = engine_for(tiny("gemma2", tok), tok)
    reference = copy.deepcopy(engine.scheduler.model)
    try:
        assert not engine.scheduler.head_only
        engine.scheduler.head_only = True  # the old path
        seqs = prompts(engine, len(tok))[:2]
        with pytest.raises(AssertionError, match="differ from the model's own"):
            check_against_model(reference, seqs, run(engine, seqs), TOLERANCE[torch.float32])
    finally:
        engine.close()


def test_sliding_window_models_skip_the_shared_prefix(tok):
    """A cached prefix leaves padding inside rows ([prefix][padding][rest]), and transformers' sliding-window mask
    counts cache columns: the engine serves sliding-window models without it, which is what keeps them exact."""
    model = tiny("mistral", tok)
    reference = copy.deepcopy(model)
    engine = engine_for(model, tok)
    try:
        assert engine.scheduler.prefix == ()
        engine.scheduler.prefix = tuple(engine._shared_prefix())  # as before: two prefix rows of unequal length
        seqs = prompts(engine, len(tok))
        with pytest.raises(AssertionError, match="differ from the model's own|is not the model's argmax"):
            check_against_model(reference, seqs, run(engine, seqs), TOLERANCE[torch.float32])
    finally:
        engine.close()


def _with_adapter(model):
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    g = torch.Generator().manual_seed(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.3
    return peft.eval()


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_both_lanes_are_exact_with_an_adapter(arch, tok):
    """Tuned (merged weights) and base (delta subtracted) lanes give the unmerged model's log-probs, on the lean path
    (its probe covers both lanes) and on the model's own forward (the delta through forward hooks)."""
    peft = _with_adapter(tiny(arch, tok))
    reference = copy.deepcopy(peft)
    engine = engine_for(peft, tok, has_adapter=True)
    try:
        assert (engine.scheduler.lean is not None) == (arch == "llama")
        for lane in (TUNED, BASE):
            seqs = [dict(s, lane=lane) for s in prompts(engine, len(tok))]
            check_against_model(reference, seqs, run(engine, seqs), TOLERANCE[torch.float32], base=lane == BASE)
    finally:
        engine.close()


def test_lean_admission_checks_each_feature(tok):
    """Each feature the lean forward does not implement is refused by name, from the config or the module tree."""
    assert unsupported(tiny("llama", tok)) is None and unsupported(tiny("qwen2", tok)) is None
    m = tiny("llama", tok)
    m.config.mlp_bias = True
    assert "MLP biases" in unsupported(m)
    m = tiny("llama", tok)
    m.model.layers[1].self_attn.add_module("q_norm", torch.nn.Identity())  # a q/k norm (Qwen3, Gemma 3)
    assert "layer 1: attention modules" in unsupported(m)
    m = tiny("llama", tok)
    m.model.norm.variance_epsilon = 1e-3
    assert "final norm" in unsupported(m)
    m = tiny("llama", tok)
    m.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in unsupported(m)
    m = tiny("llama", tok)
    m.lm_head = torch.nn.Linear(32, len(tok), bias=True)
    assert "output head" in unsupported(m)
    m = tiny("qwen2", tok)
    m.config.layer_types = ["full_attention", "sliding_attention"]
    assert "sliding-window" in unsupported(m)
    assert "gemma3_text" in unsupported(tiny("gemma3_text", tok))


def test_probe_catches_what_the_checks_miss(tok):
    """A difference the structural checks cannot see (here: the lean path's head weights perturbed) fails the probe;
    the unchanged model passes it in fp32 far inside the tolerance."""
    from domain_expert.serve.decoding.lean_decoder import LeanDecoder

    model = tiny("llama", tok)
    lean = LeanDecoder(model)
    diff, tol = probe(model, lean)
    assert diff < tol / 10 and tol == PROBE_TOLERANCE["float32"]
    lean.head_weight = lean.head_weight * 1.05  # as an unnoticed logit scale would
    lean.packed = {}
    assert probe(model, lean)[0] > tol


def test_logprob_gap_compares_the_likeliest_tokens():
    want = torch.tensor([[5.0, 4.0, -20.0]])
    assert logprob_gap(want, want) == 0
    assert logprob_gap(torch.tensor([[5.0, 4.0, -10.0]]), want, top=2) < 1e-4  # the far tail is not compared
    assert logprob_gap(torch.tensor([[5.0, 3.0, -20.0]]), want, top=2) > 0.5


def test_one_function_decides_whether_logits_are_the_head():
    """models.heads is what serving and likelihood (training and scoring) both ask; every model type it lists ends its
    forward in `logits = self.lm_head(hidden_states)` in the installed transformers."""
    import importlib
    import inspect
    import re

    from transformers import GemmaConfig, GemmaForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from domain_expert.likelihood import supports_selective_head

    for model_type in PLAIN_HEAD_TYPES:
        module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        source = inspect.getsource(getattr(module, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]).forward)
        assigned = re.findall(r"^\s*logits = (.+)$", source, flags=re.M)
        assert assigned == ["self.lm_head(hidden_states)"], (model_type, assigned)
    gemma = GemmaForCausalLM(GemmaConfig(vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                         num_attention_heads=1, num_key_value_heads=1, head_dim=8))  # fmt: skip
    assert logits_are_head(gemma) and supports_selective_head(gemma)
    gemma.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in logits_postprocessing(gemma) and not supports_selective_head(gemma)
    gemma.config.model_type = "somebody_elses"
    gemma.config.final_logit_softcapping = None
    assert "not known" in logits_postprocessing(gemma)

"""Encoder-decoder (T5) models through every stage, on a tiny random T5 with the repo's tokenizer: the encoding
(prompt -> encoder + EOS, answer + EOS -> decoder labels), the loss, training, export, evaluation, generation, chat
and serving, and the refusals (causal-only options, an adapter of the other kind)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from domain_expert.cli import main
from domain_expert.likelihood import IGNORE, Example, causal_lm_loss, collate, sequence_nll
from domain_expert.prompts import PromptFormat


@pytest.fixture(scope="module")
def tok():
    from conftest import ASSETS
    from domain_expert.models.tokenizer import load_tokenizer

    return load_tokenizer(str(ASSETS / "tiny-tokenizer"))


def test_example_is_encoder_prompt_plus_eos_and_decoder_answer_plus_one_eos(tok):
    fmt = PromptFormat("plain", "Be brief.", kind="seq2seq")
    ids, start, cut = fmt.encode_example(tok, "What is anemia?", "Low red blood cells.", 256)
    rendered = tok(fmt.render_prompt(tok, "What is anemia?"), add_special_tokens=False)["input_ids"]
    assert ids[:start] == rendered + [tok.eos_token_id]  # no BOS: the encoder input ends as T5's tokenizer ends it
    answer = tok("Low red blood cells.", add_special_tokens=False)["input_ids"]
    assert ids[start:] == answer + [tok.eos_token_id] and not cut
    assert fmt.encode_prompt(tok, "What is anemia?") == ids[:start]
    # encoder input and labels are cut to max_len each
    ids, start, cut = fmt.encode_example(tok, "What is anemia? " * 20, "Low red blood cells.", 12)
    assert cut and start == 12 and ids[start:] == answer + [tok.eos_token_id]
    # raw text: an empty encoder input (EOS), the whole text as labels
    assert fmt.encode_text(tok, "Anemia means") == [tok.eos_token_id, *tok("Anemia means")["input_ids"]]


def test_collate_pads_encoder_and_labels_apart():
    exs = [Example([5, 6, 7, 2, 8, 9, 2], 4), Example([5, 2, 8, 2], 2)]
    ids, mask, labels = collate(exs, pad_id=0, seq2seq=True)
    assert ids.tolist() == [[5, 6, 7, 2], [5, 2, 0, 0]] and mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert labels.tolist() == [[8, 9, 2], [8, 2, IGNORE]]


def test_loss_is_transformers_own_and_nll_does_not_depend_on_padding(tiny_t5_dir, tok):
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir).eval()
    fmt = PromptFormat("plain", None, kind="seq2seq")
    pairs = [("What is anemia?", "Low red cells."), ("Hello", "A greeting used when meeting someone.")]
    exs = [Example(*fmt.encode_example(tok, p, c, 256)[:2]) for p, c in pairs]
    ids, mask, labels = collate(exs, tok.pad_token_id, seq2seq=True)
    with torch.no_grad():
        ours = causal_lm_loss(model, ids, mask, labels)
        theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss  # shifts after decoder_start (pad)
        assert model.config.decoder_start_token_id == tok.pad_token_id
        assert torch.allclose(ours, theirs, atol=1e-5)
        sums, counts = sequence_nll(model, ids, mask, labels)
        for e, s, n in zip(exs, sums, counts, strict=True):
            one = collate([e], tok.pad_token_id, seq2seq=True)
            alone, n1 = causal_lm_loss(model, *one, reduction="sum")
            assert n == n1 == len(e.ids) - e.start and s == pytest.approx(float(alone), rel=1e-5)


def test_t5_finetune_learns_and_saves_a_seq2seq_adapter(tiny_t5_dir, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    from conftest import tiny_t5_overrides
    from domain_expert.data.records import read_records
    from domain_expert.finetune.batching import encode_records
    from domain_expert.models.tokenizer import load_tokenizer

    run_dir = tmp_path / "learn"
    extra = {"train.max_steps": "30", "train.eval_every": "30", "data.sources.0.max_terms": "8",
             "data.test_fraction": "0", "data.val_fraction": "0", "lora.r": "8", "train.learning_rate": "1e-2",
             "train.warmup_steps": "2"}  # fmt: skip
    ov = tiny_t5_overrides(tiny_t5_dir, run_dir, **extra)
    assert main(["prepare", *ov]) == 0
    assert main(["finetune", *ov]) == 0
    assert "train.packing applies to causal models only" in capsys.readouterr().out
    ft = run_dir / "finetune"
    assert json.loads((ft / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"
    fmt = PromptFormat.load(ft)
    assert fmt.kind == "seq2seq"
    tok = load_tokenizer(str(ft))
    exs, _ = encode_records(read_records(run_dir / "data" / "train.jsonl"), fmt, tok, 256)
    batch = collate(exs, tok.pad_token_id, seq2seq=True)
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir), ft).eval()
    with torch.no_grad():
        tuned = float(causal_lm_loss(model, *batch))
        with model.disable_adapter():
            base = float(causal_lm_loss(model, *batch))
    assert tuned < base - 0.3, (base, tuned)


def test_t5_resume_continues_the_same_run(tiny_t5_dir, tiny_t5_tuned, tmp_path):
    """A 4-step run turned back into one interrupted after its step-2 checkpoint, resumed, ends with the adapter and
    validation loss of the uninterrupted run."""
    import shutil

    from safetensors.torch import load_file

    from conftest import tiny_t5_overrides

    out = tmp_path / "run" / "finetune"
    ov = tiny_t5_overrides(tiny_t5_dir, tmp_path / "run", **{"train.max_steps": "4", "train.save_every": "2"})
    argv = ["finetune", *ov, "--data", str(tiny_t5_tuned / "data"), "--out", str(out)]
    assert main(argv) == 0
    want = load_file(out / "adapter_model.safetensors")
    want_val = json.loads((out / "stage.json").read_text())["summary"]["val_loss_end"]
    (out / "stage.json").unlink()
    shutil.rmtree(out / "checkpoints" / "step-000004")
    assert main([*argv, "--resume"]) == 0
    summary = json.loads((out / "stage.json").read_text())["summary"]
    assert summary["resumed_from_step"] == 2 and summary["val_loss_end"] == pytest.approx(want_val, rel=1e-5)
    got = load_file(out / "adapter_model.safetensors")
    assert got.keys() == want.keys() and all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)


def test_causal_only_option_and_wrong_kind_adapter_are_refused(tiny_t5_dir, tiny_tuned, tmp_path, capsys):
    from transformers import AutoModelForSeq2SeqLM

    from conftest import tiny_t5_overrides
    from domain_expert.errors import UnsupportedModelError
    from domain_expert.models.loader import attach_adapter
    from domain_expert.models.tokenizer import load_tokenizer

    ov = tiny_t5_overrides(tiny_t5_dir, tmp_path / "r", **{"train.fuse_lora": "true"})
    assert main(["finetune", *ov, "--data", str(tiny_tuned / "data")]) == 2
    err = capsys.readouterr().err
    assert "train.fuse_lora" in err and "seq2seq" in err and len(err.strip().splitlines()) == 1
    # the causal run's adapter on a T5: refused naming the adapter's base and the model
    t5 = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir)
    with pytest.raises(UnsupportedModelError, match=r"causal adapter .*CAUSAL_LM.*T5ForConditionalGeneration"):
        attach_adapter(t5, tiny_tuned / "finetune", load_tokenizer(str(tiny_tuned / "finetune")))


@pytest.fixture(scope="module")
def t5_run(tiny_t5_dir, tmp_path_factory):
    from conftest import tiny_t5_overrides

    run_dir = tmp_path_factory.mktemp("t5-pipeline") / "run"
    assert main(["run", *tiny_t5_overrides(tiny_t5_dir, run_dir)]) == 0
    return run_dir


def test_run_end_to_end_and_export_loads_with_plain_auto_class(t5_run):
    from transformers import AutoModelForSeq2SeqLM

    from domain_expert.models.loader import load_for_inference

    stage = json.loads((t5_run / "export" / "stage.json").read_text())
    assert stage["kind"] == "seq2seq" and stage["fidelity"]["max_abs_logit_diff"] <= 1e-3
    assert stage["fidelity"]["argmax_agreement"] == 1.0
    assert "AutoModelForSeq2SeqLM" in (t5_run / "export" / "README.md").read_text()
    exported = AutoModelForSeq2SeqLM.from_pretrained(t5_run / "export").eval()
    lm = load_for_inference(t5_run, device="cpu", dtype="fp32")  # base + unmerged adapter
    ids = lm.fmt.encode_prompt(lm.tokenizer, "What is anemia?")
    x = torch.tensor([ids])
    dec = torch.tensor([[exported.config.decoder_start_token_id, *ids[:3]]])
    with torch.no_grad():
        a = exported(input_ids=x, decoder_input_ids=dec).logits
        b = lm.model(input_ids=x, decoder_input_ids=dec).logits
    assert torch.allclose(a, b, atol=1e-3)
    metrics = json.loads((t5_run / "eval" / "metrics.json").read_text())
    text = json.dumps(metrics)
    for key in ("rougeL", "mc", "general"):  # generation metrics, multiple choice, forgetting guard all scored
        assert key in text, key
    rows = [json.loads(x) for x in (t5_run / "eval" / "items.jsonl").read_text().splitlines()]
    kinds = {r.get("kind") for r in rows}
    assert {"generation", "mc", "general"} <= kinds
    assert all(r["nll"] > 0 and r["tokens"] > 0 for r in rows if r.get("kind") == "general")
    assert all(r["ref_nll"] > 0 for r in rows if r.get("kind") == "generation")
    assert (t5_run / "report" / "report.html").exists()


def test_generate_and_chat(t5_run, monkeypatch, capsys):
    assert main(["generate", str(t5_run), "What is anemia?", "--max-new-tokens", "5"]) == 0
    assert main(["generate", str(t5_run), "What is anemia?", "--max-new-tokens", "5", "--base"]) == 0
    assert main(["generate", str(t5_run / "export"), "What is anemia?", "--max-new-tokens", "5"]) == 0
    out = [x for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert len(out) >= 3
    monkeypatch.setattr("sys.stdin", io.StringIO("What is anemia?\n/reset\nand platelets?\n/exit\n"))
    assert main(["chat", str(t5_run), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("model> ") == 2 and "(conversation cleared)" in out


def test_served_answers_equal_generate_and_refuse_logprobs(t5_run):
    from fastapi.testclient import TestClient

    from domain_expert.generate import generate_detailed
    from domain_expert.models.loader import load_for_inference
    from domain_expert.serve import create_app, model_name
    from domain_expert.serve.seq2seq_engine import Seq2SeqEngine

    lm = load_for_inference(t5_run, device="cpu", dtype="fp32")
    prompts = ["What is leukemia?", "Hello", "What is anemia?"]
    refs = {b: generate_detailed(lm, prompts, base=b, max_new_tokens=6) for b in (False, True)}
    assert sum(bool(r["text"]) for b in refs for r in refs[b]) >= 3  # a random model: some answers are only specials
    name = model_name(t5_run)
    engine = Seq2SeqEngine(lm, name, max_queue=4)
    c = TestClient(create_app(engine))
    assert [m["id"] for m in c.get("/v1/models").json()["data"]] == [name, name + ":base"]

    def body(prompt: str, base: bool, **kw) -> dict:
        msgs = [{"role": "user", "content": prompt}]
        return {"model": name + (":base" if base else ""), "messages": msgs, "max_tokens": 6, "temperature": 0, **kw}

    for base in (False, True):
        for prompt, ref in zip(prompts, refs[base], strict=True):
            r = c.post("/v1/chat/completions", json=body(prompt, base))
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["choices"][0]["message"]["content"].strip() == ref["text"]  # generate strips
            assert out["usage"]["completion_tokens"] == ref["tokens"] + int(ref["stopped"])
    with c.stream("POST", "/v1/chat/completions", json=body(prompts[0], False, stream=True)) as r:
        assert r.status_code == 200
        events = [json.loads(x[6:]) for x in r.iter_lines() if x and x != "data: [DONE]"]
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert streamed.strip() == refs[False][0]["text"]
    # concurrent requests of both lanes and several prompts run as batches and still answer as alone
    import concurrent.futures

    asks = [(p, b) for p in prompts for b in (False, True)]
    with concurrent.futures.ThreadPoolExecutor(len(asks)) as pool:
        outs = list(pool.map(lambda a: c.post("/v1/chat/completions", json=body(*a)).json(), asks))
    want = [refs[b][prompts.index(p)]["text"] for p, b in asks]
    assert [o["choices"][0]["message"]["content"].strip() for o in outs] == want
    r = c.post("/v1/completions", json={"model": name, "prompt": "anemia", "max_tokens": 2, "logprobs": 1})
    assert r.status_code == 400 and "log-probs" in r.json()["error"]["message"]
    engine.close()


def test_serve_picks_the_seq2seq_engine_and_refuses_decoder_only_options(t5_run, monkeypatch, capsys):
    import uvicorn
    from fastapi.testclient import TestClient

    from domain_expert.serve import serve

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    serve(t5_run, device="cpu", dtype="fp32")
    engine = seen["app"].state.engine
    assert engine.serving_path.startswith("seq2seq") and engine.has_base
    # the patched uvicorn.run returned, so serve() closed the engine: requests are refused, never left waiting
    r = TestClient(seen["app"]).post("/v1/chat/completions", json={
        "model": t5_run.name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})  # fmt: skip
    assert r.status_code == 400 and "shutting down" in r.text
    assert main(["serve", str(t5_run), "--compile"]) == 2
    err = capsys.readouterr().err
    assert "--compile" in err and "seq2seq" in err

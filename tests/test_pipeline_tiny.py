"""The whole pipeline through the CLI, in-process, on a tiny random Llama: seconds, not minutes."""

from __future__ import annotations

import io
import json

import pytest
import torch

from domain_expert.cli import main


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    from conftest import tiny_overrides

    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    assert main(["run", *tiny_overrides(tiny_model_dir, run_dir)]) == 0
    return run_dir


def test_run_writes_every_stage(tiny_run):
    for f in (
        "data/train.jsonl",
        "data/val.jsonl",
        "data/test.jsonl",
        "data/manifest.json",
        "finetune/adapter_model.safetensors",
        "finetune/adapter_config.json",
        "finetune/tokenizer.json",
        "finetune/config.yaml",
        "finetune/prompt_format.json",
        "finetune/metrics.jsonl",
        "finetune/stage.json",
        "export/model.safetensors",
        "export/README.md",
        "export/stage.json",
        "export/generation_config.json",
        "eval/items.jsonl",
        "eval/metrics.json",
        "report/report.html",
        "report/report.md",
        "run.json",
    ):
        assert (tiny_run / f).exists(), f
    assert list((tiny_run / "finetune" / "tb").glob("events.out.tfevents.*"))


def test_metrics_log_train_and_validation_loss(tiny_run):
    rows = [json.loads(x) for x in (tiny_run / "finetune" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train_loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["tokens_per_s"] > 0 for r in steps)
    assert sum("val_loss" in r for r in rows) >= 3  # before training, every 2 steps
    ckpts = sorted(p.name for p in (tiny_run / "finetune" / "checkpoints").iterdir())
    assert ckpts == ["step-000002", "step-000004"]


def test_export_loads_in_plain_transformers_and_matches_adapter(tiny_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exp = tiny_run / "export"
    stage = json.loads((exp / "stage.json").read_text())
    assert stage["fidelity"]["max_abs_logit_diff"] <= stage["fidelity"]["tolerance"]
    tok = AutoTokenizer.from_pretrained(exp)
    merged = AutoModelForCausalLM.from_pretrained(exp)
    assert tok.chat_template and tok.eos_token_id == merged.generation_config.eos_token_id
    base = AutoModelForCausalLM.from_pretrained(stage["base_model"]["path"])
    tuned = PeftModel.from_pretrained(base, tiny_run / "finetune")
    ids = torch.tensor([tok("What is anemia?")["input_ids"]])
    with torch.no_grad():
        diff = (merged(ids).logits - tuned(ids).logits).abs().max()
        assert diff < 1e-3
        # and the adapter did change the model
        with tuned.disable_adapter():
            assert (merged(ids).logits - tuned(ids).logits).abs().max() > 1e-4


def test_model_card_states_limits_and_licences(tiny_run):
    card = (tiny_run / "export" / "README.md").read_text()
    assert "Not medical advice" in card and "not a clinician" in card
    assert "Human Phenotype Ontology" in card
    assert "LoRA r=16" in card
    # sources with licence and required attribution, and what the hygiene steps did, from the data manifest
    assert "Licence: Human Phenotype Ontology (https://hpo.jax.org/app/license)" in card
    assert "Attribution: This product uses the Human Phenotype Ontology" in card
    assert "- PHI / PII scrub: 0 identifier(s) replaced" in card
    assert "- Leakage check:" in card and "- Duplicates: 0 exact and 0 near-duplicate" in card
    assert "Public reference data only; no patient data." in card


def test_generate_tuned_and_base(tiny_run, capsys):
    assert main(["generate", str(tiny_run), "What is anemia?", "--max-new-tokens", "5"]) == 0
    assert main(["generate", str(tiny_run), "What is anemia?", "--max-new-tokens", "5", "--base"]) == 0
    assert main(["generate", str(tiny_run / "export"), "What is anemia?", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) >= 3


def test_chat_streams_and_exits(tiny_run, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is anemia?\n/reset\nand platelets?\n/exit\n"))
    assert main(["chat", str(tiny_run), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "not a clinician" in out.lower() or "Not a clinician" in out
    assert out.count("model> ") == 2 and "(conversation cleared)" in out


def test_stages_run_separately(tiny_model_dir, tmp_path):
    from conftest import tiny_overrides

    run_dir = tmp_path / "r"
    ov = tiny_overrides(tiny_model_dir, run_dir, **{"train.max_steps": "2"})
    assert main(["prepare", *ov]) == 0
    assert main(["finetune", *ov]) == 0
    assert main(["export", str(run_dir), "--dtype", "bf16"]) == 0
    stage = json.loads((run_dir / "export" / "stage.json").read_text())
    assert stage["dtype"] == "bf16"
    from safetensors import safe_open

    with safe_open(run_dir / "export" / "model.safetensors", "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())


def test_finetune_learns_a_tiny_dataset(tiny_model_dir, tmp_path):
    """Training must actually learn: after 40 steps on 8 terms, the loss on those examples is clearly lower than
    the base model's (measured on the same fixed batches, so batch noise cannot pass or fail it)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from conftest import tiny_overrides
    from domain_expert.data.records import read_records
    from domain_expert.finetune.batching import encode_records
    from domain_expert.likelihood import causal_lm_loss, collate
    from domain_expert.models.tokenizer import load_tokenizer
    from domain_expert.prompts import PromptFormat

    run_dir = tmp_path / "learn"
    ov = tiny_overrides(
        tiny_model_dir,
        run_dir,
        **{
            "train.max_steps": "40",
            "train.eval_every": "40",
            "data.sources.0.max_terms": "8",
            "data.test_fraction": "0",
            "data.val_fraction": "0",
            "lora.r": "8",
            "train.learning_rate": "1e-2",
            "train.warmup_steps": "2",
        },
    )
    assert main(["prepare", *ov]) == 0
    assert main(["finetune", *ov]) == 0
    ft = run_dir / "finetune"
    tok = load_tokenizer(str(ft))
    exs, _ = encode_records(read_records(run_dir / "data" / "train.jsonl"), PromptFormat.load(ft), tok, 256)
    ids, mask, labels = collate(exs, tok.pad_token_id)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), ft)
    with torch.no_grad():
        tuned = float(causal_lm_loss(model, ids, mask, labels))
        with model.disable_adapter():
            base = float(causal_lm_loss(model, ids, mask, labels))
    assert tuned < base - 0.3, (base, tuned)

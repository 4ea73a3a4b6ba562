"""The one model-loading module: references resolve to the same weights whatever form they take, the model kind is
decided from the config, unsupported architectures are refused by name, and adapter modes agree."""

from __future__ import annotations

import json

import pytest
import torch

from domain_expert.errors import RunFolderError, UnsupportedModelError
from domain_expert.models.kinds import CAUSAL, SEQ2SEQ, kind_of_config, model_kind, require_kind
from domain_expert.models.loader import adapter_merged, adapter_off, load_for_inference
from domain_expert.models.reference import is_tuned_run, resolve_run


def test_run_finetune_and_folder_references_resolve_alike(tiny_tuned, tiny_model_dir):
    run, ft = resolve_run(tiny_tuned), resolve_run(tiny_tuned / "finetune")
    assert run.adapter_dir == ft.adapter_dir == tiny_tuned / "finetune"
    assert run.weights.path == ft.weights.path == str(tiny_model_dir)
    assert is_tuned_run(tiny_tuned) and is_tuned_run(tiny_tuned / "finetune") and not is_tuned_run(tiny_model_dir)
    plain = resolve_run(tiny_model_dir)
    assert not plain.has_adapter and plain.weights.path == str(tiny_model_dir)
    with pytest.raises(RunFolderError, match="--base needs a run"):
        resolve_run(tiny_model_dir, base=True)


def test_missing_and_non_model_folders_are_project_errors(tmp_path):
    with pytest.raises(RunFolderError, match="not found"):
        resolve_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="not a run, finetune or model folder"):
        resolve_run(tmp_path / "empty")


def test_kind_is_decided_from_the_config(tiny_model_dir):
    from transformers import T5Config, ViTConfig

    assert model_kind(tiny_model_dir) == CAUSAL
    assert kind_of_config(T5Config(num_layers=1, d_model=8, num_heads=2, d_kv=4, d_ff=16)) == SEQ2SEQ
    with pytest.raises(UnsupportedModelError, match=r"ViTModel.*supported kind: causal .*seq2seq"):
        kind_of_config(ViTConfig(architectures=["ViTModel"]), where="some/folder")
    with pytest.raises(UnsupportedModelError, match="fine-tuning does not support seq2seq"):
        require_kind(SEQ2SEQ, (CAUSAL,), "fine-tuning", where="model=x")


def test_unknown_model_type_in_a_folder_is_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(UnsupportedModelError, match="does not know this model type"):
        model_kind(tmp_path)


def test_finetune_refuses_an_unsupported_architecture_before_loading(tmp_path, tiny_args, capsys):
    from transformers import ViTConfig

    from domain_expert.cli import main

    folder = tmp_path / "vit"
    ViTConfig(architectures=["ViTModel"], hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=16).save_pretrained(folder)  # fmt: skip
    assert main(["prepare", *tiny_args()]) == 0
    capsys.readouterr()
    assert main(["finetune", *tiny_args(model=str(folder))]) == 2
    err = capsys.readouterr().err
    assert "architecture ViTModel" in err and "supported kind" in err
    assert not (tmp_path / "run" / "finetune" / "adapter_model.safetensors").exists()


def test_adapter_modes_agree(tiny_tuned):
    """merged == unmerged (adapter on); off == unmerged with the adapter switched off; and they differ (the adapter
    moved the weights, so the comparison can fail)."""
    unmerged = load_for_inference(tiny_tuned, device="cpu", dtype="fp32")
    merged = load_for_inference(tiny_tuned, adapter="merged", device="cpu", dtype="fp32")
    off = load_for_inference(tiny_tuned, adapter="off", device="cpu", dtype="fp32")
    assert unmerged.has_adapter and not merged.has_adapter and not off.has_adapter
    assert not adapter_merged(unmerged.model)
    ids = torch.tensor([unmerged.fmt.encode_prompt(unmerged.tokenizer, "What is anemia?")])
    with torch.no_grad():
        tuned = unmerged.model(input_ids=ids).logits
        with adapter_off(unmerged, True):
            base = unmerged.model(input_ids=ids).logits
        torch.testing.assert_close(merged.model(input_ids=ids).logits, tuned, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(off.model(input_ids=ids).logits, base, atol=1e-5, rtol=1e-5)
    assert (tuned - base).abs().max() > 1e-3

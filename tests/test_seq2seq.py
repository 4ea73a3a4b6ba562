"""Encoder-decoder (T5) models through every stage, on a tiny random T5 with the repo's tokenizer: the encoding
(prompt -> encoder + EOS, answer + EOS -> decoder labels), the loss, training, export, evaluation, generation, chat
and serving, and the refusals (causal-only options, an adapter of the other kind)."""

from __future__ import annotations

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

"""Shared fixtures."""

from __future__ import annotations

import pytest

TINY_CORPUS = [
    "Hello leukemia is a cancer of the blood forming tissues .",
    "Anemia means a low count of red blood cells or hemoglobin .",
    "Thrombocytopenia is a low platelet count , and neutropenia a low neutrophil count .",
]


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A real HF fast tokenizer, small enough to build in milliseconds: one token per word (plus w0..w499)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    numbered = " ".join(f"w{i}" for i in range(500))
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"])
    tok.train_from_iterator([*TINY_CORPUS, numbered], trainer)
    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.save_pretrained(folder)
    # Reload from disk, as the pipeline does with a model's tokenizer.
    return AutoTokenizer.from_pretrained(str(folder))


# --- tiny Llama for fast pipeline tests ------------------------------------------------------------------------

from pathlib import Path  # noqa: E402

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-dim random Llama with the repo's 1,000-token ChatML tokenizer, saved as a plain HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(ASSETS / "tiny-tokenizer"))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.2,  # the default 0.02 caps a frozen 32-dim head at logits ~0.6: nothing could be learned
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_overrides(model_dir: Path, run_dir: Path, **extra: str) -> list[str]:
    """Overrides that shrink the default recipe to seconds on the tiny model."""
    base = {
        "model": str(model_dir),
        "output_dir": str(run_dir),
        "data.sources.0.max_terms": "40",
        "train.max_steps": "4",
        "train.batch_size": "4",
        "train.eval_every": "2",
        "train.save_every": "2",
        "train.max_minutes": "null",
        "train.dtype": "fp32",
        "train.learning_rate": "1e-3",
        "export.dtype": "fp32",
        "evaluate.max_items": "6",
        "evaluate.max_new_tokens": "8",
        "evaluate.general_chunks": "3",
        "evaluate.bootstrap_resamples": "200",
        "evaluate.show_examples": "2",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def tiny_args(tiny_model_dir, tmp_path):
    def make(**extra: str) -> list[str]:
        return tiny_overrides(tiny_model_dir, tmp_path / "run", **extra)

    return make


@pytest.fixture(scope="session")
def tiny_data(tiny_model_dir, tmp_path_factory) -> Path:
    """Prepared data (data/{train,val,test}.jsonl) of a tiny run. Shared read-only: finetune it with --data."""
    from domain_expert.cli import main

    run_dir = tmp_path_factory.mktemp("prepared") / "run"
    assert main(["prepare", *tiny_overrides(tiny_model_dir, run_dir)]) == 0
    return run_dir / "data"


@pytest.fixture(scope="session")
def tiny_tuned(tiny_model_dir, tmp_path_factory) -> Path:
    """A prepared and fine-tuned tiny run, not evaluated. Shared read-only: tests write their outputs elsewhere."""
    from domain_expert.cli import main

    run_dir = tmp_path_factory.mktemp("tuned") / "run"
    ov = tiny_overrides(tiny_model_dir, run_dir, **{"train.max_steps": "2"})
    assert main(["prepare", *ov]) == 0
    assert main(["finetune", *ov]) == 0
    return run_dir


# --- tiny T5 (encoder-decoder) for the seq2seq path --------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    """A 2+2-layer, 32-dim random T5 with the repo's tokenizer; the decoder starts from pad, as T5's does."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(str(ASSETS / "tiny-tokenizer"))
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        initializer_factor=1.5,  # at 1.0 a random 32-dim T5 answers pad forever; above 2 its fp32 merge drifts
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    model = T5ForConditionalGeneration(cfg)
    folder = tmp_path_factory.mktemp("tiny-t5")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_t5_overrides(model_dir: Path, run_dir: Path, **extra: str) -> list[str]:
    """tiny_overrides with LoRA on T5's attention and feed-forward projections."""
    return tiny_overrides(model_dir, run_dir, **{"lora.target_modules": "[q,k,v,o,wi,wo]", **extra})


@pytest.fixture(scope="session")
def tiny_t5_tuned(tiny_t5_dir, tmp_path_factory) -> Path:
    """A prepared and fine-tuned tiny T5 run, not evaluated. Shared read-only."""
    from domain_expert.cli import main

    run_dir = tmp_path_factory.mktemp("t5-tuned") / "run"
    ov = tiny_t5_overrides(tiny_t5_dir, run_dir, **{"train.max_steps": "2"})
    assert main(["prepare", *ov]) == 0
    assert main(["finetune", *ov]) == 0
    return run_dir

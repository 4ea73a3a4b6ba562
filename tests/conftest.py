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

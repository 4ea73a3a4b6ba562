"""Paired statistics for base-vs-tuned evaluation: every held-out item is scored under both models, so the
comparison is on per-item differences (tuned - base), which removes between-item variance.

- `paired_bootstrap_ci`: percentile bootstrap CI of the mean difference, resampling items.
- `paired_test_pvalue`: Wilcoxon signed-rank test for continuous per-item scores.
- `mcnemar`: exact McNemar test for per-item correct/incorrect outcomes.
- `compare_metric`: all of the above for one metric, with NaN pairs dropped and a verdict.

Pure numpy/scipy; no model code here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from domain_expert.errors import DomainExpertError

# Upper bound on the number of resampled indices held in memory at once (~8 bytes each): the bootstrap index
# matrix is drawn in row chunks of at most this many elements, so memory stays bounded for large n.
_BOOTSTRAP_CHUNK_ELEMENTS = 2_000_000

Verdict = Literal["better", "worse", "no detectable difference"]


def _same_length(a: Sequence[float], b: Sequence[float], *, where: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=float).reshape(-1)
    y = np.asarray(b, dtype=float).reshape(-1)
    if x.shape != y.shape:
        raise DomainExpertError(
            f"{what} differ in length ({x.size} vs {y.size})",
            where=where,
            fix="score the same items under both models, in the same order",
        )
    return x, y


def _paired_arrays(a: Sequence[float], b: Sequence[float], *, where: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _same_length(a, b, where=where, what="paired samples")
    if x.size == 0:
        raise DomainExpertError("no paired items to compare (n == 0)", where=where)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DomainExpertError(
            "paired samples contain NaN or infinite values",
            where=where,
            fix="drop incomplete pairs first (compare_metric does this and reports the count)",
        )
    return x, y


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of (b - a) over paired items and its percentile bootstrap CI.

    Each resample draws n item indices with replacement and takes the mean difference over them; the CI is the
    ((1 - confidence) / 2, (1 + confidence) / 2) percentiles of those means (computed as mean_diff + mean of
    the centred differences, which is the same quantity with less rounding). Identical differences c give
    exactly (c, c, c). Deterministic for a given seed; the chunking of the index matrix does not change the
    result.
    """
    x, y = _paired_arrays(a, b, where="paired_bootstrap_ci")
    if n_resamples < 1:
        raise DomainExpertError(f"n_resamples must be >= 1, got {n_resamples}", where="paired_bootstrap_ci")
    if not 0.0 < confidence < 1.0:
        raise DomainExpertError(f"confidence must be in (0, 1), got {confidence}", where="paired_bootstrap_ci")

    d = y - x
    if np.all(d == d[0]):  # no spread: every resample has the same mean; return it exactly, without rounding
        c = float(d[0])
        return c, c, c
    n = d.size
    mean_diff = float(d.mean())
    centred = d - mean_diff
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    boot = np.empty(n_resamples, dtype=float)
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        boot[start : start + rows] = centred[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [tail, 1.0 - tail])
    return mean_diff, mean_diff + float(lo), mean_diff + float(hi)


def paired_test_pvalue(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value for "no difference" between paired continuous scores (Wilcoxon signed-rank test).

    Why Wilcoxon rather than a paired t-test: per-item scores such as ROUGE-L or chrF are bounded in [0, 1],
    often piled up at 0 or 1 and skewed, so the differences are far from normal and a t-test's p-value is
    unreliable at the sample sizes we evaluate. The signed-rank test only assumes the differences are
    symmetric about their centre under the null, and is robust to outliers. Strictly it tests the location
    (pseudo-median) of the differences, not their mean; the bootstrap CI reports the mean.

    Zero differences are discarded (zero_method="wilcox"); if every difference is zero, there is no evidence
    of a difference and the p-value is 1.0. scipy picks the exact null distribution for small samples without
    ties and the normal approximation otherwise.
    """
    from scipy.stats import wilcoxon

    x, y = _paired_arrays(a, b, where="paired_test_pvalue")
    d = y - x
    if not np.any(d != 0):
        return 1.0
    res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    p = float(res.pvalue)
    return 1.0 if math.isnan(p) else min(1.0, p)


def _as_binary(v: np.ndarray, *, where: str) -> np.ndarray:
    if not np.isin(v, (0.0, 1.0)).all():
        raise DomainExpertError(
            "binary outcomes must be 0/1 or True/False",
            where=where,
            fix='use kind="continuous" for graded scores',
        )
    return v.astype(bool)


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
    """Exact (binomial) two-sided McNemar test on paired correct/incorrect outcomes.

    b01: items a got wrong and b got right; b10: items a got right and b got wrong. Under the null the
    discordant pairs split 50/50, so p = binomtest(b01, b01 + b10, 0.5). With no discordant pairs, p = 1.0.
    """
    from scipy.stats import binomtest

    x, y = _paired_arrays(a_correct, b_correct, where="mcnemar")
    x = _as_binary(x, where="mcnemar")
    y = _as_binary(y, where="mcnemar")
    b01 = int(np.count_nonzero(~x & y))
    b10 = int(np.count_nonzero(x & ~y))
    discordant = b01 + b10
    p = 1.0 if discordant == 0 else min(1.0, float(binomtest(b01, discordant, 0.5).pvalue))
    return {"b01": b01, "b10": b10, "pvalue": p}


def compare_metric(
    name: str,
    base: Sequence[float],
    tuned: Sequence[float],
    *,
    higher_is_better: bool = True,
    kind: Literal["continuous", "binary"] = "continuous",
    seed: int = 0,
    alpha: float = 0.05,
    n_resamples: int = 10000,
) -> dict:
    """Compare one metric between base and tuned over paired items.

    diff = mean(tuned - base). The CI is the (1 - alpha) paired bootstrap CI of diff; the p-value is from the
    Wilcoxon signed-rank test (kind="continuous") or the exact McNemar test (kind="binary", values 0/1).

    Verdict: "better" when the CI excludes 0 on the good side (diff > 0, or diff < 0 when lower is better, as
    for perplexity or NLL) AND p < alpha; "worse" likewise on the bad side; otherwise
    "no detectable difference". Requiring both guards against the two methods disagreeing near the edge.

    Items where either score is NaN (or None: the metric could not be computed for that item) are dropped
    pairwise; their count is reported as n_dropped.
    """
    where = f"compare_metric({name})"
    if kind not in ("continuous", "binary"):
        raise DomainExpertError(f'kind must be "continuous" or "binary", got {kind!r}', where=where)
    if not 0.0 < alpha < 1.0:
        raise DomainExpertError(f"alpha must be in (0, 1), got {alpha}", where=where)
    x, y, n_dropped = _scored_pairs(base, tuned, where=where)
    diff, ci_low, ci_high = paired_bootstrap_ci(x, y, n_resamples=n_resamples, confidence=1.0 - alpha, seed=seed)
    extra: dict = {}
    if kind == "binary":
        mc = mcnemar(x, y)
        pvalue, test = mc["pvalue"], "mcnemar"
        extra = {"b01": mc["b01"], "b10": mc["b10"]}
    else:
        pvalue, test = paired_test_pvalue(x, y), "wilcoxon"

    return {
        "name": name,
        "n": int(x.size),
        "n_dropped": n_dropped,
        "base_mean": float(x.mean()),
        "tuned_mean": float(y.mean()),
        "diff": diff,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "confidence": 1.0 - alpha,
        "pvalue": pvalue,
        "test": test,
        "higher_is_better": higher_is_better,
        "kind": kind,
        "verdict": _verdict(pvalue < alpha, ci_low, ci_high, higher_is_better),
        **extra,
    }


def _scored_pairs(base: Sequence[float], tuned: Sequence[float], *, where: str) -> tuple[np.ndarray, np.ndarray, int]:
    """The pairs where both scores exist (NaN or None = not computed for that item), and how many were dropped."""
    x, y = _same_length(base, tuned, where=where, what="base and tuned scores")
    keep = ~(np.isnan(x) | np.isnan(y))
    n_dropped = int(x.size - np.count_nonzero(keep))
    if not keep.any():
        raise DomainExpertError(
            f"no items with both scores available (n == 0; {n_dropped} pairs dropped as NaN)", where=where
        )
    return x[keep], y[keep], n_dropped


def _verdict(significant: bool, ci_low: float, ci_high: float, higher_is_better: bool) -> Verdict:
    improved = ci_low > 0 if higher_is_better else ci_high < 0
    degraded = ci_high < 0 if higher_is_better else ci_low > 0
    if significant and improved:
        return "better"
    if significant and degraded:
        return "worse"
    return "no detectable difference"

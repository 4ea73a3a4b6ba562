"""Paired statistics: checked against known distributions and hand-computed values, not just "runs"."""

from __future__ import annotations

import math

import numpy as np
import pytest

from domain_expert.errors import DomainExpertError
from domain_expert.evaluate import stats
from domain_expert.evaluate.stats import compare_metric, mcnemar, paired_bootstrap_ci, paired_test_pvalue

# --- bootstrap CI -----------------------------------------------------------------------------------------


def _coverage(confidence: float, *, sims: int = 400, n: int = 50, shift: float = 0.3) -> float:
    rng = np.random.default_rng(12345)
    hits = 0
    for i in range(sims):
        a = rng.normal(0.0, 1.0, n)
        b = a + shift + rng.normal(0.0, 1.0, n)
        _, lo, hi = paired_bootstrap_ci(a, b, n_resamples=2000, confidence=confidence, seed=i)
        hits += lo <= shift <= hi
    return hits / sims


def test_bootstrap_ci_covers_true_mean_about_95_percent():
    cov = _coverage(0.95)
    assert 0.91 <= cov <= 0.99, cov


def test_bootstrap_coverage_tracks_requested_confidence():
    # the coverage check above can fail: a 50% interval covers about half the time
    cov = _coverage(0.5)
    assert 0.42 <= cov <= 0.58, cov


def test_bootstrap_constant_shift_gives_degenerate_ci():
    a = np.linspace(0.0, 1.0, 37)
    mean, lo, hi = paired_bootstrap_ci(a, a + 0.5)
    assert mean == lo == hi == 0.5
    # identical differences whose mean would round: still exactly [c, c]
    mean, lo, hi = paired_bootstrap_ci(np.zeros(37), np.full(37, 0.1))
    assert mean == lo == hi == 0.1
    # a shift with float rounding in b - a: zero width up to rounding
    mean, lo, hi = paired_bootstrap_ci(a, a + 0.1)
    assert mean == pytest.approx(0.1, abs=1e-15) and hi - lo < 1e-15


def test_bootstrap_mean_is_mean_difference_and_ci_brackets_it():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=80), rng.normal(size=80) + 0.2
    mean, lo, hi = paired_bootstrap_ci(a, b, n_resamples=3000)
    assert mean == pytest.approx(float(np.mean(b - a)))
    assert lo < mean < hi
    # the percentile CI for a mean is about +-1.96 standard errors wide
    se = np.std(b - a, ddof=1) / math.sqrt(80)
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_bootstrap_is_seeded_and_seed_matters():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=30), rng.normal(size=30)
    assert paired_bootstrap_ci(a, b, seed=1) == paired_bootstrap_ci(a, b, seed=1)
    assert paired_bootstrap_ci(a, b, seed=1) != paired_bootstrap_ci(a, b, seed=2)


def test_bootstrap_chunking_does_not_change_result(monkeypatch):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=25), rng.normal(size=25)
    whole = paired_bootstrap_ci(a, b, n_resamples=999)
    monkeypatch.setattr(stats, "_BOOTSTRAP_CHUNK_ELEMENTS", 25 * 7)  # 7 rows per chunk, ragged last chunk
    assert paired_bootstrap_ci(a, b, n_resamples=999) == whole


def test_bootstrap_rejects_bad_input():
    with pytest.raises(DomainExpertError, match="length"):
        paired_bootstrap_ci([1, 2, 3], [1, 2])
    with pytest.raises(DomainExpertError, match="n == 0"):
        paired_bootstrap_ci([], [])
    with pytest.raises(DomainExpertError, match="NaN"):
        paired_bootstrap_ci([1, float("nan")], [1, 2])
    with pytest.raises(DomainExpertError, match="confidence"):
        paired_bootstrap_ci([1, 2], [1, 2], confidence=1.0)
    with pytest.raises(DomainExpertError, match="n_resamples"):
        paired_bootstrap_ci([1, 2], [1, 2], n_resamples=0)


# --- Wilcoxon ---------------------------------------------------------------------------------------------


def test_wilcoxon_exact_values_match_signed_rank_distribution():
    # all n differences positive with distinct sizes: exact two-sided p = 2 / 2**n
    assert paired_test_pvalue([0] * 5, [1, 2, 3, 4, 5]) == pytest.approx(2 / 2**5)
    assert paired_test_pvalue([0] * 6, [1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 2**6)
    # sign flip does not matter for a two-sided test
    assert paired_test_pvalue([1, 2, 3, 4, 5, 6], [0] * 6) == pytest.approx(2 / 2**6)


def test_wilcoxon_clear_shift_is_significant():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.0, 1.0, 40)
    b = a + 0.2 + rng.normal(0.0, 0.1, 40)
    assert paired_test_pvalue(a, b) < 0.01


def test_wilcoxon_symmetric_noise_is_not_significant():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.0, 1.0, 60)
    b = a + rng.normal(0.0, 0.2, 60)
    assert paired_test_pvalue(a, b) > 0.05


def test_wilcoxon_all_zero_differences_gives_one():
    assert paired_test_pvalue([0.1, 0.5, 0.9], [0.1, 0.5, 0.9]) == 1.0


def test_wilcoxon_ignores_zero_differences():
    # the zeros are dropped (zero_method="wilcox"), leaving the exact n=5 case
    assert paired_test_pvalue([0] * 8, [1, 2, 3, 4, 5, 0, 0, 0]) == pytest.approx(2 / 2**5)


# --- McNemar ----------------------------------------------------------------------------------------------


def _pairs(b01: int, b10: int, both_right: int = 0, both_wrong: int = 0) -> tuple[list[bool], list[bool]]:
    a = [False] * b01 + [True] * b10 + [True] * both_right + [False] * both_wrong
    b = [True] * b01 + [False] * b10 + [True] * both_right + [False] * both_wrong
    return a, b


@pytest.mark.parametrize(
    ("b01", "b10", "expected"),
    [
        (0, 6, 2 * 0.5**6),  # 0.03125
        (6, 0, 2 * 0.5**6),
        (1, 5, 2 * (1 + 6) / 2**6),  # 0.21875
        (2, 8, 2 * (1 + 10 + 45) / 2**10),  # 0.109375
        (3, 3, 1.0),
        (0, 1, 1.0),
    ],
)
def test_mcnemar_exact_pvalues(b01, b10, expected):
    a, b = _pairs(b01, b10, both_right=4, both_wrong=3)
    res = mcnemar(a, b)
    assert res["b01"] == b01 and res["b10"] == b10
    assert res["pvalue"] == pytest.approx(expected)


def test_mcnemar_concordant_pairs_do_not_matter():
    assert mcnemar(*_pairs(2, 8))["pvalue"] == mcnemar(*_pairs(2, 8, both_right=50, both_wrong=50))["pvalue"]


def test_mcnemar_no_discordant_pairs_gives_one():
    assert mcnemar(*_pairs(0, 0, both_right=5, both_wrong=5)) == {"b01": 0, "b10": 0, "pvalue": 1.0}


def test_mcnemar_accepts_0_1_and_rejects_graded():
    assert mcnemar([0, 0, 1], [1, 1, 1])["b01"] == 2
    with pytest.raises(DomainExpertError, match="0/1"):
        mcnemar([0, 0.5], [1, 1])


# --- compare_metric ---------------------------------------------------------------------------------------


def _scores(shift: float, *, n: int = 60, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, n)
    return base, base + shift + rng.normal(0.0, noise, n)


@pytest.mark.parametrize(
    ("shift", "higher_is_better", "verdict"),
    [
        (0.1, True, "better"),
        (-0.1, True, "worse"),
        (-0.1, False, "better"),  # e.g. NLL went down
        (0.1, False, "worse"),
        (0.0, True, "no detectable difference"),
        (0.0, False, "no detectable difference"),
    ],
)
def test_compare_metric_verdicts(shift, higher_is_better, verdict):
    base, tuned = _scores(shift)
    res = compare_metric("m", base, tuned, higher_is_better=higher_is_better)
    assert res["verdict"] == verdict
    assert res["test"] == "wilcoxon"
    assert res["n"] == 60 and res["n_dropped"] == 0
    assert res["diff"] == pytest.approx(res["tuned_mean"] - res["base_mean"])
    assert res["ci_low"] <= res["diff"] <= res["ci_high"]
    if shift:
        assert res["diff"] == pytest.approx(shift, abs=0.03)
        assert res["pvalue"] < 0.001


def test_compare_metric_binary_uses_mcnemar():
    base, tuned = _pairs(b01=12, b10=1, both_right=20, both_wrong=10)
    res = compare_metric("exact_match", base, tuned, kind="binary")
    assert res["test"] == "mcnemar"
    assert (res["b01"], res["b10"]) == (12, 1)
    assert res["base_mean"] == pytest.approx(21 / 43) and res["tuned_mean"] == pytest.approx(32 / 43)
    assert res["diff"] == pytest.approx(11 / 43)
    assert res["verdict"] == "better"
    assert compare_metric("exact_match", tuned, base, kind="binary")["verdict"] == "worse"


def test_compare_metric_needs_both_ci_and_pvalue():
    # 5 of 5 items improve: the bootstrap CI is [1, 1] (excludes 0) but exact McNemar p = 2 * 0.5**5 = 0.0625
    res = compare_metric("exact_match", [0] * 5, [1] * 5, kind="binary")
    assert res["ci_low"] == res["ci_high"] == 1.0
    assert res["pvalue"] == pytest.approx(0.0625)
    assert res["verdict"] == "no detectable difference"
    # 6 of 6: p = 0.03125 < 0.05
    assert compare_metric("exact_match", [0] * 6, [1] * 6, kind="binary")["verdict"] == "better"
    # a stricter alpha turns it back
    assert compare_metric("exact_match", [0] * 6, [1] * 6, kind="binary", alpha=0.01)["verdict"] == (
        "no detectable difference"
    )


def test_compare_metric_drops_nan_pairs():
    base, tuned = _scores(0.1, n=40)
    base[[2, 7]] = np.nan
    tuned[[7, 11, 30]] = np.nan  # item 7 is NaN on both sides: counted once
    res = compare_metric("rougeL", list(base), [None if np.isnan(t) else t for t in tuned])
    keep = ~(np.isnan(base) | np.isnan(tuned))
    assert res["n"] == 36 and res["n_dropped"] == 4
    assert res["base_mean"] == pytest.approx(base[keep].mean())
    assert res["tuned_mean"] == pytest.approx(tuned[keep].mean())
    assert res["verdict"] == "better"


def test_compare_metric_is_reproducible_and_seeded():
    base, tuned = _scores(0.02, noise=0.2)
    assert compare_metric("m", base, tuned, seed=3) == compare_metric("m", base, tuned, seed=3)
    assert compare_metric("m", base, tuned, seed=3)["ci_low"] != compare_metric("m", base, tuned, seed=4)["ci_low"]


def test_compare_metric_errors():
    with pytest.raises(DomainExpertError, match=r"compare_metric\(rougeL\).*length"):
        compare_metric("rougeL", [0.1, 0.2], [0.3])
    with pytest.raises(DomainExpertError, match="n == 0"):
        compare_metric("rougeL", [], [])
    with pytest.raises(DomainExpertError, match="n == 0.*2 pairs dropped"):
        compare_metric("rougeL", [float("nan"), 0.1], [0.2, float("nan")])
    with pytest.raises(DomainExpertError, match="kind"):
        compare_metric("rougeL", [0.1], [0.2], kind="ordinal")
    with pytest.raises(DomainExpertError, match="0/1"):
        compare_metric("rougeL", [0.1, 0.2], [0.3, 0.4], kind="binary")
    with pytest.raises(DomainExpertError, match="alpha"):
        compare_metric("rougeL", [0.1], [0.2], alpha=0)

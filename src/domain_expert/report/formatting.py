"""How the report writes numbers, p-values, intervals, durations, metric names and verdicts (HTML and Markdown)."""

from __future__ import annotations

import math
from typing import Any

# evaluate (its METRICS table) names two metrics after the item field they average; docs/evaluation-format.md
# uses these names
METRIC_ALIASES = {"stopped": "stop_rate", "correct": "mc_acc"}
VERDICT_CLASS = {"better": "better", "worse": "worse", "no detectable difference": "nodiff"}


def bad(v: Any) -> bool:
    """True for what cannot be shown as a number: missing, a bool, not a number, NaN or infinite."""
    return v is None or isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) or math.isinf(v)


def fmt_num(v: Any, *, signed: bool = False) -> str:
    """Numbers in tables: 3 decimals (scientific below 0.001), '—' when missing."""
    if bad(v):
        return "—"
    if isinstance(v, int) and not signed:
        return f"{v:,}"
    sign = "+" if signed else ""
    if v != 0 and abs(v) < 0.001:
        return f"{v:{sign}.2e}"
    if abs(v) >= 10000:
        return f"{v:{sign},.1f}"
    return f"{v:{sign}.3f}"


def as_float(v: Any) -> Any:
    """Statistics are shown with decimals even when JSON wrote them as integers (e.g. a mean of 0)."""
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def fmt_p(p: Any) -> str:
    if bad(p):
        return "—"
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def fmt_ci(lo: Any, hi: Any) -> str:
    if bad(lo) or bad(hi):
        return "—"
    return f"[{fmt_num(lo, signed=True)}, {fmt_num(hi, signed=True)}]"


def fmt_seconds(s: Any) -> str:
    if bad(s):
        return "—"
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def fmt_pct(v: Any) -> str:
    return "—" if bad(v) else f"{100 * v:.1f}%"


def canonical_metric(c: dict) -> str:
    return METRIC_ALIASES.get(str(c["metric"]), str(c["metric"]))


def metric_label(c: dict) -> str:
    """The label evaluate wrote into the comparison (its METRICS table), else the metric's key."""
    return str(c.get("label") or c["metric"])


def verdict_class(v: Any) -> str:
    return VERDICT_CLASS.get(str(v), "na")

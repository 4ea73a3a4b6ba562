"""Per-item pairing of the two models' rows in eval/items.jsonl: differences, top items, McNemar counts."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from domain_expert.report.formatting import bad

TOP_K = 5


@dataclass
class Pair:
    """One compared pair of models and its comparisons from eval/metrics.json."""

    a: str
    b: str
    comparisons: list[dict]


def model_pairs(m: dict) -> list[Pair]:
    """The compared pairs in order of first appearance; a comparison without "a"/"b" compares the baseline with the
    first other model."""
    labels = [x["label"] for x in m["models"]]
    baseline = m["baseline"]
    default_b = next((x for x in labels if x != baseline), baseline)
    out: dict[tuple[str, str], Pair] = {}
    for c in m["comparisons"]:
        a, b = str(c.get("a") or baseline), str(c.get("b") or default_b)
        out.setdefault((a, b), Pair(a, b, [])).comparisons.append(c)
    return list(out.values())


def _by_id(items: Iterable[dict], model: str, kind: str) -> dict[str, dict]:
    return {str(r["id"]): r for r in items if r["model"] == model and r["kind"] == kind}


def num(v: Any) -> float:
    return float("nan") if bad(v) else float(v)


@dataclass
class GenPair:
    id: str
    base: dict
    tuned: dict

    def diff(self, key: str) -> float:
        return num(self.tuned.get(key)) - num(self.base.get(key))


def gen_pairs(items: list[dict], a: str, b: str) -> list[GenPair]:
    ga, gb = _by_id(items, a, "generation"), _by_id(items, b, "generation")
    return [GenPair(i, ga[i], gb[i]) for i in ga if i in gb]


def top_items(pairs: list[GenPair], key: str = "rougeL", k: int = TOP_K) -> tuple[list[GenPair], list[GenPair]]:
    """The k most improved (diff > 0, largest first) and k most regressed (diff < 0, most negative first)."""
    scored = [p for p in pairs if not math.isnan(p.diff(key))]
    improved = sorted((p for p in scored if p.diff(key) > 0), key=lambda p: (-p.diff(key), p.id))[:k]
    regressed = sorted((p for p in scored if p.diff(key) < 0), key=lambda p: (p.diff(key), p.id))[:k]
    return improved, regressed


def mc_counts(items: list[dict], a: str, b: str) -> dict | None:
    """The McNemar 2x2 table of multiple-choice items both models answered."""
    ma, mb = _by_id(items, a, "mc"), _by_id(items, b, "mc")
    ids = [i for i in ma if i in mb]
    if not ids:
        return None
    counts = {"both": 0, "a_only": 0, "b_only": 0, "neither": 0, "n": len(ids)}
    for i in ids:
        ca, cb = bool(ma[i].get("correct")), bool(mb[i].get("correct"))
        key = "both" if ca and cb else "a_only" if ca else "b_only" if cb else "neither"
        counts[key] += 1
    return counts


def gen_stats(items: list[dict], model: str) -> dict | None:
    """Stop rate, empty answers and mean answer length of a model's generation items."""
    rows = [r for r in items if r["model"] == model and r["kind"] == "generation"]
    if not rows:
        return None
    tokens = [num(r.get("answer_tokens")) for r in rows]
    tokens = [t for t in tokens if not math.isnan(t)]
    return {
        "n": len(rows),
        "stop_rate": sum(bool(r.get("stopped")) for r in rows) / len(rows),
        "empty_answers": sum(not (r.get("answer") or "").strip() for r in rows),
        "answer_tokens": sum(tokens) / len(tokens) if tokens else None,
    }

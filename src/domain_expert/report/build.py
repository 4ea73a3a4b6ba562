"""The report's view model: everything both renderers (HTML and Markdown) show, computed once from the inputs.

`build` turns `Inputs` into one dict: display-ready values (formatted numbers, verdict classes, "not available"
reasons), a few raw comparisons that the renderers format with the same helpers (formatting.py), and the per-item
differences for the plot ("panels"), so the HTML page and the Markdown file show the same numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from domain_expert.report.formatting import (
    VERDICT_CLASS,
    as_float,
    bad,
    canonical_metric,
    fmt_ci,
    fmt_num,
    fmt_p,
    fmt_pct,
    fmt_seconds,
    metric_label,
    verdict_class,
)
from domain_expert.report.inputs import Inputs

TOP_K = 5


@dataclass
class Pair:
    a: str
    b: str
    comparisons: list[dict]


def _pairs(m: dict) -> list[Pair]:
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


def _num(v: Any) -> float:
    return float("nan") if bad(v) else float(v)


@dataclass
class GenPair:
    id: str
    base: dict
    tuned: dict

    def diff(self, key: str) -> float:
        return _num(self.tuned.get(key)) - _num(self.base.get(key))


def _gen_pairs(items: list[dict], a: str, b: str) -> list[GenPair]:
    ga, gb = _by_id(items, a, "generation"), _by_id(items, b, "generation")
    return [GenPair(i, ga[i], gb[i]) for i in ga if i in gb]


def top_items(pairs: list[GenPair], key: str = "rougeL", k: int = TOP_K) -> tuple[list[GenPair], list[GenPair]]:
    """The k most improved (diff > 0, largest first) and k most regressed (diff < 0, most negative first)."""
    scored = [p for p in pairs if not math.isnan(p.diff(key))]
    improved = sorted((p for p in scored if p.diff(key) > 0), key=lambda p: (-p.diff(key), p.id))[:k]
    regressed = sorted((p for p in scored if p.diff(key) < 0), key=lambda p: (p.diff(key), p.id))[:k]
    return improved, regressed


def _mc_counts(items: list[dict], a: str, b: str) -> dict | None:
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


def _gen_stats(items: list[dict], model: str) -> dict | None:
    rows = [r for r in items if r["model"] == model and r["kind"] == "generation"]
    if not rows:
        return None
    tokens = [_num(r.get("answer_tokens")) for r in rows]
    tokens = [t for t in tokens if not math.isnan(t)]
    return {
        "n": len(rows),
        "stop_rate": sum(bool(r.get("stopped")) for r in rows) / len(rows),
        "empty_answers": sum(not (r.get("answer") or "").strip() for r in rows),
        "answer_tokens": sum(tokens) / len(tokens) if tokens else None,
    }


def _get(d: dict | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def build(inp: Inputs) -> dict:
    """The view model of the report: what both renderers show ("panels" is the plot's data, not shown as text)."""
    m = inp.metrics
    per_model = m.get("per_model") or {}
    pairs = _pairs(m)
    main = pairs[0]
    a, b = main.a, main.b
    comp = {canonical_metric(c): c for c in main.comparisons}
    items = inp.items or []
    n_items = m.get("n_items") or {}
    base_model = _get(inp.ft_stage, "base_model") or _get(inp.export_stage, "base_model")
    run_name = _get(inp.run_json, "name") or _get(inp.config, "name") or inp.run_dir.name

    counts = {k: sum(1 for c in main.comparisons if c.get("verdict") == k) for k in VERDICT_CLASS}
    headline = []
    for word in ("better", "worse", "no detectable difference"):
        names = [metric_label(c) for c in main.comparisons if c.get("verdict") == word]
        if names:
            headline.append((word, names))

    summary = []
    for p in pairs:
        lines = []
        for c in p.comparisons:
            hib = c.get("higher_is_better")
            direction = "higher is better" if hib is True else "lower is better" if hib is False else "no direction"
            lines.append(
                {
                    "label": metric_label(c),
                    "verdict": str(c.get("verdict")),
                    "cls": verdict_class(c.get("verdict")),
                    "diff": fmt_num(as_float(c.get("diff")), signed=True),
                    "ci": fmt_ci(as_float(c.get("ci_low")), as_float(c.get("ci_high"))),
                    "p": fmt_p(c.get("pvalue")),
                    "n": fmt_num(c.get("n")),
                    "a_mean": fmt_num(as_float(c.get("base_mean"))),
                    "b_mean": fmt_num(as_float(c.get("tuned_mean"))),
                    "direction": direction,
                    "test": str(c.get("test") or "—"),
                    "dropped": c.get("dropped") or 0,
                    "bar": _ci_bar(c.get("diff"), c.get("ci_low"), c.get("ci_high")),
                }
            )
        summary.append({"a": p.a, "b": p.b, "lines": lines})

    # per-item sections
    gen_pairs = _gen_pairs(items, a, b) if inp.items is not None else []
    improved, regressed = top_items(gen_pairs)

    def show(p: GenPair) -> dict:
        def side(r: dict) -> dict:
            return {
                "answer": r.get("answer") or "",
                "empty": not (r.get("answer") or "").strip(),
                "rougeL": fmt_num(r.get("rougeL")),
                "embed_sim": fmt_num(r.get("embed_sim")),
                "chrf": fmt_num(r.get("chrf")),
                "tokens": fmt_num(r.get("answer_tokens")),
                "stopped": "yes" if r.get("stopped") else "no (hit the token limit)",
            }

        return {
            "id": p.id,
            "question": p.base.get("prompt") or p.tuned.get("prompt") or "",
            "reference": p.base.get("reference") or p.tuned.get("reference") or "",
            "diff": fmt_num(p.diff("rougeL"), signed=True),
            "a": side(p.base),
            "b": side(p.tuned),
        }

    panels = [
        (
            metric_label(comp[key]) if key in comp else key,
            [x for x in (p.diff(key) for p in gen_pairs) if not math.isnan(x)],
            comp.get(key),
        )
        for key in ("rougeL", "embed_sim")
    ]

    # stop rate / empty answers
    stop_rows = []
    for label in (a, b):
        pm = per_model.get(label) or {}
        st = _gen_stats(items, label) if inp.items is not None else None
        stop_rows.append(
            {
                "model": label,
                "stop_rate": fmt_pct(pm.get("stop_rate", st and st["stop_rate"])),
                "empty": fmt_num(pm.get("empty_answers", st and st["empty_answers"])),
                "tokens": fmt_num(pm.get("answer_tokens", st and st["answer_tokens"])),
                "n": fmt_num(st["n"] if st else n_items.get("generation")),
            }
        )

    # multiple choice
    mc = comp.get("mc_acc")
    mc_counts = _mc_counts(items, a, b) if inp.items is not None else None
    choices = _get(m, "config", "mc_choices")
    mc_view = None
    if mc or mc_counts:
        mc_view = {
            "a_acc": fmt_pct(_get(per_model, a, "mc_acc") if mc is None else mc.get("base_mean")),
            "b_acc": fmt_pct(_get(per_model, b, "mc_acc") if mc is None else mc.get("tuned_mean")),
            "choices": choices if isinstance(choices, int) and choices > 0 else None,
            "chance": fmt_pct(1 / choices) if isinstance(choices, int) and choices > 0 else "—",
            "comp": mc,
            "counts": mc_counts,
            "b01": mc_counts["b_only"] if mc_counts else (mc or {}).get("b01"),
            "b10": mc_counts["a_only"] if mc_counts else (mc or {}).get("b10"),
        }

    # forgetting guard
    gn = comp.get("general_nll")
    forget = None
    if gn or any("general_ppl" in (per_model.get(x) or {}) for x in (a, b)):
        v = str(gn.get("verdict")) if gn else "n/a"
        meaning = {
            "worse": f"{b} predicts general English text less well than {a}: a sign of forgetting.",
            "better": f"{b} predicts general English text better than {a}: no sign of forgetting.",
            "no detectable difference": "no detectable forgetting of general English text.",
        }.get(v, "no verdict available.")
        forget = {
            "a_ppl": fmt_num(_get(per_model, a, "general_ppl")),
            "b_ppl": fmt_num(_get(per_model, b, "general_ppl")),
            "comp": gn,
            "verdict": v,
            "cls": verdict_class(v),
            "meaning": meaning,
            "n": fmt_num(n_items.get("general") if gn is None else gn.get("n")),
        }

    # manifest
    sources = []
    for s in _get(inp.manifest, "sources") or []:
        if isinstance(s, dict):
            sources.append(
                {
                    "name": str(s.get("name") or s.get("kind") or "?"),
                    "license": str(s.get("license") or "not stated"),
                    "records": fmt_num(s.get("records")),
                    "scope": str(s.get("scope") or ""),
                    "inputs": [
                        (str(i.get("path", "?")), str(i.get("sha256", "—")))
                        for i in (s.get("inputs") or [])
                        if isinstance(i, dict)
                    ],
                }
            )
    outputs = [
        (name, fmt_num(o.get("records")), fmt_num(o.get("groups")), str(o.get("sha256", "—")))
        for name, o in (_get(inp.manifest, "outputs") or {}).items()
        if isinstance(o, dict)
    ]
    v_prep, v_eval = _get(inp.manifest, "versions") or {}, m.get("versions") or {}
    versions = [(k, str(v_prep.get(k, "—")), str(v_eval.get(k, "—"))) for k in dict.fromkeys([*v_eval, *v_prep])]
    split_seed = _get(inp.manifest, "split", "seed")
    seeds = [
        (name, str(v))
        for name, v in (
            ("data split", _get(inp.config, "data", "seed") if split_seed is None else split_seed),
            ("training", _get(inp.config, "train", "seed")),
            ("evaluation", m.get("seed")),
        )
        if v is not None
    ]
    timings = []
    if inp.run_json:
        for stage, s in (_get(inp.run_json, "stage_seconds") or {}).items():
            timings.append((f"run: {stage}", fmt_seconds(s)))
        if "seconds" in inp.run_json:
            timings.append(("run: total", fmt_seconds(inp.run_json["seconds"])))
    for label, s in (m.get("timings") or {}).items():
        timings.append((f"evaluate: {label}", fmt_seconds(s) if not isinstance(s, dict) else json.dumps(s)))
    ts = inp.train_summary or _get(inp.ft_stage, "summary")
    training = None
    if isinstance(ts, dict):
        training = [
            ("steps", f"{fmt_num(ts.get('steps'))} of {fmt_num(ts.get('planned_steps'))} planned"),
            ("stopped by", str(ts.get("stopped_by", "—"))),
            ("epochs seen", fmt_num(ts.get("epochs_seen"))),
            ("training examples", fmt_num(ts.get("train_examples"))),
            ("trained tokens", fmt_num(ts.get("trained_tokens"))),
            ("throughput", "—" if bad(ts.get("tokens_per_s")) else f"{ts['tokens_per_s']:,.1f} tokens/s"),
            ("val loss", f"{fmt_num(ts.get('val_loss_start'))} → {fmt_num(ts.get('val_loss_end'))}"),
            (
                "trainable / total parameters",
                f"{fmt_num(ts.get('trainable_params'))} / {fmt_num(ts.get('total_params'))}",
            ),
        ]
    fidelity = _get(inp.export_stage, "fidelity")

    # limitations
    scopes = [s["scope"] for s in sources if s["scope"]]
    n_gen = n_items.get("generation")
    max_new = _get(m, "config", "max_new_tokens")
    total_params = _get(ts, "total_params") if isinstance(ts, dict) else None
    model_name = str(_get(base_model, "reference") or "the base model")
    size = f" ({total_params / 1e6:.0f}M parameters)" if not bad(total_params) else ""
    limitations = [
        (
            "Held-out terms come from one ontology branch"
            + (f" ({'; '.join(scopes)})" if scopes else "")
            + ", the same branch as the training data: the results say nothing about other areas of medicine."
        ),
        (
            "ROUGE-L, chrF and embedding similarity measure closeness to one reference definition, not clinical "
            "correctness: a correct answer worded differently scores low, and a fluent wrong one can score well."
        ),
        (
            f"Small samples give wide confidence intervals (n = {fmt_num(n_gen)} generation items): "
            "'no detectable difference' is not evidence of no difference."
        ),
        (
            "Answers were decoded greedily only"
            + (f" (at most {max_new} new tokens)" if max_new is not None else "")
            + "; sampling could behave differently."
        ),
        f"The base model, {model_name}, is a small model{size}: expect confident, fluent mistakes.",
    ]
    skipped = [
        {k: str(s.get(k, "?" if k == "metric" else "—")) for k in ("metric", "model", "reason")}
        for s in (m.get("skipped") or [])
        if isinstance(s, dict)
    ]

    def na(*rels: str) -> str:
        reasons = [f"{r}: {inp.missing[r]}" for r in rels if r in inp.missing]
        return "not available" + (f" ({'; '.join(reasons)})" if reasons else "")

    return {
        "run_name": str(run_name),
        "run_dir": str(inp.run_dir),
        "created": _now(),
        "eval_created": str(m.get("created") or "—"),
        "a": a,
        "b": b,
        "pairs": summary,
        "counts": counts,
        "headline": headline,
        "n_items": [(k, fmt_num(v)) for k, v in n_items.items() if v],
        "models": [(str(x["label"]), str(x.get("spec", "—")), str(x.get("kind", "—"))) for x in m["models"]],
        "eval_config": [
            (str(k), json.dumps(v) if not isinstance(v, str) else v) for k, v in (m.get("config") or {}).items()
        ],
        "base_model": base_model if isinstance(base_model, dict) else None,
        "sources": sources,
        "split": _get(inp.manifest, "split"),
        "outputs": outputs,
        "manifest_note": str(_get(inp.manifest, "note") or ""),
        "config_text": inp.config_text,
        "versions": versions,
        "seeds": seeds,
        "timings": timings,
        "training": training,
        "fidelity": fidelity if isinstance(fidelity, dict) else None,
        "loss_skipped": inp.loss_skipped_lines,
        "improved": [show(p) for p in improved],
        "regressed": [show(p) for p in regressed],
        "n_gen_pairs": len(gen_pairs),
        "panels": panels,
        "stop_rows": stop_rows,
        "stop_comp": comp.get("stop_rate"),
        "mc": mc_view,
        "forget": forget,
        "limitations": limitations,
        "skipped": skipped,
        "inputs": sorted(inp.read.items()),
        "na": {
            "manifest": na("data/manifest.json"),
            "base_model": na("finetune/stage.json", "export/stage.json"),
            "config": na("config.yaml"),
            "loss": na("finetune/metrics.jsonl"),
            "items": na("eval/items.jsonl"),
            "training": na("finetune/train_summary.json", "finetune/stage.json"),
            "timings": na("run.json"),
        },
    }


def _ci_bar(diff: Any, lo: Any, hi: Any) -> dict | None:
    """Positions (percent of a track centred on 0) of a metric's CI and mean, for the verdict summary."""
    if bad(diff) or bad(lo) or bad(hi):
        return None
    scale = max(abs(lo), abs(hi), abs(diff)) or 1.0

    def pos(x: float) -> float:
        return round(50 + 46 * x / scale, 2)

    return {"lo": pos(lo), "width": round(max(pos(hi) - pos(lo), 0.8), 2), "mean": pos(diff)}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

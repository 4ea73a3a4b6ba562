"""The report's view model: everything both renderers (HTML and Markdown) show, computed once from the inputs.

`build` turns `Inputs` into one dict of display-ready values (formatted numbers, verdict classes, "not available"
reasons) and the per-item differences for the plot ("panels"), so that the HTML page and the Markdown file show the
same numbers and the templates only lay them out. Each section of the report has its function below.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from domain_expert.report.formatting import (
    as_float,
    bad,
    canonical_metric,
    fmt_ci,
    fmt_num,
    fmt_p,
    fmt_pct,
    metric_label,
    verdict_class,
)
from domain_expert.report.inputs import Inputs, dig
from domain_expert.report.pairing import GenPair, Pair, gen_pairs, gen_stats, mc_counts, model_pairs, top_items
from domain_expert.report.provenance import base_model, provenance, sources, train_summary, training

HEADLINE_VERDICTS = ("better", "worse", "no detectable difference")


def build(inp: Inputs) -> dict:
    """The view model of the report: what both renderers show ("panels" is the plot's data, not shown as text)."""
    pairs = model_pairs(inp.metrics)
    main = pairs[0]
    comp = {canonical_metric(c): c for c in main.comparisons}
    return {
        **_header(inp, main),
        **_verdicts(pairs),
        "learned": _learned(inp, main, comp),
        **_examples(inp, main, comp),
        **_stops(inp, main, comp),
        "mc": _multiple_choice(inp, main, comp),
        "forget": _forgetting(inp, main, comp),
        **training(inp),
        **provenance(inp),
        **_limitations(inp),
        "na": _not_available(inp),
    }


def comparison_view(c: dict) -> dict:
    """One comparison as the renderers show it: a verdict row, and the CI bar of the verdict summary."""
    hib = c.get("higher_is_better")
    return {
        "label": metric_label(c),
        "verdict": str(c.get("verdict")),
        "cls": verdict_class(c.get("verdict")),
        "diff": fmt_num(as_float(c.get("diff")), signed=True),
        "ci": fmt_ci(as_float(c.get("ci_low")), as_float(c.get("ci_high"))),
        "p": fmt_p(c.get("pvalue")),
        "n": fmt_num(c.get("n")),
        "a_mean": fmt_num(as_float(c.get("base_mean"))),
        "b_mean": fmt_num(as_float(c.get("tuned_mean"))),
        "direction": "higher is better" if hib is True else "lower is better" if hib is False else "no direction",
        "test": str(c.get("test") or "—"),
        "dropped": c.get("dropped") or 0,
        "bar": _ci_bar(c.get("diff"), c.get("ci_low"), c.get("ci_high")),
    }


def _header(inp: Inputs, main: Pair) -> dict:
    m = inp.metrics
    run_name = dig(inp.run_json, "name") or dig(inp.config, "name") or inp.run_dir.name
    return {
        "run_name": str(run_name),
        "run_dir": str(inp.run_dir),
        "created": _now(),
        "eval_created": str(m.get("created") or "—"),
        "a": main.a,
        "b": main.b,
        "n_items": [(k, fmt_num(v)) for k, v in (m.get("n_items") or {}).items() if v],
    }


def _verdicts(pairs: list[Pair]) -> dict:
    """Every pair's verdict rows (the summary and the metric table), and the main pair's one-line headline."""
    headline = []
    for word in HEADLINE_VERDICTS:
        labels = [metric_label(c) for c in pairs[0].comparisons if c.get("verdict") == word]
        if labels:
            headline.append({"verdict": word, "cls": verdict_class(word), "labels": labels})
    return {
        "pairs": [{"a": p.a, "b": p.b, "lines": [comparison_view(c) for c in p.comparisons]} for p in pairs],
        "headline": headline,
    }


SIDE_TITLE = {"held_in": "taught (held-in)", "held_out": "never taught (held-out)"}
SUMMARY_TEXT = {
    "content and style": "{b} learned content and style: it recalls facts it was taught, asked in formats it never "
    "saw in training, and its answers took the references' form.",
    "content": "{b} learned content: it recalls facts it was taught, asked in formats it never saw in training; the "
    "form of its answers did not change detectably.",
    "style only": "{b} learned style only: its answers took the references' form (when to stop, how long), but it "
    "does not recall the facts it was taught detectably better than {a} when asked in unseen formats.",
    "style (content not probed)": "{b} learned style: its answers took the references' form; no knowledge probes "
    "were scored, so whether it learned content is not measured.",
}


def _learned(inp: Inputs, main: Pair, comp: dict[str, dict]) -> dict | None:
    """What "better" means for the main pair (evaluate's `learned`), with the uptake probes by side and format."""
    info = dig(inp.metrics, "learned", main.b)
    if not isinstance(info, dict):
        return None
    summary = str(info.get("summary"))
    text = SUMMARY_TEXT.get(summary, "No detectable learning of content or style by {b} over {a}.")
    rows = []
    for c in inp.metrics.get("probe_breakdown") or []:
        if c.get("b") != main.b or c.get("by") != "format":
            continue
        rows.append({"side": SIDE_TITLE.get(str(c.get("side")), str(c.get("side"))), "format": str(c.get("value")),
                     **comparison_view(c), "a_mean": fmt_pct(c.get("base_mean")),
                     "b_mean": fmt_pct(c.get("tuned_mean"))})  # fmt: skip
    lines = [comparison_view(comp[k]) for k in ("probe_held_in", "probe_held_out") if k in comp]
    return {
        "summary": summary,
        "text": text.format(a=main.a, b=main.b),
        "content": str(info.get("content") or "not measured"),
        "style": str(info.get("style") or "not measured"),
        "generalises": str(info.get("generalises") or "not measured"),
        "lines": lines,
        "rows": rows,
    }


def _example_side(r: dict) -> dict:
    answer = r.get("answer") or ""
    return {
        "answer": answer,
        "empty": not answer.strip(),
        "rougeL": fmt_num(r.get("rougeL")),
        "embed_sim": fmt_num(r.get("embed_sim")),
        "chrf": fmt_num(r.get("chrf")),
        "tokens": fmt_num(r.get("answer_tokens")),
        "stopped": "yes" if r.get("stopped") else "no (hit the token limit)",
    }


def _example(p: GenPair) -> dict:
    return {
        "id": p.id,
        "question": p.base.get("prompt") or p.tuned.get("prompt") or "",
        "reference": p.base.get("reference") or p.tuned.get("reference") or "",
        "diff": fmt_num(p.diff("rougeL"), signed=True),
        "a": _example_side(p.base),
        "b": _example_side(p.tuned),
    }


def _examples(inp: Inputs, main: Pair, comp: dict[str, dict]) -> dict:
    """The most improved and regressed answers, and the per-item differences the plot draws."""
    pairs = gen_pairs(inp.items, main.a, main.b) if inp.items is not None else []
    improved, regressed = top_items(pairs)
    panels = [
        (
            metric_label(comp[key]) if key in comp else key,
            [x for x in (p.diff(key) for p in pairs) if not math.isnan(x)],
            comp.get(key),
        )
        for key in ("rougeL", "embed_sim")
    ]
    return {
        "improved": [_example(p) for p in improved],
        "regressed": [_example(p) for p in regressed],
        "n_gen_pairs": len(pairs),
        "panels": panels,
    }


def _stops(inp: Inputs, main: Pair, comp: dict[str, dict]) -> dict:
    """Stop rate, empty answers and answer length per model: metrics.json's figures, else counted from the items."""
    per_model = inp.metrics.get("per_model") or {}
    n_gen = dig(inp.metrics, "n_items", "generation")
    rows = []
    for label in (main.a, main.b):
        pm = per_model.get(label) or {}
        st = gen_stats(inp.items, label) if inp.items is not None else None
        rows.append(
            {
                "model": label,
                "stop_rate": fmt_pct(pm.get("stop_rate", st and st["stop_rate"])),
                "empty": fmt_num(pm.get("empty_answers", st and st["empty_answers"])),
                "tokens": fmt_num(pm.get("answer_tokens", st and st["answer_tokens"])),
                "n": fmt_num(st["n"] if st else n_gen),
            }
        )
    sc = comp.get("stop_rate")
    return {"stop_rows": rows, "stop_comp": comparison_view(sc) if sc else None}


def _multiple_choice(inp: Inputs, main: Pair, comp: dict[str, dict]) -> dict | None:
    """Accuracies, chance level and the McNemar table; None when the evaluation has no multiple-choice items."""
    mc = comp.get("mc_acc")
    counts = mc_counts(inp.items, main.a, main.b) if inp.items is not None else None
    if not (mc or counts):
        return None
    per_model = inp.metrics.get("per_model") or {}
    choices = dig(inp.metrics, "config", "mc_choices")
    has_choices = isinstance(choices, int) and choices > 0
    return {
        "a_acc": fmt_pct(dig(per_model, main.a, "mc_acc") if mc is None else mc.get("base_mean")),
        "b_acc": fmt_pct(dig(per_model, main.b, "mc_acc") if mc is None else mc.get("tuned_mean")),
        "choices": choices if has_choices else None,
        "chance": fmt_pct(1 / choices) if has_choices else "—",
        "comp": comparison_view(mc) if mc else None,
        "counts": counts,
        "b01": counts["b_only"] if counts else (mc or {}).get("b01"),
        "b10": counts["a_only"] if counts else (mc or {}).get("b10"),
    }


def _forgetting(inp: Inputs, main: Pair, comp: dict[str, dict]) -> dict | None:
    """General-text perplexity of both models and what its verdict means; None when the evaluation has neither."""
    a, b = main.a, main.b
    per_model = inp.metrics.get("per_model") or {}
    gn = comp.get("general_nll")
    if not (gn or any("general_ppl" in (per_model.get(x) or {}) for x in (a, b))):
        return None
    v = str(gn.get("verdict")) if gn else "n/a"
    meaning = {
        "worse": f"{b} predicts general English text less well than {a}: a sign of forgetting.",
        "better": f"{b} predicts general English text better than {a}: no sign of forgetting.",
        "no detectable difference": "no detectable forgetting of general English text.",
    }.get(v, "no verdict available.")
    return {
        "a_ppl": fmt_num(dig(per_model, a, "general_ppl")),
        "b_ppl": fmt_num(dig(per_model, b, "general_ppl")),
        "comp": comparison_view(gn) if gn else None,
        "verdict": v,
        "cls": verdict_class(v),
        "meaning": meaning,
        "n": fmt_num(dig(inp.metrics, "n_items", "general") if gn is None else gn.get("n")),
    }


def _limitations(inp: Inputs) -> dict:
    """What the results cannot say, with this run's figures, and the metrics evaluate skipped."""
    m = inp.metrics
    scopes = [s["scope"] for s in sources(inp.manifest) if s["scope"]]
    max_new = dig(m, "config", "max_new_tokens")
    total_params = dig(train_summary(inp), "total_params")
    model_name = str(dig(base_model(inp), "reference") or "the base model")
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
            f"Small samples give wide confidence intervals (n = {fmt_num(dig(m, 'n_items', 'generation'))} "
            "generation items): 'no detectable difference' is not evidence of no difference."
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
    return {"limitations": limitations, "skipped": skipped}


def _not_available(inp: Inputs) -> dict[str, str]:
    """Per section, "not available" with the reasons of the inputs it would have come from."""

    def na(*rels: str) -> str:
        reasons = [f"{r}: {inp.missing[r]}" for r in rels if r in inp.missing]
        return "not available" + (f" ({'; '.join(reasons)})" if reasons else "")

    return {
        "manifest": na("data/manifest.json"),
        "base_model": na("finetune/stage.json", "export/stage.json"),
        "config": na("config.yaml"),
        "loss": na("finetune/metrics.jsonl"),
        "items": na("eval/items.jsonl"),
        "training": na("finetune/train_summary.json", "finetune/stage.json"),
        "timings": na("run.json"),
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

"""From per-item rows to metrics.json's numbers: per-model means and paired comparisons against the baseline."""

from __future__ import annotations

import math
from dataclasses import asdict

from domain_expert.config import EvalConfig
from domain_expert.evaluate.specs import ModelSpec

# metric -> (label, group, higher_is_better, kind); higher_is_better None = descriptive only, no verdict
METRICS = {
    "rougeL": ("ROUGE-L", "generation", True, "continuous"),
    "chrf": ("chrF", "generation", True, "continuous"),
    "embed_sim": ("Embedding similarity", "generation", True, "continuous"),
    "stopped": ("Stop rate (EOS before limit)", "generation", True, "binary"),
    "answer_tokens": ("Answer length (tokens)", "generation", None, "continuous"),
    "length_gap": ("Answer length gap to the reference (words)", "generation", False, "continuous"),
    "ref_nll": ("Reference answer NLL", "likelihood", False, "continuous"),
    "correct": ("Term recognition accuracy (MC)", "mc", True, "binary"),
    "probe_held_in": ("Knowledge uptake: taught facts, unseen formats", "probes", True, "binary"),
    "probe_held_out": ("Knowledge uptake: held-out facts, same formats", "probes", True, "binary"),
    "general_nll": ("General-English NLL (forgetting guard)", "general", False, "continuous"),
    "domain_nll": ("Held-out domain text NLL", "domain_text", False, "continuous"),
    "judge_correct": ("LLM judge: correct (1-5)", "judge", True, "continuous"),
    "judge_complete": ("LLM judge: complete (1-5)", "judge", True, "continuous"),
    "judge_safe": ("LLM judge: safe (1-5)", "judge", True, "continuous"),
}
NLL_METRICS = {"ref_nll", "general_nll", "domain_nll"}
# the item kind a metric's values come from: its group, except reference NLL, which is scored on generation items
KIND_OF = {m: "generation" if group == "likelihood" else group for m, (_, group, _, _) in METRICS.items()}
KIND_OF.update(probe_held_in="probe", probe_held_out="probe")
# the row field a metric averages, where it differs from the metric's name
FIELD_OF = {"general_nll": "nll", "domain_nll": "nll", "probe_held_in": "correct", "probe_held_out": "correct"}
# metrics over a subset of a kind's rows: (row field, value)
WHERE_OF = {"probe_held_in": ("split", "held_in"), "probe_held_out": ("split", "held_out")}

Rows = dict[tuple[str, str], dict[str, dict]]  # (model, kind) -> item id -> row


def aggregate(rows: list[dict], specs: list[ModelSpec], items: dict, cfg: EvalConfig, vocab: dict) -> dict:
    """metrics.json without timings and versions; `vocab` is each model's tokenizer fingerprint (None: endpoint)."""
    by: Rows = {}
    for r in rows:
        by.setdefault((r["model"], r["kind"]), {})[r["id"]] = r
    skipped: list[dict] = []
    per_model = {s.label: _model_means(by, s.label) for s in specs}
    for s in specs:
        if s.kind == "endpoint":
            for metric in ("ref_nll", "correct", "general_nll", "domain_nll"):
                skipped.append({"metric": metric, "model": s.label,
                                "reason": "chat endpoints return no token log-likelihoods"})  # fmt: skip
    base = specs[0].label
    comparisons = [c for s in specs[1:] for c in _compare(by, base, s.label, cfg, vocab, skipped)]
    probes = [c for s in specs[1:] for c in _probe_breakdown(by, base, s.label, cfg)]
    return {
        "stage": "evaluate",
        "seed": cfg.seed,
        "config": cfg.model_dump(),
        "models": [asdict(s) for s in specs],
        "baseline": base,
        "n_items": {k: len(v) for k, v in items.items()},
        "per_model": per_model,
        "comparisons": comparisons,
        "probe_breakdown": probes,
        "learned": {s.label: learned(comparisons, s.label) for s in specs[1:]},
        "skipped": skipped,
    }


def _values(by: Rows, label: str, metric: str) -> dict[str, float]:
    """Item id -> the metric's value for one model; items where it is None (not scored) are left out."""
    field = FIELD_OF.get(metric, metric)
    where = WHERE_OF.get(metric)
    out = {}
    for i, r in by.get((label, KIND_OF[metric]), {}).items():
        if where is not None and r.get(where[0]) != where[1]:
            continue
        v = _length_gap(r) if metric == "length_gap" else r.get(field)
        if v is not None:
            out[i] = float(v)
    return out


def _length_gap(row: dict) -> float | None:
    """How far an answer's length is from its reference's, in words: the form a tuned model learns (terse, stops
    where the references stop) whether or not it learned their content."""
    if row.get("reference") is None or row.get("answer") is None:
        return None
    return abs(len(row["answer"].split()) - len(row["reference"].split()))


def _model_means(by: Rows, label: str) -> dict[str, float | int | None]:
    m: dict[str, float | int | None] = {}
    for metric in METRICS:
        vals = list(_values(by, label, metric).values())
        m[metric] = sum(vals) / len(vals) if vals else None
    m["stop_rate"] = m.pop("stopped")
    m["mc_acc"] = m.pop("correct")
    m["empty_answers"] = sum(1 for g in by.get((label, "generation"), {}).values() if not g["answer"])
    judged = list(by.get((label, "judge"), {}).values())
    if judged:
        m["judge_unparsed"] = sum(1 for j in judged if j.get("judge_correct") is None)
    for nll_key, ppl_key in (("ref_nll", "ref_ppl"), ("general_nll", "general_ppl"), ("domain_nll", "domain_ppl")):
        m[ppl_key] = math.exp(m[nll_key]) if m.get(nll_key) is not None else None
    return m


def _compare(by: Rows, base: str, other: str, cfg: EvalConfig, vocab: dict, skipped: list[dict]) -> list[dict]:
    """Paired comparisons of `other` against `base`, one per metric both have values for."""
    from domain_expert.evaluate.stats import compare_metric

    out = []
    for metric, (label, group, hib, kind) in METRICS.items():
        a, b = _values(by, base, metric), _values(by, other, metric)
        if metric in NLL_METRICS and vocab.get(base) != vocab.get(other):
            if a and b:
                skipped.append({"metric": metric, "model": other,
                                "reason": f"tokenizers of {base} and {other} differ: per-token NLL is not "
                                          "comparable"})  # fmt: skip
            continue
        ids = sorted(set(a) | set(b))
        if not ids or not a or not b:
            continue
        av = [a.get(i, float("nan")) for i in ids]
        bv = [b.get(i, float("nan")) for i in ids]
        res = compare_metric(metric, av, bv, higher_is_better=hib is not False, kind=kind, seed=cfg.seed,
                             n_resamples=cfg.bootstrap_resamples)  # fmt: skip
        res.update({"metric": metric, "label": label, "group": group, "a": base, "b": other})
        if hib is None:  # descriptive (answer length): CI and p-value, but neither direction is "better"
            res.update({"higher_is_better": None, "verdict": "n/a"})
        res["dropped"] = res.get("n_dropped", 0)
        out.append(res)
    return out


def _probe_breakdown(by: Rows, base: str, other: str, cfg: EvalConfig) -> list[dict]:
    """Uptake per side (held-in / held-out) and probe format, then per side and kind of fact: where a change comes
    from (a model may learn cloze completions before free answers)."""
    from domain_expert.evaluate.stats import compare_metric

    a_rows, b_rows = by.get((base, "probe"), {}), by.get((other, "probe"), {})
    out = []
    for field in ("format", "fact_kind"):
        for side in ("held_in", "held_out"):
            for value in sorted({r[field] for r in a_rows.values() if r["split"] == side}):
                ids = sorted(i for i, r in a_rows.items() if r["split"] == side and r[field] == value and i in b_rows)
                if not ids:
                    continue
                res = compare_metric(f"probe:{side}:{value}", [float(a_rows[i]["correct"]) for i in ids],
                                     [float(b_rows[i]["correct"]) for i in ids], higher_is_better=True, kind="binary",
                                     seed=cfg.seed, n_resamples=cfg.bootstrap_resamples)  # fmt: skip
                res.update({"metric": f"probe_{side}", "label": f"{side} {value}", "side": side, "by": field,
                            "value": value, "a": base, "b": other})  # fmt: skip
                out.append(res)
    return out


# what counts as evidence of each kind of learning: content = facts it was taught, in formats it never saw; style =
# the form of its answers (stops where references stop, references' length); generalises = facts it was never taught
CONTENT, STYLE, GENERAL = ("probe_held_in",), ("stopped", "length_gap"), ("probe_held_out",)


def learned(comparisons: list[dict], label: str) -> dict:
    """What "better" means for one tuned model: content learned, style learned, both, or neither detectably; from the
    verdicts of the comparisons above (computed, never typed in)."""
    verdicts = {c["metric"]: c["verdict"] for c in comparisons if c["b"] == label}

    def status(metrics: tuple[str, ...]) -> str | None:
        got = [verdicts[m] for m in metrics if m in verdicts]
        if not got:
            return None  # not measured (no probes, or no generation items)
        return "better" if "better" in got else "worse" if "worse" in got else "no detectable difference"

    content, style, general = status(CONTENT), status(STYLE), status(GENERAL)
    if content == "better" and style == "better":
        summary = "content and style"
    elif content == "better":
        summary = "content"
    elif style == "better":
        summary = "style only" if content is not None else "style (content not probed)"
    else:
        summary = "nothing detectable" if content is not None else "nothing detectable (content not probed)"
    return {"content": content, "style": style, "generalises": general, "summary": summary,
            "evidence": {"content": list(CONTENT), "style": list(STYLE), "generalises": list(GENERAL)}}  # fmt: skip

"""Evaluation report: rebuilds `<run>/report/` from the run folder's files alone (no model is loaded).

Inputs (see docs/evaluation-format.md):

- required: `eval/metrics.json` (the paired comparisons and their verdicts);
- read when present: `eval/items.jsonl` (per-item scores: per-item differences, most improved/regressed items,
  McNemar counts), `data/manifest.json`, `config.yaml`, `finetune/metrics.jsonl` (loss curves),
  `finetune/train_summary.json`, `finetune/stage.json`, `export/stage.json`, `run.json`. A missing optional input
  only makes its section say "not available".

Outputs, written to a staged sibling folder and swapped in with one rename (nothing is ever half-written):

- `report.html`: one self-contained page (inline CSS, plots as base64 PNG, no scripts, no external URLs);
- `report.md`: the same content in Markdown, with the plots as PNG files next to it (`loss.png`, `item_diffs.png`);
- `metrics.json`: a copy of `eval/metrics.json` plus a "report" key (created time, inputs' paths and sha256).

Every piece of model or data text is escaped (answers can contain '<' or Markdown syntax).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from domain_expert.errors import RunFolderError
from domain_expert.fsutil import staged_dir, write_json_atomic, write_text_atomic

REPORT_FILES = ("report.html", "report.md", "metrics.json")
LOSS_PNG = "loss.png"
ITEM_DIFFS_PNG = "item_diffs.png"
TOP_K = 5

METRIC_LABELS = {
    "rougeL": "ROUGE-L",
    "chrf": "chrF",
    "embed_sim": "Embedding similarity",
    "stop_rate": "Stop rate",
    "answer_tokens": "Answer tokens",
    "ref_nll": "Reference NLL",
    "mc_acc": "Multiple-choice accuracy",
    "general_nll": "General-text NLL",
    "domain_nll": "Domain-text NLL",
}
# evaluate.py names two metrics after the item field they average; docs/evaluation-format.md uses these names
METRIC_ALIASES = {"stopped": "stop_rate", "correct": "mc_acc"}
VERDICT_CLASS = {"better": "better", "worse": "worse", "no detectable difference": "nodiff"}
REQUIRED_TOP = ("models", "baseline", "comparisons")
REQUIRED_COMPARISON = ("metric", "base_mean", "tuned_mean", "diff", "verdict")  # CI and p-value may be absent
NUMERIC_COMPARISON = ("base_mean", "tuned_mean", "diff", "ci_low", "ci_high", "pvalue", "n", "dropped")
NUMERIC_ITEM = ("rougeL", "chrf", "embed_sim", "ref_nll", "answer_tokens", "nll", "tokens")
EVALUATE_FIX = "run `domain-expert evaluate RUN` first"


# --- reading inputs -------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    run_dir: Path
    metrics: dict
    items: list[dict] | None = None
    manifest: dict | None = None
    config_text: str | None = None
    config: dict | None = None
    ft_stage: dict | None = None
    export_stage: dict | None = None
    train_summary: dict | None = None
    run_json: dict | None = None
    loss_rows: list[dict] | None = None
    loss_skipped_lines: int = 0
    missing: dict[str, str] = field(default_factory=dict)  # relative path -> why it is not available
    read: dict[str, str] = field(default_factory=dict)  # relative path -> sha256 of the bytes read


def _rel(inp: Inputs, path: Path) -> str:
    return path.relative_to(inp.run_dir).as_posix()


def _read_bytes(inp: Inputs, path: Path) -> bytes | None:
    if not path.is_file():
        inp.missing[_rel(inp, path)] = "file not found"
        return None
    data = path.read_bytes()
    inp.read[_rel(inp, path)] = hashlib.sha256(data).hexdigest()
    return data


def _optional_json(inp: Inputs, rel: str) -> dict | None:
    data = _read_bytes(inp, inp.run_dir / rel)
    if data is None:
        return None
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        inp.missing[rel] = f"unreadable ({e})"
        return None
    if not isinstance(obj, dict):
        inp.missing[rel] = "not a JSON object"
        return None
    return obj


def _is_num(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _load_metrics(inp_run: Path) -> tuple[dict, bytes]:
    path = inp_run / "eval" / "metrics.json"
    where = str(path)
    if not path.is_file():
        raise RunFolderError(
            "no evaluation results (eval/metrics.json not found)", where=str(inp_run), fix=EVALUATE_FIX
        )
    data = path.read_bytes()
    if not data.strip():
        raise RunFolderError(
            "metrics file is empty (an interrupted evaluation?)",
            where=where,
            fix="run `domain-expert evaluate RUN` again",
        )
    try:
        m = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RunFolderError(f"metrics file is not UTF-8 text ({e})", where=where, fix=EVALUATE_FIX) from None
    except json.JSONDecodeError as e:
        raise RunFolderError(
            f"metrics file is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})",
            where=where,
            fix="the file is corrupted: run `domain-expert evaluate RUN` again",
        ) from None
    fix = "the file does not follow docs/evaluation-format.md: run `domain-expert evaluate RUN` again"
    if not isinstance(m, dict):
        raise RunFolderError(f"metrics file holds a JSON {type(m).__name__}, not an object", where=where, fix=fix)
    if m.get("stage", "evaluate") != "evaluate":
        raise RunFolderError(f"metrics file is from stage {m.get('stage')!r}, not 'evaluate'", where=where, fix=fix)
    absent = [k for k in REQUIRED_TOP if k not in m]
    if absent:
        raise RunFolderError(f"metrics file is missing required key(s): {', '.join(absent)}", where=where, fix=fix)
    models = m["models"]
    if not isinstance(models, list) or not all(isinstance(x, dict) and isinstance(x.get("label"), str) for x in models):
        raise RunFolderError('"models" must be a list of objects with a "label"', where=where, fix=fix)
    labels = [x["label"] for x in models]
    if m["baseline"] not in labels:
        raise RunFolderError(f'"baseline" {m["baseline"]!r} is not one of the models {labels}', where=where, fix=fix)
    comps = m["comparisons"]
    if not isinstance(comps, list) or not comps:
        raise RunFolderError('"comparisons" must be a non-empty list', where=where, fix=fix)
    for i, c in enumerate(comps):
        if not isinstance(c, dict):
            raise RunFolderError(f"comparisons[{i}] is not an object", where=where, fix=fix)
        absent = [k for k in REQUIRED_COMPARISON if k not in c]
        if absent:
            raise RunFolderError(f"comparisons[{i}] is missing key(s): {', '.join(absent)}", where=where, fix=fix)
        for k in NUMERIC_COMPARISON:
            if k in c and not _is_num(c[k]):
                raise RunFolderError(f"comparisons[{i}].{k} must be a number, got {c[k]!r}", where=where, fix=fix)
    for k in ("per_model", "n_items", "config", "timings", "versions"):
        if k in m and not isinstance(m[k], dict):
            raise RunFolderError(f'"{k}" must be an object, got {type(m[k]).__name__}', where=where, fix=fix)
    if "skipped" in m and not isinstance(m["skipped"], list):
        raise RunFolderError('"skipped" must be a list', where=where, fix=fix)
    return m, data


def _load_items(inp: Inputs) -> None:
    path = inp.run_dir / "eval" / "items.jsonl"
    data = _read_bytes(inp, path)
    if data is None:
        return
    fix = "the file is corrupted: run `domain-expert evaluate RUN` again"
    rows: dict[tuple, dict] = {}  # (model, kind, id) -> row; a resumed evaluation may re-append a row: last wins
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunFolderError(f"not valid JSON ({e.msg}, column {e.colno})", where=where, fix=fix) from None
        if not isinstance(row, dict):
            raise RunFolderError("a line must hold a JSON object", where=where, fix=fix)
        absent = [k for k in ("model", "kind", "id") if k not in row]
        if absent:
            raise RunFolderError(f"missing key(s): {', '.join(absent)}", where=where, fix=fix)
        for k in NUMERIC_ITEM:
            if k in row and not _is_num(row[k]):
                raise RunFolderError(f'"{k}" must be a number or null, got {row[k]!r}', where=where, fix=fix)
        for k in ("prompt", "reference", "answer", "question"):
            if k in row and row[k] is not None and not isinstance(row[k], str):
                raise RunFolderError(f'"{k}" must be text, got {type(row[k]).__name__}', where=where, fix=fix)
        rows[(str(row["model"]), str(row["kind"]), str(row["id"]))] = row
    inp.items = list(rows.values())


def _load_loss(inp: Inputs) -> None:
    data = _read_bytes(inp, inp.run_dir / "finetune" / "metrics.jsonl")
    if data is None:
        return
    rows = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            inp.loss_skipped_lines += 1  # e.g. the last line of a training run killed mid-write
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int | float):
            rows.append(row)
        else:
            inp.loss_skipped_lines += 1
    if any(not _bad(r.get(k)) for r in rows for k in ("train_loss", "val_loss")):
        inp.loss_rows = rows
    else:
        inp.missing["finetune/metrics.jsonl"] = "no loss values in it"


def load_inputs(run_dir: str | Path) -> Inputs:
    """Read and check every input; raises RunFolderError before anything is written."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RunFolderError("run folder not found", where=str(run), fix="pass the folder a `domain-expert run` made")
    metrics, raw = _load_metrics(run)
    inp = Inputs(run_dir=run.resolve(), metrics=metrics)
    inp.read["eval/metrics.json"] = hashlib.sha256(raw).hexdigest()
    _load_items(inp)
    inp.manifest = _optional_json(inp, "data/manifest.json")
    inp.ft_stage = _optional_json(inp, "finetune/stage.json")
    inp.export_stage = _optional_json(inp, "export/stage.json")
    inp.train_summary = _optional_json(inp, "finetune/train_summary.json")
    inp.run_json = _optional_json(inp, "run.json")
    cfg = _read_bytes(inp, inp.run_dir / "config.yaml")
    if cfg is not None:
        inp.config_text = cfg.decode("utf-8", errors="replace")
        try:
            import yaml

            parsed = yaml.safe_load(inp.config_text)
            inp.config = parsed if isinstance(parsed, dict) else None
        except Exception:  # shown as text anyway; only the seeds drawn from it go missing
            inp.config = None
    _load_loss(inp)
    return inp


# --- formatting -----------------------------------------------------------------------------------------------


def _bad(v: Any) -> bool:
    return v is None or isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) or math.isinf(v)


def fmt_num(v: Any, *, signed: bool = False) -> str:
    """Numbers in tables: 3 decimals (scientific below 0.001), '—' when missing."""
    if _bad(v):
        return "—"
    if isinstance(v, int) and not signed:
        return f"{v:,}"
    sign = "+" if signed else ""
    if v != 0 and abs(v) < 0.001:
        return f"{v:{sign}.2e}"
    if abs(v) >= 10000:
        return f"{v:{sign},.1f}"
    return f"{v:{sign}.3f}"


def _float(v: Any) -> Any:
    """Statistics are shown with decimals even when JSON wrote them as integers (e.g. a mean of 0)."""
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def fmt_p(p: Any) -> str:
    if _bad(p):
        return "—"
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def fmt_ci(lo: Any, hi: Any) -> str:
    if _bad(lo) or _bad(hi):
        return "—"
    return f"[{fmt_num(lo, signed=True)}, {fmt_num(hi, signed=True)}]"


def fmt_seconds(s: Any) -> str:
    if _bad(s):
        return "—"
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def fmt_pct(v: Any) -> str:
    return "—" if _bad(v) else f"{100 * v:.1f}%"


def canonical_metric(c: dict) -> str:
    return METRIC_ALIASES.get(str(c["metric"]), str(c["metric"]))


def metric_label(c: dict) -> str:
    return str(c.get("label") or METRIC_LABELS.get(canonical_metric(c), c["metric"]))


def verdict_class(v: Any) -> str:
    return VERDICT_CLASS.get(str(v), "na")


def _md(text: Any) -> str:
    """Escape model/data text for Markdown: HTML entities, Markdown syntax, one line (table-safe)."""
    s = "" if text is None else str(text)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = re.sub(r"([\\`*_\[\]|#~])", r"\\\1", s)
    return s.replace("\r\n", "\n").replace("\n", "<br>")


# --- derived data ---------------------------------------------------------------------------------------------


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
    return float("nan") if _bad(v) else float(v)


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


# --- plots ----------------------------------------------------------------------------------------------------

GOOD, BAD, NEUTRAL, INK, MUTED = "#1a7f37", "#cf222e", "#8c959f", "#1f2328", "#59636e"


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display, no global pyplot state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _style(ax) -> None:
    ax.grid(True, color="#e6e8eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#afb8c1")
    ax.tick_params(colors=MUTED, labelsize=9)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white", metadata={"Software": None})
    return buf.getvalue()


def _ema(values: list[float], weight: float = 0.8) -> list[float]:
    out, s = [], None
    for v in values:
        s = v if s is None else weight * s + (1 - weight) * v
        out.append(s)
    return out


def plot_loss(rows: list[dict]) -> bytes | None:
    train = [(r["step"], float(r["train_loss"])) for r in rows if not _bad(r.get("train_loss"))]
    val = sorted({r["step"]: float(r["val_loss"]) for r in rows if not _bad(r.get("val_loss"))}.items())
    if not train and not val:
        return None
    fig = _figure(9.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    _style(ax)
    if train:
        xs, ys = zip(*train, strict=True)
        ax.plot(xs, ys, color="#0969da", alpha=0.25, linewidth=1.0, label="train loss (per step)")
        ax.plot(xs, _ema(list(ys)), color="#0969da", linewidth=2.0, label="train loss (smoothed, EMA 0.8)")
    if val:
        xs, ys = zip(*val, strict=True)
        ax.plot(xs, ys, color="#bf3989", linewidth=1.5, linestyle="--", marker="o", markersize=5, label="val loss")
    ax.set_xlabel("optimizer step", color=MUTED, fontsize=10)
    ax.set_ylabel("loss (mean token NLL)", color=MUTED, fontsize=10)
    ax.legend(frameon=False, fontsize=9)
    return _png(fig)


def plot_item_diffs(panels: list[tuple[str, list[float], dict | None]]) -> bytes | None:
    """One panel per metric: per-item (tuned - base) differences sorted, with the mean and its 95% CI."""
    panels = [(t, d, c) for t, d, c in panels if d]
    if not panels:
        return None
    fig = _figure(9.0, 3.3 * len(panels))
    for k, (title, diffs, comp) in enumerate(panels, start=1):
        ax = fig.add_subplot(len(panels), 1, k)
        _style(ax)
        d = sorted(diffs)
        colors = [GOOD if x > 0 else BAD if x < 0 else NEUTRAL for x in d]
        ax.bar(range(1, len(d) + 1), d, width=0.8, color=colors, alpha=0.85)
        ax.axhline(0, color=INK, linewidth=0.8)
        mean = comp.get("diff") if comp else None
        mean = sum(d) / len(d) if _bad(mean) else mean
        lo, hi = (comp.get("ci_low"), comp.get("ci_high")) if comp else (None, None)
        text = f"mean {fmt_num(mean, signed=True)}"
        if not (_bad(lo) or _bad(hi)):
            ax.axhspan(lo, hi, color="#0969da", alpha=0.15, linewidth=0, label="95% CI of the mean")
            text += f", 95% CI {fmt_ci(lo, hi)}"
        ax.axhline(mean, color="#0969da", linewidth=1.6, label="mean difference")
        ax.set_title(f"{title}: tuned − base per item (n = {len(d)}; {text})", fontsize=10.5, color=INK, loc="left")
        ax.set_xlim(0.3, len(d) + 0.7)
        ax.set_ylabel("difference", color=MUTED, fontsize=10)
        ax.legend(frameon=False, fontsize=8.5, loc="upper left")
    fig.axes[-1].set_xlabel("items, sorted by difference", color=MUTED, fontsize=10)
    fig.tight_layout(h_pad=1.5)
    return _png(fig)


# --- the report model: everything both renderers need -----------------------------------------------------------


def _get(d: dict | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _build(inp: Inputs) -> dict:
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
                    "diff": fmt_num(_float(c.get("diff")), signed=True),
                    "ci": fmt_ci(_float(c.get("ci_low")), _float(c.get("ci_high"))),
                    "p": fmt_p(c.get("pvalue")),
                    "n": fmt_num(c.get("n")),
                    "a_mean": fmt_num(_float(c.get("base_mean"))),
                    "b_mean": fmt_num(_float(c.get("tuned_mean"))),
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
        (METRIC_LABELS[key], [x for x in (p.diff(key) for p in gen_pairs) if not math.isnan(x)], comp.get(key))
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
            ("throughput", "—" if _bad(ts.get("tokens_per_s")) else f"{ts['tokens_per_s']:,.1f} tokens/s"),
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
    size = f" ({total_params / 1e6:.0f}M parameters)" if not _bad(total_params) else ""
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
    if _bad(diff) or _bad(lo) or _bad(hi):
        return None
    scale = max(abs(lo), abs(hi), abs(diff)) or 1.0

    def pos(x: float) -> float:
        return round(50 + 46 * x / scale, 2)

    return {"lo": pos(lo), "width": round(max(pos(hi) - pos(lo), 0.8), 2), "mean": pos(diff)}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- HTML -----------------------------------------------------------------------------------------------------

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d8dee4; --soft:#f6f8fa; --page:#eef1f4;
  --good:#1a7f37; --good-bg:#dafbe1; --bad:#cf222e; --bad-bg:#ffebe9; --nd:#57606a; --nd-bg:#eaeef2;
  --accent:#0969da; }
* { box-sizing: border-box; }
body { margin:0; background:var(--page); color:var(--fg);
  font:15px/1.55 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Noto Sans",Ubuntu,"Helvetica Neue",Arial,
  "Liberation Sans","DejaVu Sans",sans-serif; }
main { max-width:1080px; margin:0 auto; padding:28px 22px 60px; }
header h1 { font-size:28px; margin:0 0 4px; letter-spacing:-0.01em; }
header .sub { color:var(--muted); margin:0; }
section { background:#fff; border:1px solid var(--line); border-radius:12px; padding:18px 24px 20px; margin:18px 0; }
h2 { font-size:20px; margin:0 0 10px; padding-bottom:6px; border-bottom:1px solid var(--line); }
h3 { font-size:16px; margin:18px 0 8px; }
p { margin:8px 0; }
.muted { color:var(--muted); }
.small { font-size:13px; }
nav.toc { display:flex; flex-wrap:wrap; gap:6px 14px; font-size:13.5px; margin:14px 0 0; }
nav.toc a { color:var(--accent); text-decoration:none; }
nav.toc a:hover { text-decoration:underline; }
.disclaimer { background:#fff8c5; border:1px solid #d4a72c; border-left:6px solid #bf8700; border-radius:10px;
  padding:12px 18px; margin:18px 0; font-size:15px; }
.disclaimer strong { font-size:16px; }
.headline { font-size:16.5px; margin:4px 0 12px; }
.vlist { list-style:none; padding:0; margin:0; }
.vlist li { display:grid; grid-template-columns:200px 180px 150px 1fr; gap:14px; align-items:center;
  padding:7px 0; border-bottom:1px dashed var(--line); }
.vlist .ci { color:#31363c; margin-left:6px; }
.cibar { position:relative; display:block; height:14px; }
.cibar::before { content:""; position:absolute; left:0; right:0; top:6px; height:2px; background:#eaeef2; }
.cibar .zero { position:absolute; left:50%; top:0; bottom:0; width:1px; background:#8c959f; }
.cibar .seg { position:absolute; top:5px; height:4px; border-radius:2px; opacity:0.55; }
.cibar .dot { position:absolute; top:3px; width:8px; height:8px; margin-left:-4px; border-radius:50%; }
.s-better { background:var(--good); } .s-worse { background:var(--bad); }
.s-nodiff { background:#6e7781; } .s-na { background:#afb8c1; }
.vlist li:last-child { border-bottom:0; }
.vlist .name { font-weight:600; }
.vlist .nums { font-variant-numeric:tabular-nums; }
.pill { display:inline-block; padding:1px 10px; border-radius:999px; font-weight:600; font-size:13px;
  white-space:nowrap; }
.v-better { background:var(--good-bg); color:var(--good); }
.v-worse { background:var(--bad-bg); color:var(--bad); }
.v-nodiff { background:var(--nd-bg); color:var(--nd); }
.v-na { background:#f6f8fa; color:#8c959f; border:1px solid var(--line); }
table { border-collapse:collapse; width:100%; font-size:14px; font-variant-numeric:tabular-nums; margin:6px 0; }
th, td { padding:6px 9px; border-bottom:1px solid var(--line); text-align:right; vertical-align:top; }
th { background:var(--soft); font-weight:600; color:#31363c; }
th:first-child, td:first-child { text-align:left; }
td.l, th.l { text-align:left; }
tr:last-child td { border-bottom:0; }
table.metrics th, table.metrics td { white-space:nowrap; }
table.metrics td:first-child { white-space:normal; }
table.metrics td { vertical-align:middle; }
table.kv td:first-child { color:var(--muted); width:36%; }
table.kv td { text-align:left; }
code, .hash { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12.5px; }
.hash { word-break:break-all; color:#424a53; }
img.plot { width:100%; height:auto; border:1px solid var(--line); border-radius:8px; margin:6px 0; }
details { margin:8px 0; }
details summary { cursor:pointer; color:var(--accent); }
pre { background:var(--soft); border:1px solid var(--line); border-radius:8px; padding:12px; overflow:auto;
  font-size:12.5px; line-height:1.45; }
.item { border:1px solid var(--line); border-radius:10px; padding:12px 14px; margin:12px 0; background:#fcfcfd; }
.item .q { font-weight:600; margin-bottom:4px; }
.item .ref { margin:4px 0 10px; }
.item .ref span { color:var(--muted); }
.sides { display:grid; grid-template-columns:1fr 1fr; gap:12px; }
.side { border-radius:8px; padding:8px 10px; background:#fff; border:1px solid var(--line); }
.side h4 { margin:0 0 4px; font-size:13px; color:var(--muted); font-weight:600; }
.answer { white-space:pre-wrap; word-wrap:break-word; margin:0 0 6px; }
.empty { color:var(--bad); font-style:italic; }
.scores { font-size:12.5px; color:var(--muted); font-variant-numeric:tabular-nums; }
.gain { float:right; }
.grid2 { display:grid; grid-template-columns:1fr 1fr; gap:18px; }
ul.lim li { margin:4px 0; }
footer { color:var(--muted); font-size:12.5px; text-align:center; margin-top:24px; }
.grid2 table.kv td:first-child { width:auto; }
@media (max-width:760px) { .sides, .grid2 { grid-template-columns:1fr; } .vlist li { grid-template-columns:1fr; } }
"""

HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{{ r.run_name }} — evaluation report</title>
<style>{{ css }}</style>
</head>
<body>
{% macro kv(rows, prefix="") %}<table class="kv"><tbody>
{% for k, v in rows %}<tr><td>{{ prefix }}{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}
</tbody></table>{% endmacro %}
{% macro two(a_value, b_value) %}<tr><td>{{ r.a }}</td><td>{{ a_value }}</td></tr>
<tr><td>{{ r.b }}</td><td>{{ b_value }}</td></tr>{% endmacro %}
<main>
<header>
  <h1>{{ r.run_name }}: is <em>{{ r.b }}</em> better than <em>{{ r.a }}</em>?</h1>
  <p class="sub">Evaluation report for run folder <code>{{ r.run_dir }}</code> · evaluated {{ r.eval_created }} ·
  report built {{ r.created }}</p>
  <nav class="toc">
    <a href="#verdict">Verdict</a><a href="#metrics">Metric table</a><a href="#items">Per-item differences</a>
    <a href="#examples">Examples</a><a href="#stops">Stopping</a><a href="#forgetting">Forgetting guard</a>
    <a href="#mc">Multiple choice</a><a href="#training">Training</a><a href="#manifest">Run manifest</a>
    <a href="#limitations">Limitations</a>
  </nav>
</header>

<div class="disclaimer" role="note"><strong>Not medical advice.</strong> The model is not a clinician: its answers
can be fluent and wrong. This report measures how close its answers are to reference definitions; it does not
check clinical correctness. Do not use these answers for diagnosis or treatment.</div>

<section id="verdict">
  <h2>Is the tuned model better? On what? How sure?</h2>
  {% for pair in r.pairs %}
  {% if r.pairs|length > 1 %}<h3>{{ pair.b }} vs {{ pair.a }}</h3>{% endif %}
  {% if loop.first %}
  <p class="headline">{% for word, names in r.headline %}<span class="pill v-{{ vc(word) }}">{{ word }}</span>
    on {{ names|join(", ") }}{% if not loop.last %}; {% endif %}{% endfor %}.</p>
  {% endif %}
  <ul class="vlist">
  {% for l in pair.lines %}
    <li><span class="name">{{ l.label }}</span>
      <span><span class="pill v-{{ l.cls }}">{{ l.verdict }}</span></span>
      {% if l.bar %}<span class="cibar" title="mean difference and its 95% CI; the tick is 0"><span
        class="zero"></span><span class="seg s-{{ l.cls }}"
        style="left:{{ l.bar.lo }}%;width:{{ l.bar.width }}%"></span><span class="dot s-{{ l.cls }}"
        style="left:{{ l.bar.mean }}%"></span></span>{% else %}<span></span>{% endif %}
      <span class="nums"><strong>{{ l.diff }}</strong> <span class="ci">95% CI {{ l.ci }}</span><br>
        <span class="muted small">{{ pair.a }} {{ l.a_mean }} → {{ pair.b }} {{ l.b_mean }} · p = {{ l.p }} ·
        n = {{ l.n }} · {{ l.direction }}</span></span></li>
  {% endfor %}
  </ul>
  {% endfor %}
  <p class="muted small">Each line is the mean per-item difference ({{ r.b }} − {{ r.a }}) over the same held-out
  items, with a 95% paired-bootstrap confidence interval. A verdict of <em>better</em> or <em>worse</em> needs both
  the interval to exclude 0 and the paired test (Wilcoxon signed-rank, or exact McNemar for yes/no outcomes) to give
  p &lt; 0.05; otherwise it is <em>no detectable difference</em>. For NLL and perplexity, lower is better.</p>
</section>

<section id="metrics">
  <h2>Metric table</h2>
  {% for pair in r.pairs %}
  {% if r.pairs|length > 1 %}<h3>{{ pair.b }} vs {{ pair.a }}</h3>{% endif %}
  <table class="metrics">
    <thead><tr><th>metric</th><th>{{ pair.a }} mean</th><th>{{ pair.b }} mean</th><th>diff</th><th>95% CI</th>
      <th>p-value</th><th class="l">test</th><th>n</th><th class="l">verdict</th></tr></thead>
    <tbody>
    {% for l in pair.lines %}
      <tr><td>{{ l.label }}</td><td>{{ l.a_mean }}</td><td>{{ l.b_mean }}</td><td>{{ l.diff }}</td>
        <td>{{ l.ci }}</td><td>{{ l.p }}</td><td class="l">{{ l.test }}</td><td>{{ l.n }}</td>
        <td class="l"><span class="pill v-{{ l.cls }}">{{ l.verdict }}</span></td></tr>
    {% endfor %}
    </tbody>
  </table>
  {% endfor %}
  {% if r.n_items %}<p class="muted small">Items evaluated:
  {% for k, v in r.n_items %}{{ k }} {{ v }}{% if not loop.last %}, {% endif %}{% endfor %}.
  diff = {{ r.b }} − {{ r.a }}; items where a score is missing for either model are dropped pairwise.</p>{% endif %}
</section>

<section id="items">
  <h2>Per-item differences</h2>
  {% if imgs.item_diffs %}
  <p>Every bar is one held-out question: its score under {{ r.b }} minus its score under {{ r.a }}, sorted.
  Green bars are items {{ r.b }} answered closer to the reference, red bars items it answered worse. The blue
  line is the mean difference and the band its 95% confidence interval.</p>
  <img class="plot" alt="Per-item differences ({{ r.b }} minus {{ r.a }}) for ROUGE-L and embedding similarity"
    src="data:image/png;base64,{{ imgs.item_diffs }}">
  {% else %}<p class="muted">Per-item scores {{ r.na["items"] }}.</p>{% endif %}
</section>

<section id="examples">
  <h2>Most improved and most regressed answers (by ROUGE-L)</h2>
  {% if r.n_gen_pairs %}
  {% for title, group, empty, cls in [("Most improved", r.improved, "No item improved.", "better"),
                                      ("Most regressed", r.regressed, "No item regressed.", "worse")] %}
  <h3>{{ title }}</h3>
  {% for it in group %}
  <div class="item">
    <div class="q">{{ it.question }} <span class="muted small">· item {{ it.id }}</span>
      <span class="gain pill v-{{ cls }}">ROUGE-L {{ it.diff }}</span></div>
    <div class="ref"><span>Reference:</span> {{ it.reference }}</div>
    <div class="sides">
      {% for who, s in [(r.a, it.a), (r.b, it.b)] %}
      <div class="side"><h4>{{ who }}</h4>
        {% if s.empty %}<p class="answer empty">(empty answer)</p>
        {% else %}<p class="answer">{{ s.answer }}</p>{% endif %}
        <div class="scores">ROUGE-L {{ s.rougeL }} · embedding {{ s.embed_sim }} · chrF {{ s.chrf }} ·
          {{ s.tokens }} tokens · stopped: {{ s.stopped }}</div></div>
      {% endfor %}
    </div>
  </div>
  {% else %}<p class="muted">{{ empty }}</p>{% endfor %}
  {% endfor %}
  {% else %}<p class="muted">Generation items {{ r.na["items"] }}.</p>{% endif %}
</section>

<section id="stops">
  <h2>Stopping and empty answers</h2>
  <p>A model that does not stop rambles until the token limit; an empty answer scores 0 on every metric.</p>
  <table>
    <thead><tr><th>model</th><th>stop rate (ended by itself)</th><th>empty answers</th><th>mean answer tokens</th>
      <th>items</th></tr></thead>
    <tbody>{% for s in r.stop_rows %}<tr><td>{{ s.model }}</td><td>{{ s.stop_rate }}</td><td>{{ s.empty }}</td>
      <td>{{ s.tokens }}</td><td>{{ s.n }}</td></tr>{% endfor %}</tbody>
  </table>
  {% if r.stop_comp %}<p class="small">Stop rate:
    <span class="pill v-{{ vc(r.stop_comp.verdict) }}">{{ r.stop_comp.verdict }}</span>
    diff {{ fnum(r.stop_comp['diff'], signed=True) }}, 95% CI {{ fci(r.stop_comp.ci_low, r.stop_comp.ci_high) }},
    p = {{ fp(r.stop_comp.get('pvalue')) }} ({{ r.stop_comp.get('test') or "—" }}).</p>{% endif %}
</section>

<section id="forgetting">
  <h2>Forgetting guard: general English text</h2>
  {% if r.forget %}
  <p>Perplexity on general English text the models were not trained on. If fine-tuning damaged the model's general
  language ability, {{ r.b }}'s perplexity rises.</p>
  <table>
    <thead><tr><th>model</th><th>general-text perplexity</th></tr></thead>
    <tbody>{{ two(r.forget.a_ppl, r.forget.b_ppl) }}</tbody>
  </table>
  <p><span class="pill v-{{ r.forget.cls }}">{{ r.forget.verdict }}</span> {{ r.forget.meaning }}
  {% if r.forget.comp %}{% set c = r.forget.comp %}<span class="muted small">Mean token NLL difference
  {{ fnum(c['diff'], signed=True) }} (95% CI {{ fci(c.ci_low, c.ci_high) }}, p = {{ fp(c.get('pvalue')) }},
  n = {{ r.forget.n }} chunks; lower is better).</span>{% endif %}</p>
  {% else %}<p class="muted">Not available: the evaluation has no general-text comparison.</p>{% endif %}
</section>

<section id="mc">
  <h2>Multiple-choice term recognition</h2>
  {% if r.mc %}
  <p>Pick the right term for a definition{% if r.mc.choices %} among {{ r.mc.choices }} options{% endif %}, scored
  by the log-likelihood of each option (chance level {{ r.mc.chance }}).</p>
  <div class="grid2">
    <table>
      <thead><tr><th>model</th><th>accuracy</th></tr></thead>
      <tbody>{{ two(r.mc.a_acc, r.mc.b_acc) }}</tbody>
    </table>
    {% if r.mc.counts %}
    <table>
      <thead><tr><th>McNemar counts</th><th>{{ r.b }} right</th><th>{{ r.b }} wrong</th></tr></thead>
      <tbody><tr><td>{{ r.a }} right</td><td>{{ r.mc.counts.both }}</td><td>{{ r.mc.counts.a_only }}</td></tr>
        <tr><td>{{ r.a }} wrong</td><td>{{ r.mc.counts.b_only }}</td><td>{{ r.mc.counts.neither }}</td></tr></tbody>
    </table>
    {% endif %}
  </div>
  <p>{% if r.mc.comp %}<span class="pill v-{{ vc(r.mc.comp.verdict) }}">{{ r.mc.comp.verdict }}</span>
  diff {{ fnum(r.mc.comp['diff'], signed=True) }} (95% CI {{ fci(r.mc.comp.ci_low, r.mc.comp.ci_high) }}),
  exact McNemar p = {{ fp(r.mc.comp.get('pvalue')) }}. {% endif %}
  {% if r.mc.b01 is not none %}Discordant pairs: {{ r.mc.b01 }} items only {{ r.b }} got right,
  {{ r.mc.b10 }} only {{ r.a }} got right; the test uses these alone.{% endif %}</p>
  {% else %}<p class="muted">Not available: the evaluation has no multiple-choice items.</p>{% endif %}
</section>

<section id="training">
  <h2>Training</h2>
  {% if imgs.loss %}
  <img class="plot" alt="Training and validation loss" src="data:image/png;base64,{{ imgs.loss }}">
  {% if r.loss_skipped %}<p class="muted small">{{ r.loss_skipped }} unreadable line(s) of finetune/metrics.jsonl
    skipped.</p>{% endif %}
  {% else %}<p class="muted">Loss curves {{ r.na.loss }}.</p>{% endif %}
  {% if r.training %}
  {{ kv(r.training) }}
  {% else %}<p class="muted">Training summary {{ r.na.training }}.</p>{% endif %}
  {% if r.fidelity %}{% set f = r.fidelity %}<p class="small muted">Export fidelity: max |logit diff|
    {{ fnum(f.get('max_abs_logit_diff')) }} (tolerance {{ fnum(f.get('tolerance')) }}), argmax agreement
    {{ fpct(f.get('argmax_agreement')) }}.</p>{% endif %}
</section>

<section id="manifest">
  <h2>Run manifest</h2>
  <h3>Base model</h3>
  {% if r.base_model %}
  <table class="kv"><tbody>
    <tr><td>reference</td><td>{{ r.base_model.get('reference') or "—" }}</td></tr>
    <tr><td>origin</td><td>{{ r.base_model.get('origin') or "—" }}</td></tr>
    <tr><td>licence</td><td>{{ r.base_model.get('license') or "not stated" }}</td></tr>
  </tbody></table>
  {% else %}<p class="muted">{{ r.na.base_model }}.</p>{% endif %}
  <h3>Models evaluated</h3>
  <table><thead><tr><th>label</th><th class="l">spec</th><th class="l">kind</th></tr></thead>
    <tbody>{% for l, s, k in r.models %}<tr><td>{{ l }}</td><td class="l"><code>{{ s }}</code></td>
      <td class="l">{{ k }}</td></tr>{% endfor %}</tbody></table>
  <h3>Data</h3>
  {% if r.sources %}
  {% for s in r.sources %}
  <table class="kv"><tbody>
    <tr><td>source</td><td>{{ s.name }}</td></tr>
    {% if s.scope %}<tr><td>scope</td><td>{{ s.scope }}</td></tr>{% endif %}
    <tr><td>licence</td><td>{{ s.license }}</td></tr>
    <tr><td>records</td><td>{{ s.records }}</td></tr>
    {% for p, h in s.inputs %}<tr><td>input <code>{{ p }}</code></td><td class="hash">sha256 {{ h }}</td></tr>
    {% endfor %}
  </tbody></table>
  {% endfor %}
  {% if r.outputs %}
  <table><thead><tr><th>split file</th><th>records</th><th>groups</th><th class="l">sha256</th></tr></thead>
    <tbody>{% for n, rec, g, h in r.outputs %}<tr><td>{{ n }}</td><td>{{ rec }}</td><td>{{ g }}</td>
      <td class="l hash">{{ h }}</td></tr>{% endfor %}</tbody></table>
  {% endif %}
  {% if r.split %}<p class="small muted">Split unit: {{ r.split.get('unit') or "—" }}.</p>{% endif %}
  {% if r.manifest_note %}<p class="small muted">{{ r.manifest_note }}</p>{% endif %}
  {% else %}<p class="muted">Data manifest {{ r.na.manifest }}.</p>{% endif %}
  <h3>Configuration</h3>
  {% if r.config_text is not none %}
  <details><summary>config.yaml</summary><pre>{{ r.config_text }}</pre></details>
  {% else %}<p class="muted">Config {{ r.na.config }}.</p>{% endif %}
  {% if r.eval_config %}{{ kv(r.eval_config, "evaluate: ") }}{% endif %}
  <div class="grid2">
    <div><h3>Seeds</h3>
      {% if r.seeds %}{{ kv(r.seeds) }}
      {% else %}<p class="muted">not available</p>{% endif %}</div>
    <div><h3>Timings</h3>
      {% if r.timings %}{{ kv(r.timings) }}
      {% else %}<p class="muted">{{ r.na.timings }}</p>{% endif %}</div>
  </div>
  <h3>Package versions</h3>
  {% if r.versions %}
  <table><thead><tr><th>package</th><th class="l">at prepare</th><th class="l">at evaluate</th></tr></thead>
    <tbody>{% for k, p, e in r.versions %}<tr><td>{{ k }}</td><td class="l">{{ p }}</td><td class="l">{{ e }}</td>
      </tr>{% endfor %}</tbody></table>
  {% else %}<p class="muted">not available</p>{% endif %}
  <details><summary>Input files and their sha256</summary>
    <table><tbody>{% for p, h in r.inputs %}<tr><td><code>{{ p }}</code></td><td class="l hash">{{ h }}</td></tr>
    {% endfor %}</tbody></table>
  </details>
</section>

<section id="limitations">
  <h2>Limitations</h2>
  <ul class="lim">{% for l in r.limitations %}<li>{{ l }}</li>{% endfor %}</ul>
  <h3>Skipped metrics</h3>
  {% if r.skipped %}
  <table><thead><tr><th>metric</th><th class="l">model</th><th class="l">reason</th></tr></thead>
    <tbody>{% for s in r.skipped %}<tr><td>{{ s.metric }}</td><td class="l">{{ s.model }}</td>
      <td class="l">{{ s.reason }}</td></tr>{% endfor %}</tbody></table>
  {% else %}<p class="muted">None: every metric was computed.</p>{% endif %}
</section>

<footer>Built by <code>domain-expert report</code> from the run folder's files alone. Not medical advice.</footer>
</main>
</body>
</html>
"""


def render_html(r: dict, images: dict[str, bytes | None]) -> str:
    import jinja2
    import markupsafe

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(vc=verdict_class, fnum=fmt_num, fp=fmt_p, fci=fmt_ci, fpct=fmt_pct)
    imgs = {k: base64.b64encode(v).decode("ascii") if v else None for k, v in images.items()}
    # Markup: the style sheet is ours, and autoescaping would turn its quotes into entities, which <style> keeps
    return env.from_string(HTML_TEMPLATE).render(r=r, css=markupsafe.Markup(CSS), imgs=imgs)


# --- Markdown -------------------------------------------------------------------------------------------------


class _Raw(str):
    """Markdown that is already escaped: _table passes it through."""


def _table(head: list[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    def cell(c: Any) -> str:
        return c if isinstance(c, _Raw) else _md(c)

    out = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def render_md(r: dict, images: dict[str, bytes | None]) -> str:
    a, b = _md(r["a"]), _md(r["b"])
    L: list[str] = [
        f"# {_md(r['run_name'])}: is {b} better than {a}?",
        "",
        f"Evaluation report for run folder `{r['run_dir']}` · evaluated {_md(r['eval_created'])} · "
        f"report built {r['created']}",
        "",
        "> **Not medical advice.** The model is not a clinician: its answers can be fluent and wrong. This report "
        "measures how close its answers are to reference definitions; it does not check clinical correctness. "
        "Do not use these answers for diagnosis or treatment.",
        "",
        "## Is the tuned model better? On what? How sure?",
        "",
    ]
    for k, pair in enumerate(r["pairs"]):
        if len(r["pairs"]) > 1:
            L += [f"### {_md(pair['b'])} vs {_md(pair['a'])}", ""]
        if k == 0 and r["headline"]:
            L += ["; ".join(f"**{w}** on {_md(', '.join(n))}" for w, n in r["headline"]) + ".", ""]
        for ln in pair["lines"]:
            L.append(
                f"- **{_md(ln['label'])}**: **{ln['verdict']}** — {ln['diff']} (95% CI {ln['ci']}), p = {ln['p']}, "
                f"n = {ln['n']} · {_md(pair['a'])} {ln['a_mean']} → {_md(pair['b'])} {ln['b_mean']} "
                f"({ln['direction']})"
            )
        L.append("")
    L += [
        f"Each line is the mean per-item difference ({b} − {a}) over the same held-out items, with a 95% "
        "paired-bootstrap confidence interval. *better*/*worse* needs both the interval to exclude 0 and the paired "
        "test (Wilcoxon signed-rank, or exact McNemar for yes/no outcomes) to give p < 0.05; otherwise it is "
        "*no detectable difference*. For NLL and perplexity, lower is better.",
        "",
        "## Metric table",
        "",
    ]
    for pair in r["pairs"]:
        if len(r["pairs"]) > 1:
            L += [f"### {_md(pair['b'])} vs {_md(pair['a'])}", ""]
        L += _table(
            ["metric", f"{pair['a']} mean", f"{pair['b']} mean", "diff", "95% CI", "p-value", "test", "n", "verdict"],
            [
                [
                    x["label"],
                    x["a_mean"],
                    x["b_mean"],
                    x["diff"],
                    _Raw(x["ci"]),
                    x["p"],
                    x["test"],
                    x["n"],
                    x["verdict"],
                ]
                for x in pair["lines"]
            ],
        )
    if r["n_items"]:
        L += ["Items evaluated: " + ", ".join(f"{_md(k)} {v}" for k, v in r["n_items"]) + ".", ""]

    L += ["## Per-item differences", ""]
    if images.get("item_diffs"):
        L += [
            f"Each bar is one held-out question: its score under {b} minus under {a}, sorted; the line is the mean "
            "difference and the band its 95% confidence interval.",
            "",
            f"![Per-item differences]({ITEM_DIFFS_PNG})",
            "",
        ]
    else:
        L += [f"Per-item scores {_md(r['na']['items'])}.", ""]

    L += ["## Most improved and most regressed answers (by ROUGE-L)", ""]
    if r["n_gen_pairs"]:
        for title, group, empty in (
            ("Most improved", r["improved"], "No item improved."),
            ("Most regressed", r["regressed"], "No item regressed."),
        ):
            L += [f"### {title}", ""]
            if not group:
                L += [empty, ""]
            for it in group:
                L += [
                    f"#### {_md(it['question'])} (ROUGE-L {it['diff']})",
                    "",
                    f"Reference: {_md(it['reference'])}",
                    "",
                ]

                def cell(s: dict) -> _Raw:
                    return _Raw("*(empty answer)*" if s["empty"] else _md(s["answer"]))

                L += _table(
                    ["", r["a"], r["b"]],
                    [
                        ["answer", cell(it["a"]), cell(it["b"])],
                        ["ROUGE-L", it["a"]["rougeL"], it["b"]["rougeL"]],
                        ["embedding similarity", it["a"]["embed_sim"], it["b"]["embed_sim"]],
                        ["chrF", it["a"]["chrf"], it["b"]["chrf"]],
                        ["answer tokens", it["a"]["tokens"], it["b"]["tokens"]],
                        ["stopped", it["a"]["stopped"], it["b"]["stopped"]],
                    ],
                )
    else:
        L += [f"Generation items {_md(r['na']['items'])}.", ""]

    L += ["## Stopping and empty answers", ""]
    L += _table(
        ["model", "stop rate (ended by itself)", "empty answers", "mean answer tokens", "items"],
        [[s["model"], s["stop_rate"], s["empty"], s["tokens"], s["n"]] for s in r["stop_rows"]],
    )
    sc = r["stop_comp"]
    if sc:
        L += [
            f"Stop rate: **{sc.get('verdict')}**, diff {fmt_num(sc.get('diff'), signed=True)}, 95% CI "
            f"{fmt_ci(sc.get('ci_low'), sc.get('ci_high'))}, p = {fmt_p(sc.get('pvalue'))} "
            f"({sc.get('test') or '—'}).",
            "",
        ]

    L += ["## Forgetting guard: general English text", ""]
    f = r["forget"]
    if f:
        L += _table(["model", "general-text perplexity"], [[r["a"], f["a_ppl"]], [r["b"], f["b_ppl"]]])
        line = f"**{f['verdict']}**: {_md(f['meaning'])}"
        if f["comp"]:
            c = f["comp"]
            line += (
                f" Mean token NLL difference {fmt_num(c.get('diff'), signed=True)} (95% CI "
                f"{fmt_ci(c.get('ci_low'), c.get('ci_high'))}, p = {fmt_p(c.get('pvalue'))}, n = {f['n']} chunks; "
                "lower is better)."
            )
        L += [line, ""]
    else:
        L += ["Not available: the evaluation has no general-text comparison.", ""]

    L += ["## Multiple-choice term recognition", ""]
    mc = r["mc"]
    if mc:
        L += [f"Scored by log-likelihood; chance level {mc['chance']}.", ""]
        L += _table(["model", "accuracy"], [[r["a"], mc["a_acc"]], [r["b"], mc["b_acc"]]])
        if mc["counts"]:
            k = mc["counts"]
            L += _table(
                ["McNemar counts", f"{r['b']} right", f"{r['b']} wrong"],
                [[f"{r['a']} right", k["both"], k["a_only"]], [f"{r['a']} wrong", k["b_only"], k["neither"]]],
            )
        c = mc["comp"]
        if c:
            L += [
                f"**{c.get('verdict')}**: diff {fmt_num(c.get('diff'), signed=True)} (95% CI "
                f"{fmt_ci(c.get('ci_low'), c.get('ci_high'))}), exact McNemar p = {fmt_p(c.get('pvalue'))}.",
                "",
            ]
        if mc["b01"] is not None:
            L += [f"Discordant pairs: {mc['b01']} only {b} got right, {mc['b10']} only {a} got right.", ""]
    else:
        L += ["Not available: the evaluation has no multiple-choice items.", ""]

    L += ["## Training", ""]
    if images.get("loss"):
        L += [f"![Training and validation loss]({LOSS_PNG})", ""]
        if r["loss_skipped"]:
            L += [f"{r['loss_skipped']} unreadable line(s) of finetune/metrics.jsonl skipped.", ""]
    else:
        L += [f"Loss curves {_md(r['na']['loss'])}.", ""]
    if r["training"]:
        L += _table(["", ""], r["training"])
    else:
        L += [f"Training summary {_md(r['na']['training'])}.", ""]
    fid = r["fidelity"]
    if fid:
        L += [
            f"Export fidelity: max |logit diff| {fmt_num(fid.get('max_abs_logit_diff'))} (tolerance "
            f"{fmt_num(fid.get('tolerance'))}), argmax agreement {fmt_pct(fid.get('argmax_agreement'))}.",
            "",
        ]

    L += ["## Run manifest", "", "### Base model", ""]
    bm = r["base_model"]
    if bm:
        L += _table(
            ["", ""],
            [
                ["reference", bm.get("reference") or "—"],
                ["origin", bm.get("origin") or "—"],
                ["licence", bm.get("license") or "not stated"],
            ],
        )
    else:
        L += [_md(r["na"]["base_model"]).capitalize() + ".", ""]
    L += ["### Models evaluated", ""] + _table(["label", "spec", "kind"], r["models"])
    L += ["### Data", ""]
    if r["sources"]:
        for s in r["sources"]:
            rows = [["source", s["name"]]]
            if s["scope"]:
                rows.append(["scope", s["scope"]])
            rows += [["licence", s["license"]], ["records", s["records"]]]
            rows += [[f"input {p}", f"sha256 {h}"] for p, h in s["inputs"]]
            L += _table(["", ""], rows)
        if r["outputs"]:
            L += _table(["split file", "records", "groups", "sha256"], r["outputs"])
        if r["manifest_note"]:
            L += [_md(r["manifest_note"]), ""]
    else:
        L += [f"Data manifest {_md(r['na']['manifest'])}.", ""]
    L += ["### Configuration", ""]
    if r["config_text"] is not None:
        fence = "````" if "```" in r["config_text"] else "```"
        L += ["<details><summary>config.yaml</summary>", "", f"{fence}yaml", r["config_text"].rstrip("\n"), fence, ""]
        L += ["</details>", ""]
    else:
        L += [f"Config {_md(r['na']['config'])}.", ""]
    if r["eval_config"]:
        L += _table(["evaluate setting", "value"], r["eval_config"])
    L += ["### Seeds", ""] + (_table(["seed", "value"], r["seeds"]) if r["seeds"] else ["not available", ""])
    L += ["### Timings", ""] + (_table(["", "time"], r["timings"]) if r["timings"] else [r["na"]["timings"], ""])
    L += ["### Package versions", ""]
    L += _table(["package", "prepare", "evaluate"], r["versions"]) if r["versions"] else ["not available", ""]
    L += ["### Input files", ""] + _table(["file", "sha256"], r["inputs"])

    L += ["## Limitations", ""] + [f"- {_md(x)}" for x in r["limitations"]] + ["", "### Skipped metrics", ""]
    if r["skipped"]:
        L += _table(["metric", "model", "reason"], [[s["metric"], s["model"], s["reason"]] for s in r["skipped"]])
    else:
        L += ["None: every metric was computed.", ""]
    L += ["---", "", "Built by `domain-expert report` from the run folder's files alone. Not medical advice.", ""]
    return "\n".join(L)


# --- entry point ----------------------------------------------------------------------------------------------


def _check_out_dir(out: Path, run: Path) -> None:
    """Refuse an output folder that holds anything but a previous report: rebuilding replaces it wholesale."""
    o, r = out.resolve(), run.resolve()
    if o == r or o in r.parents:
        raise RunFolderError(
            "the report folder would replace the run folder", where=str(out), fix="choose a folder inside or beside it"
        )
    if o.exists():
        if not o.is_dir():
            raise RunFolderError("report output path is a file", where=str(out), fix="choose a folder")
        foreign = [p.name for p in o.iterdir() if p.name not in REPORT_FILES and p.suffix != ".png"]
        if foreign:
            raise RunFolderError(
                f"output folder holds files that are not a report ({', '.join(sorted(foreign)[:5])})",
                where=str(out),
                fix="choose an empty folder or a previous report folder",
            )


def run(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Build `<out_dir>` (default `<run>/report/`) from the run folder's files; returns the report folder.

    Every input is read and checked before anything is written, and the folder is swapped in with one rename:
    a failed build leaves any previous report untouched and no partial folder behind.
    """
    inp = load_inputs(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    _check_out_dir(out, Path(run_dir))
    r = _build(inp)
    images = {
        "loss": plot_loss(inp.loss_rows) if inp.loss_rows else None,
        "item_diffs": plot_item_diffs(r.pop("panels")),
    }
    pngs = {LOSS_PNG: images["loss"], ITEM_DIFFS_PNG: images["item_diffs"]}
    html = render_html(r, images)
    md = render_md(r, images)
    metrics = dict(inp.metrics)
    metrics["report"] = {
        "created": r["created"],
        "run_dir": str(inp.run_dir),
        "inputs": [{"path": p, "sha256": h} for p, h in sorted(inp.read.items())],
        "outputs": [*REPORT_FILES, *(name for name, png in pngs.items() if png)],
    }
    with staged_dir(out, overwrite=True) as tmp:
        write_text_atomic(tmp / "report.html", html)
        write_text_atomic(tmp / "report.md", md)
        write_json_atomic(tmp / "metrics.json", metrics)
        for name, png in pngs.items():
            if png:
                (tmp / name).write_bytes(png)
    return out

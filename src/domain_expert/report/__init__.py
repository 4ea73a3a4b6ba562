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

Modules: inputs.py (reading and checking the run folder), build.py (the view model both renderers share; its
per-item pairing in pairing.py, its provenance sections in provenance.py), formatting.py (numbers, labels, verdicts),
plots.py (matplotlib figures), html.py (templates/report.html.j2 and templates/report.css), markdown.py
(templates/report.md.j2). The renderers only lay out the view model: what a section shows is decided once, in build.py.

No model is loaded and nothing here imports torch, transformers or domain_expert.models: a report builds from files.
"""

from __future__ import annotations

from pathlib import Path

from domain_expert.errors import RunFolderError
from domain_expert.fsutil import staged_dir, write_json_atomic, write_text_atomic
from domain_expert.report.build import build
from domain_expert.report.html import render_html
from domain_expert.report.inputs import load_inputs
from domain_expert.report.markdown import render_md
from domain_expert.report.plots import ITEM_DIFFS_PNG, LOSS_PNG, plot_item_diffs, plot_loss

__all__ = ["REPORT_FILES", "load_inputs", "run"]

REPORT_FILES = ("report.html", "report.md", "metrics.json")


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
    r = build(inp)
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

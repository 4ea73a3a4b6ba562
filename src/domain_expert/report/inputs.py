"""Reading and checking the run folder: every input is read (and hashed) before anything is written.

`eval/metrics.json` is required and checked against docs/evaluation-format.md; `eval/items.jsonl` is checked line by
line; the other inputs are optional, and one that is absent or unreadable is recorded in `Inputs.missing` so that
its section says why it is "not available".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain_expert.errors import RunFolderError
from domain_expert.report.formatting import bad

REQUIRED_TOP = ("models", "baseline", "comparisons")
REQUIRED_COMPARISON = ("metric", "base_mean", "tuned_mean", "diff", "verdict")  # CI and p-value may be absent
NUMERIC_COMPARISON = ("base_mean", "tuned_mean", "diff", "ci_low", "ci_high", "pvalue", "n", "dropped")
NUMERIC_ITEM = ("rougeL", "chrf", "embed_sim", "ref_nll", "answer_tokens", "nll", "tokens")
EVALUATE_FIX = "run `domain-expert evaluate RUN` first"


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


def dig(d: Any, *keys: str) -> Any:
    """d[k1][k2]..., or None where a level is missing or not an object (optional inputs can hold anything)."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


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
    _check_metrics(m, where)
    return m, data


def _check_metrics(m: Any, where: str) -> None:
    """The shape docs/evaluation-format.md promises, checked up front so the builder can rely on it."""
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
    if any(not bad(r.get(k)) for r in rows for k in ("train_loss", "val_loss")):
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

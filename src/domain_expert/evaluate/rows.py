"""`eval/items.jsonl`: one row per (model, kind, item), appended as results come, so an interrupted evaluation
resumes where it stopped; `state.json` holds the settings the rows were made with, so results are never mixed."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from domain_expert.errors import DataError, RunFolderError
from domain_expert.fsutil import read_json, write_json_atomic


def prepare_out(out: Path, state: dict, overwrite: bool) -> None:
    """Start a fresh evaluation folder, or resume one made with the same `state` (settings, models, test split)."""
    if overwrite and out.exists():
        shutil.rmtree(out)
    state_path = out / "state.json"
    if state_path.exists():
        old = read_json(state_path)
        if old != json.loads(json.dumps(state)):
            raise RunFolderError(
                "an earlier evaluation with other settings or models is here; results cannot be mixed",
                where=str(out),
                fix="pass --overwrite to start again, or --out for a separate evaluation",
            )
        return  # same settings: resume
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    write_json_atomic(state_path, state)


def done_keys(path: Path) -> set[tuple[str, str, str]]:
    return {(r["model"], r["kind"], r["id"]) for r in read_rows(path)} if path.exists() else set()


def read_rows(path: Path) -> list[dict]:
    rows = []
    if not path.exists():
        return rows
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # a kill mid-write leaves at most a torn last line: it is redone on resume
                continue
            raise DataError("corrupted evaluation row", where=f"{path}:{n}",
                            fix="delete the eval folder or pass --overwrite") from None  # fmt: skip
    return rows


def drop_torn_tail(path: Path) -> None:
    """Before appending on resume, cut a torn last line so new rows start on a line of their own."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        from domain_expert.fsutil import write_text_atomic

        write_text_atomic(path, text[: text.rfind("\n") + 1])


@dataclass
class ModelRows:
    """One model's rows: which items are still to score, and appending a scored one."""

    label: str
    done: set[tuple[str, str, str]]
    sink: TextIO
    path: Path  # the file `sink` appends to

    def todo(self, items: dict[str, list[dict]], kind: str) -> list[dict]:
        rest = [it for it in items[kind] if (self.label, kind, it["id"]) not in self.done]
        # batches of similar length waste little on padding (definitions range from 5 to 150+ tokens)
        return sorted(
            rest,
            key=lambda it: len(it.get("prompt") or it.get("question") or it.get("context") or it.get("text") or ""),
        )

    def emit(self, row: dict) -> None:
        self.sink.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.sink.flush()

    def written(self, kind: str) -> list[dict]:
        """This model's rows of `kind` in the file, those of an earlier, interrupted evaluation included."""
        self.sink.flush()
        return [r for r in read_rows(self.path) if r["model"] == self.label and r["kind"] == kind]

"""`file` source: rows of a JSONL, CSV or Parquet file, mapped to records through `columns`.

JSONL and CSV are read line by line with the standard library (not pandas/datasets) so that every error can
point at file:line. `ColumnMap` and `map_rows` are shared with the hub source.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from domain_expert.config import FileSource
from domain_expert.data.records import Record, SourceResult
from domain_expert.errors import DataError
from domain_expert.fsutil import sha256_file

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}

Rows = Iterator[tuple[str, Mapping[str, Any]]]  # (where, row): where is file:line or similar, for errors


class ColumnMap:
    """A source's `columns` (role -> column name) applied to rows."""

    def __init__(self, columns: dict[str, str], cfg_where: str) -> None:
        self.columns = columns
        self.cfg_where = cfg_where
        # The config allows mapping prompt+completion and text together; the instruction pair wins.
        self.task = "qa" if "prompt" in columns and "completion" in columns else "text"
        self.roles = ("prompt", "completion") if self.task == "qa" else ("text",)

    def check(self, present: Iterable[str], where: str) -> None:
        present = list(present)
        missing = [c for c in dict.fromkeys(self.columns.values()) if c not in present]
        if missing:
            key = f"{self.cfg_where}.columns"
            example = ", ".join(f"{role}: <column>" for role in self.roles)
            raise DataError(
                f"column(s) {_names(missing)} not found; the data has: {_names(present) or '(no columns)'}",
                where=where,
                fix=f"set {key} to existing columns, e.g. {key}={{{example}}}",
            )

    def record(self, row: Mapping[str, Any], rid: str, source: str, where: str) -> Record | None:
        """The row as a record, or None when a mapped value is blank (callers count those as skipped)."""
        values = {role: _text(row.get(self.columns[role]), self.columns[role], where) for role in self.roles}
        if not all(values.values()):
            return None
        group = ""
        if "group" in self.columns:
            group = _text(row.get(self.columns["group"]), self.columns["group"], where)
        return Record(id=rid, group=group or rid, source=source, task=self.task, **values)


def map_rows(
    rows: Iterable[tuple[str, Mapping[str, Any]]], cmap: ColumnMap, *, id_prefix: str, source: str, where: str
) -> tuple[list[Record], dict[str, int]]:
    records: list[Record] = []
    n = 0
    for n, (row_where, row) in enumerate(rows, 1):
        rec = cmap.record(row, f"{id_prefix}:{n}", source, row_where)
        if rec is not None:
            # where the row came from, without the user's folders (file:line, or the hub dataset's row)
            rec.meta["origin"] = source + row_where[len(where) :] if row_where.startswith(where) else row_where
            records.append(rec)
    if n == 0:
        raise DataError("empty dataset: no rows", where=where, fix=f"add rows, or point {cmap.cfg_where} elsewhere")
    if not records:
        cols = _names(cmap.columns[r] for r in cmap.roles)
        raise DataError(
            f"empty dataset: all {n} rows are blank in column(s) {cols}",
            where=where,
            fix=f"check that {cmap.cfg_where}.columns names the columns that hold the text",
        )
    return records, {"rows": n, "skipped_empty": n - len(records)}


def _names(cols: Iterable[str]) -> str:
    return ", ".join(f"'{c}'" for c in cols)


def _text(value: Any, column: str, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str | int | float):
        raise DataError(
            f"column '{column}' holds a {type(value).__name__}, not text",
            where=where,
            fix="map a column of plain text (nested lists/objects, e.g. chat messages, are not supported)",
        )
    return str(value).strip()


def decode_utf8(data: bytes, path: Path, *, line: int = 1, offset: int = 0) -> str:
    """Decode, or fail saying where the first bad byte is (`line`/`offset` locate `data` within the file)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        at = line + data.count(b"\n", 0, e.start)
        raise DataError(
            f"not UTF-8 text (byte {data[e.start]:#04x} at byte offset {offset + e.start})",
            where=f"{path}:{at}",
            fix="save the file as UTF-8 (e.g. 'Save as' → encoding UTF-8); a file pasted together from several "
            "sources can mix encodings, and every line must be UTF-8",
        ) from None


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = decode_utf8(raw, path, line=n, offset=offset)
            offset += len(raw)
            yield n, line.removeprefix("\ufeff") if n == 1 else line  # Excel and Notepad write a BOM


def _jsonl_rows(path: Path, cmap: ColumnMap) -> Rows:
    lines = _utf8_lines(path)
    first = True
    for n, line in lines:
        if not line.strip():
            continue
        if first and line.lstrip().startswith("["):
            # A .json file holding one array of objects (e.g. Alpaca data) rather than JSONL.
            yield from _json_array(path, line + "".join(rest for _, rest in lines), n, cmap)
            return
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"not valid JSON ({e.msg}, column {e.colno})",
                where=f"{path}:{n}",
                fix="write one JSON object per line (JSONL)",
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"line is a JSON {type(obj).__name__}, not an object",
                where=f"{path}:{n}",
                fix='write one JSON object per line, e.g. {"question": "...", "answer": "..."}',
            )
        cmap.check(obj, f"{path}:{n}")
        first = False
        yield f"{path}:{n}", obj


def _json_array(path: Path, text: str, first_line: int, cmap: ColumnMap) -> Rows:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"not valid JSON ({e.msg}, column {e.colno})",
            where=f"{path}:{first_line + e.lineno - 1}",
            fix="write one JSON object per line (JSONL), or one valid JSON array of objects",
        ) from None
    for i, obj in enumerate(items, 1):
        where = f"{path} (array item {i})"
        if not isinstance(obj, dict):
            raise DataError(
                f"item is a JSON {type(obj).__name__}, not an object",
                where=where,
                fix='the array must hold objects, e.g. [{"question": "...", "answer": "..."}]',
            )
        cmap.check(obj, where)
        yield where, obj


def _csv_rows(path: Path, cmap: ColumnMap) -> Rows:
    # strict: a stray quote is an error rather than a silently merged field; a quote that is never closed would
    # otherwise swallow every later line into one value, so errors name the line where the broken row starts
    reader = csv.reader((line for _, line in _utf8_lines(path)), strict=True)
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            return
        cmap.check(header, f"{path}:1")
        start = reader.line_num + 1
        for row in reader:
            if row:  # csv yields [] for blank lines
                yield f"{path}:{start}", dict(zip(header, row, strict=False))
            start = reader.line_num + 1
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise DataError(
                f"malformed CSV: a quoted field opened on this line is never closed (read to line {reader.line_num}"
                " looking for its closing quote)",
                where=f"{path}:{start}",
                fix='close the quote, or write a literal quote inside a quoted field as two quotes ("")',
            ) from None
        raise DataError(
            f"malformed CSV ({e})",
            where=f"{path}:{reader.line_num}",
            fix='check the quoting on this line (a quote inside a quoted field is written "")'
            ", or convert the file to JSONL",
        ) from None


def _parquet_rows(path: Path, cmap: ColumnMap) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        cmap.check(pf.schema_arrow.names, f"{path} (columns)")
        n = 0
        # only the mapped columns; every column when nothing is mapped (table_rows)
        for batch in pf.iter_batches(columns=list(dict.fromkeys(cmap.columns.values())) or None):
            for row in batch.to_pylist():
                n += 1
                yield f"{path} (row {n})", row
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"not a readable Parquet file ({e})",
            where=str(path),
            fix="re-export the file, or convert it to JSONL or CSV",
        ) from None


_READERS = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}


def table_rows(path: Path, fmt: str) -> Rows:
    """Every row of a table with no column required, read exactly as a `file` source reads it (errors say file:line):
    for `domain-expert init`, which looks at a table before anyone has written its column map."""
    return _READERS[fmt](path, ColumnMap({}, "columns"))


def load_file_source(cfg: FileSource, where: str) -> SourceResult:
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        if path.is_dir():
            raise DataError(
                "is a folder, not a file",
                where=str(path),
                fix=f"point {where}.path at a JSONL/CSV/Parquet file; for a folder of documents use `kind: documents`",
            )
        raise DataError(
            "file not found",
            where=str(path),
            fix=f"check {where}.path (relative paths start from {Path.cwd()})",
        )
    fmt = FORMATS.get(path.suffix.lower()) if cfg.format == "auto" else cfg.format
    if fmt is None:
        raise DataError(
            f"cannot tell the format from the extension '{path.suffix}'",
            where=str(path),
            fix=f"use .jsonl, .json, .csv or .parquet, or set {where}.format to jsonl, csv or parquet",
        )
    cmap = ColumnMap(cfg.columns, where)
    records, notes = map_rows(_READERS[fmt](path, cmap), cmap, id_prefix=path.stem, source=path.name, where=str(path))
    return SourceResult(
        name=path.name,
        kind="file",
        license=cfg.license,
        attribution=cfg.attribution,
        records=records,
        inputs=[{"path": str(path.resolve()), "sha256": sha256_file(path)}],
        notes=notes,
    )

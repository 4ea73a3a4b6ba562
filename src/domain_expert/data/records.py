"""The one record format every source produces and every later stage reads (one JSON object per line)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from domain_expert.errors import DataError


@dataclass
class Record:
    id: str  # unique within the dataset
    group: str  # the unit of splitting: all records of a group land in the same split (e.g. one HPO term)
    source: str  # source name, as in the manifest
    task: str  # e.g. define, explain, synonym, reverse, qa, text
    prompt: str | None = None  # instruction records: prompt + completion
    completion: str | None = None
    text: str | None = None  # raw-text records (domain adaptation): loss on every token
    meta: dict[str, Any] = field(default_factory=dict)
    license: str | None = None  # the source's licence, stamped by prepare (provenance travels with every record)

    @property
    def is_text(self) -> bool:
        return self.text is not None

    def to_json(self) -> str:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(d, ensure_ascii=False)


@dataclass
class SourceResult:
    name: str
    kind: str
    license: str
    records: list[Record]
    attribution: str | None = None  # the credit line the licence requires, for the model card
    inputs: list[dict[str, Any]] = field(default_factory=list)  # [{"path": ..., "sha256": ...}]
    notes: dict[str, Any] = field(default_factory=dict)  # counts of skipped rows etc., copied into the manifest
    facts: list[Any] = field(default_factory=list)  # data.probes.Fact: what the records state, for uptake probes


def read_records(path: str | Path) -> list[Record]:
    """Read a prepared split written by `prepare` (trusted format; errors still say file:line)."""
    path = Path(path)
    if not path.exists():
        raise DataError("prepared split not found", where=str(path), fix="run `domain-expert prepare` first")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(Record(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as e:
                raise DataError(f"not a prepared record ({e})", where=f"{path}:{n}", fix="re-run prepare") from None
    return out

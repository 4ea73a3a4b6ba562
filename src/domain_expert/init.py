"""`domain-expert init PATH`: look at a user's folder of documents or a CSV/JSONL/Parquet of Q&A and write a starter
config with comments (what was found, the guessed column map and the other columns, sizes, and a training budget sized
to this machine), so a team can start on its own domain without reading the code. The config is validated by the same
loader every stage uses before it is written, and written atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from domain_expert.data.files import FORMATS
from domain_expert.errors import DataError

# column names people give the parts of a Q&A row, most specific first
PROMPT_NAMES = ("question", "prompt", "instruction", "query", "input", "term", "q")
COMPLETION_NAMES = ("answer", "completion", "response", "output", "definition", "explanation", "a")
TEXT_NAMES = ("text", "content", "body", "abstract", "document", "passage")
# trained tokens per second by machine kind, from docs/benchmarks.md (SmolLM2-135M, LoRA): budgets are sized from them
LICENSE_LINE = (
    "      license: user-provided      # recorded on every record, in the manifest and model card\n"
    '      # attribution: "..."         # the credit line your licence requires, if any'
)
SPEED = {"cuda": 5000.0, "cpu-bf16": 430.0, "cpu-fp32": 250.0}


@dataclass
class Found:
    """One source `init` detected, with what the comments say about it."""

    yaml: str  # the source's YAML lines (indented for data.sources)
    notes: list[str] = field(default_factory=list)
    chars: int = 0


def init(path: str | Path, out: str | Path, *, name: str | None = None, model: str = "smollm2-135m-instruct",
         force: bool = False) -> Path:  # fmt: skip
    """Write a starter config for `path` to `out`; returns `out`."""
    src = Path(path).expanduser()
    if not src.exists():
        raise DataError("path not found", where=str(src), fix="give a folder of documents or a CSV/JSONL/Parquet file")
    dest = Path(out)
    if dest.exists() and not force:
        raise DataError("config file already exists", where=str(dest), fix="pass --force to replace it, or --out")
    found = [_table(src)] if src.is_file() else _folder(src)
    text = _render(found, name or _slug(src.stem if src.is_file() else src.resolve().name), model, src)
    from domain_expert.config import load_config
    from domain_expert.fsutil import write_text_atomic

    tmp = dest.with_name(f".{dest.name}.check.yaml")
    tmp.write_text(text, encoding="utf-8")
    try:
        load_config(str(tmp))  # the same validation every stage runs: a starter config that does not load is a bug
    finally:
        tmp.unlink(missing_ok=True)
    write_text_atomic(dest, text)
    return dest


def _slug(s: str) -> str:
    out = "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")
    return "-".join(p for p in out.split("-") if p) or "my-domain"


def _folder(root: Path) -> list[Found]:
    from domain_expert.data.documents import SUPPORTED, extract_text

    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(x.startswith(".") for x in
                                                                             p.relative_to(root).parts))  # fmt: skip
    docs = [p for p in files if p.suffix.lower() in SUPPORTED]
    tables = [p for p in files if p.suffix.lower() in FORMATS]
    if not docs and not tables:
        raise DataError(f"no readable documents or tables in this folder ({len(files)} other file(s))",
                        where=str(root),
                        fix=f"add {', '.join(SUPPORTED)} documents or CSV/JSONL/Parquet files")  # fmt: skip
    found = []
    if docs:
        chars = sum(len(extract_text(p)) for p in docs)
        kinds = sorted({p.suffix.lower() for p in docs})
        yaml = (f"    - kind: documents\n      path: {json.dumps(str(root.resolve()))}\n      chunk_tokens: 256\n"
                f"      overlap_tokens: 32\n{LICENSE_LINE}")  # fmt: skip
        notes = [f"documents: {len(docs)} file(s) ({', '.join(kinds)}), {chars:,} characters of text"]
        found.append(Found(yaml=yaml, notes=notes, chars=chars))
    found += [_table(p) for p in tables]
    return found


def _table(path: Path) -> Found:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"cannot tell the format from the extension '{path.suffix}'", where=str(path),
                        fix="give a .csv, .jsonl, .json or .parquet file, or a folder of documents")  # fmt: skip
    columns, rows, chars = _peek(path, fmt)
    roles = _guess(columns)
    if not roles:
        raise DataError(
            f"no column looks like a question/answer pair or a text: columns {columns}",
            where=str(path),
            fix="name them question/answer (or text), or write the config's columns map by hand",
        )
    mapping = ", ".join(f"{k}: {json.dumps(v)}" for k, v in roles.items())
    others = [c for c in columns if c not in roles.values()]
    notes = [f"{path.name}: {rows:,} rows, {chars:,} characters; columns {columns}",
             f"  guessed map: {mapping}" + (f"; not used: {others}" if others else "")]  # fmt: skip
    yaml = (f"    - kind: file\n      path: {json.dumps(str(path.resolve()))}\n"
            f"      columns: {{{mapping}}}   # check this guess\n{LICENSE_LINE}")  # fmt: skip
    return Found(yaml=yaml, notes=notes, chars=chars)


def _peek(path: Path, fmt: str) -> tuple[list[str], int, int]:
    """(column names, rows, characters) of a table, read the way `prepare` reads it (errors say file:line)."""
    from domain_expert.data.files import table_rows

    columns: list[str] = []
    n = chars = 0
    for _, row in table_rows(path, fmt):
        columns += [k for k in row if k not in columns]
        chars += sum(len(str(v)) for v in row.values() if v is not None)
        n += 1
    return columns, n, chars


def _guess(columns: list[str]) -> dict[str, str]:
    lower = {c.lower(): c for c in columns}

    def pick(names: tuple[str, ...]) -> str | None:
        return next((lower[n] for n in names if n in lower), None)

    prompt, completion = pick(PROMPT_NAMES), pick(COMPLETION_NAMES)
    if prompt and completion and prompt != completion:
        return {"prompt": prompt, "completion": completion}
    text = pick(TEXT_NAMES)
    return {"text": text} if text else {}


def _machine() -> tuple[str, float]:
    from domain_expert.hardware import cpu_has_native_bf16

    try:
        import torch

        if torch.cuda.is_available():
            return "a CUDA GPU", SPEED["cuda"]
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return ("a CPU with native bf16", SPEED["cpu-bf16"]) if cpu_has_native_bf16() else ("a CPU (fp32)",
                                                                                        SPEED["cpu-fp32"])  # fmt: skip


def _render(found: list[Found], name: str, model: str, src: Path) -> str:
    chars = sum(f.chars for f in found)
    tokens = max(1, chars // 4)  # ~4 characters per token in English
    machine, speed = _machine()
    epochs = 2
    minutes = min(60.0, max(2.0, round(tokens * epochs / speed / 60 * 1.2, 1)))  # 20% for the prompt template
    notes = "\n".join(f"#   {line}" for f in found for line in f.notes)
    sources = "\n".join(f.yaml for f in found)
    return f"""# Starter config written by `domain-expert init {src}`: check the guesses, then
#   domain-expert run {name}.yaml
# Found:
{notes}
# ~{tokens:,} tokens in all (about 4 characters each). On this machine ({machine}, ~{speed:.0f} trained tokens/s
# for a 135M model) {epochs} epochs take ~{minutes} minutes: train.max_minutes below. A larger model is slower.
name: {name}
model: {model}     # a built-in alias, a local Hugging Face folder, or a hub id
data:
  sources:
{sources}
  val_fraction: 0.05
  test_fraction: 0.1          # held out by group (a document, or a row's group column): the report's test set
  seed: 0
  hygiene:                    # on by default; counted in data/manifest.json and the report (docs/hygiene.md)
    scrub: {{enabled: true}}    # e-mails, phones, record/account/SSN-like numbers, birth dates, addresses, URLs, IPs,
                              # names (titles + census name lists) -> [EMAIL], [PHONE], ...
    dedup: {{enabled: true}}    # exact and near-duplicate records (Jaccard of word 5-grams >= 0.9) removed
    leakage: {{on_leak: refuse}}  # overlapping groups kept on one side; a held-out answer found in training: refuse,
                              # move (to train) or drop
prompt:
  style: auto
  system: You are an assistant for this domain. Answer briefly and precisely.
train:
  epochs: {epochs}
  max_minutes: {minutes}      # wall-clock budget; the learning-rate schedule follows time when that is tighter
evaluate:
  max_items: 60               # held-out questions per model
"""

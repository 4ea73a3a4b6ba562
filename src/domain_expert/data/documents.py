"""`documents` source: .txt/.md/.html/.pdf files cut into overlapping token windows for raw-text training.

Every chunk's group is its document, so a document never straddles train and test (its overlapping chunks
would leak held-out text into training).
"""

from __future__ import annotations

import re
from pathlib import Path

from domain_expert.config import DocumentsSource
from domain_expert.data.files import decode_utf8
from domain_expert.data.records import Record, SourceResult
from domain_expert.errors import DataError
from domain_expert.fsutil import sha256_file

SUPPORTED = (".txt", ".md", ".html", ".htm", ".pdf")

# Elements that start a new line when a browser renders the page.
_BLOCKS = (
    "address article aside blockquote dd div dl dt figcaption figure footer h1 h2 h3 h4 h5 h6 header hr li"
    " main nav ol p pre section table td th title tr ul"
).split()


def load_documents_source(cfg: DocumentsSource, where: str, tokenizer) -> SourceResult:
    root = Path(cfg.path).expanduser()
    base, files, ignored = _list_documents(root, where)
    name = root.resolve().name
    records: list[Record] = []
    inputs = []
    empty = tokens = 0
    for path in files:
        rel = path.relative_to(base).as_posix()
        inputs.append({"path": str(path.resolve()), "sha256": sha256_file(path)})
        text = extract_text(path)
        if not text:
            empty += 1
            continue
        chunks = chunk_text(text, tokenizer, cfg.chunk_tokens, cfg.overlap_tokens)
        tokens += chunks[-1][1] if chunks else 0
        records += [
            Record(
                id=f"{rel}#{i}",
                group=rel,
                source=name,
                task="text",
                text=chunk,
                meta={"tokens": [start, end]},
            )
            for i, (start, end, chunk) in enumerate(chunks)
        ]
    if not records:
        raise DataError(
            f"empty dataset: all {len(files)} document(s) are empty",
            where=str(root),
            fix=f"check {where}.path points at the documents with the text",
        )
    return SourceResult(
        name=name,
        kind="documents",
        license=cfg.license,
        attribution=cfg.attribution,
        records=records,
        inputs=inputs,
        notes={
            "documents": len(files) - empty,
            "empty_documents": empty,
            "ignored_files": ignored,
            "chunks": len(records),
            "tokens": tokens,
        },
    )


def _list_documents(root: Path, where: str) -> tuple[Path, list[Path], int]:
    """(folder the ids are relative to, supported files in sorted order, number of other files ignored)."""
    kinds = ", ".join(SUPPORTED)
    if not root.exists():
        raise DataError(
            "documents path not found",
            where=str(root),
            fix=f"check {where}.path (relative paths start from {Path.cwd()})",
        )
    if root.is_file():
        if root.suffix.lower() not in SUPPORTED:
            raise DataError(
                f"unsupported document type '{root.suffix}'",
                where=str(root),
                fix=f"use one of {kinds}; for JSONL/CSV/Parquet use `kind: file`",
            )
        return root.parent, [root], 0
    # Hidden files and folders (.git, .DS_Store, editor backups) are never documents.
    found = [
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    docs = sorted((p for p in found if p.suffix.lower() in SUPPORTED), key=lambda p: p.relative_to(root).as_posix())
    if not docs:
        raise DataError(
            f"no supported documents in this folder ({len(found)} other file(s))",
            where=str(root),
            fix=f"add files with one of these extensions: {kinds}",
        )
    return root, docs, len(found) - len(docs)


def chunk_text(text: str, tokenizer, size: int, overlap: int) -> list[tuple[int, int, str]]:
    """(start token, end token, text) of each window, in the tokens of the model being tuned."""
    # verbose=False: documents are longer than the model's context on purpose; that is why we chunk.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    out = []
    for start, end in windows(len(ids), size, overlap):
        chunk = tokenizer.decode(ids[start:end])
        if chunk.strip():
            out.append((start, end, chunk))
    return out


def windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Token spans [start, end) of `size` that share `overlap` tokens; the last one may be shorter."""
    spans = []
    start = 0
    while True:
        spans.append((start, min(start + size, n)))
        if start + size >= n:
            return spans
        start += size - overlap


def extract_text(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        text = _pdf_text(path)
    elif suffix in (".html", ".htm"):
        text = _html_text(path)
    else:
        text = decode_utf8(path.read_bytes(), path).removeprefix("\ufeff")
    return normalise(text)


def normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _html_text(path: Path) -> str:
    from bs4 import BeautifulSoup, NavigableString

    soup = BeautifulSoup(path.read_bytes(), "html.parser")  # bytes: bs4 honours <meta charset> or guesses
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    # Render like a browser: source whitespace is one space, blocks and <br> break lines. get_text("\n")
    # instead would also break lines inside sentences at every inline tag (<b>, <a>, ...).
    for s in soup.find_all(string=True):
        if type(s) is NavigableString and s.find_parent("pre") is None:  # exact type: leave comments alone
            s.replace_with(re.sub(r"\s+", " ", s))
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for tag in soup.find_all(_BLOCKS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    lines = (line.strip() for line in soup.get_text().split("\n"))
    return "\n".join(line for line in lines if line)  # adjacent blocks leave runs of empty lines


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise DataError(
                "PDF is password-protected",
                where=str(path),
                fix="save an unprotected copy, or extract its text to a .txt file",
            )
        pages = [page.extract_text() or "" for page in reader.pages]
    except DataError:
        raise
    except Exception as e:  # pypdf raises many exception types on damaged files
        raise DataError(
            f"cannot read PDF ({type(e).__name__}: {e})",
            where=str(path),
            fix="re-export or repair the PDF, or extract its text to a .txt file",
        ) from None
    text = "\n\n".join(pages)
    if not text.strip():
        raise DataError(
            f"PDF has no extractable text ({len(pages)} page(s)); it is probably scanned images",
            where=str(path),
            fix="run OCR on it first (e.g. `ocrmypdf in.pdf out.pdf`), or remove it from the folder",
        )
    return text

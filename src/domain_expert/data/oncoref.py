"""`oncoref` source: rows of oncoref's curated cancer tables (shipped in the `oncoref` package as CSV files) turned
into short text paragraphs, question/answer records (`qa: true`) and uptake-probe facts.

Tables (`tables:` in the config; file names under oncoref/data/):

- overview: cancer-type-registry.csv, the chosen cancers (a code brings its registry subtypes: LAML brings LAML_APL
  and the ELN risk groups) with name, lineage, tissue and curator notes.
- key-genes: cancer-key-genes.csv, biomarker rows (gene + rationale) and target rows (gene, agent, agent class,
  phase, line of therapy, indication, rationale); every row cites a PMID.
- fusions: cancer-fusions.csv, 5' and 3' partner genes, frequency, defining / pathognomonic, mechanism, notes, PMID.
- drivers: cancer-type-genes.csv (gene roles per cancer) merged with driver-gene-evidence.csv (TCGA pan-cancer driver
  calls: function, mutation frequency, PMID) per gene and cancer.
- fusion-rules: rare-cancer-fusion-rules.csv (what an RNA-detected fusion implies, confirmatory tests, caveat) and
  fusion-surrogate-expression.csv (expression traces of a fusion).
- checkpoint: cancer-apd1-response.csv (PD-1 blockade response rates).

Groups (the split unit) keep everything one thing says together: `oncoref:gene:<SYMBOL>` for key-genes and drivers
(all cancers: what oncoref says about FLT3 is on one side of the split), `oncoref:fusion:<5'>-<3'>` for fusions and
fusion rules, `oncoref:cancer:<code>` for overview, checkpoint and "not fusion-driven" rows.

Facts (data/probes.py), in wordings no record uses: agent -> target gene from target rows (multiple choice asks gene
-> agent), and 5' gene -> 3' partner from fusion rows. Each fact's evidence is the first sentence of its row's
paragraph ("In <cancer>, <agent> targets <gene>."), which names the cancer, so the same pair in another cancer is
another statement. A fact that the rows leave ambiguous (an agent with two target genes in one cancer, a 5' gene with
two partners and no distinguishing rearrangement) is left out.
"""

from __future__ import annotations

import difflib
import importlib.util
import random
from pathlib import Path

from domain_expert.config import OncorefSource
from domain_expert.data.oncoref_tables import (
    INSTALL_FIX,
    TABLE_FILES,
    TABLES,
    Cancer,
    Row,
    agent_name,
    read_table,
    registry,
    row_code,
)
from domain_expert.data.records import Record, SourceResult
from domain_expert.errors import DataError

SOURCE = "oncoref"
# Config conveniences: the common abbreviations map to oncoref's codes.
ALIASES = {"AML": ["LAML"], "APL": ["LAML_APL"], "ALL": ["B_ALL", "T_ALL"]}


def data_dir() -> Path:
    """oncoref/data inside the installed package, found without importing oncoref (its dependencies are absent)."""
    spec = importlib.util.find_spec("oncoref")
    if spec is None or spec.origin is None:
        raise DataError("the oncoref source needs the oncoref package", where="data.sources", fix=INSTALL_FIX)
    folder = Path(spec.origin).parent / "data"
    if not (folder / "cancer-type-registry.csv").exists():
        raise DataError("oncoref's data files are missing", where=str(folder), fix="re" + INSTALL_FIX)
    return folder


def resolve_cancers(codes: list[str], reg: dict[str, Cancer], where: str) -> list[str]:
    """Config codes checked against the registry, aliases expanded, each followed by its registry subtypes (LAML
    brings LAML_APL and the ELN risk groups), in config order without repeats."""
    out: list[str] = []
    for code in codes:
        for c in ALIASES.get(code.upper(), [code]):
            if c not in reg:
                close = difflib.get_close_matches(c, list(reg), n=3, cutoff=0.5)
                hint = f"did you mean {', '.join(close)}?" if close else "see oncoref/data/cancer-type-registry.csv"
                raise DataError(f"unknown oncoref cancer code '{c}'", where=f"{where}.cancers", fix=hint)
            for x in [c, *(k for k, v in reg.items() if v.row.get("parent_code") == c)]:
                if x not in out:
                    out.append(x)
    return out


def to_records(rows: list[Row], qa: bool) -> list[Record]:
    out = []
    for row in rows:
        meta = {"table": row.table, **row.meta}
        out.append(Record(row.key, row.group, SOURCE, "text", text=row.text, meta=meta))
        if qa and row.question and row.answer:
            out.append(Record(f"{row.key}:qa", row.group, SOURCE, "qa", row.question, row.answer, meta=meta))
    return out


# --- facts -------------------------------------------------------------------------------------------------------


def same_kind(own: list[str], other: list[str], right: set[str], rng: random.Random, n: int = 12) -> list[str]:
    """Up to n wrong answers of the answer's kind: the chosen cancers' own values first (plausible: the same
    disease area), then the rest of oncoref's table; each group shuffled with the fact's seed, none in `right`."""
    first = [x for x in dict.fromkeys(own) if x not in right]
    rest = [x for x in dict.fromkeys(other) if x not in right and x not in first]
    rng.shuffle(first)
    rng.shuffle(rest)
    return (first + rest)[:n]


def _first_sentence(text: str) -> str:
    return text.split(". ", 1)[0].rstrip(".") + "."


def target_facts(rows: list[Row], reg: dict[str, Cancer], all_targets: list[dict[str, str]], seed: int) -> list:
    """Agent -> target gene (cloze, short) and gene -> agent (multiple choice), one per target row."""
    from domain_expert.data.probes import Fact

    targets = [r for r in rows if r.table == "key-genes" and r.meta.get("role") == "target"]
    genes_of: dict[tuple[str, str], set[str]] = {}  # (cancer, agent) -> genes
    agents_of: dict[tuple[str, str], set[str]] = {}  # (cancer, gene) -> agents
    for r in targets:
        name = agent_name(r.meta["agent"])[0]
        genes_of.setdefault((r.meta["cancer"], name), set()).add(r.meta["gene"])
        agents_of.setdefault((r.meta["cancer"], r.meta["gene"]), set()).add(name)
    own_genes = [r.meta["gene"] for r in targets]
    own_agents = [agent_name(r.meta["agent"])[0] for r in targets]
    other_genes = [t["symbol"] for t in all_targets]
    other_agents = [agent_name(t["agent"])[0] for t in all_targets if t["agent"]]
    out = []
    for r in targets:
        code, gene = r.meta["cancer"], r.meta["gene"]
        name = agent_name(r.meta["agent"])[0]
        if len(genes_of[(code, name)]) > 1:
            continue  # e.g. revumenib: KMT2A-rearranged and NPM1-mutant AML; "its target gene" has two answers
        rng = random.Random(f"{seed}:{r.key}")
        genes = same_kind(own_genes, other_genes, {gene}, rng)
        agents = same_kind(own_agents, other_agents, agents_of[(code, gene)], rng)
        disease = reg[code].name
        out.append(
            Fact(
                id=f"target:{code}:{name}:{gene}",
                group=r.group,
                source=SOURCE,
                kind="agent-target",
                answer=gene,
                distractors=genes,
                cloze=f"Drug: {name}\nDisease: {disease}\nTarget gene:",
                question=f"Which gene's product is the molecular target of {name} in {disease}? Reply with the gene "
                "symbol only.",
                evidence=_first_sentence(r.text),
                mc_question=f"Which of these drugs is directed against {gene} in {disease}?",
                mc_answer=name,
                mc_distractors=agents,
            )
        )
    return out


def fusion_facts(rows: list[Row], reg: dict[str, Cancer], all_fusions: list[dict[str, str]], seed: int) -> list:
    """5' gene (+ rearrangement when the 5' gene has several partners in that cancer) -> 3' partner gene."""
    from domain_expert.data.probes import Fact

    fusions = [r for r in rows if r.table == "fusions" and r.meta.get("fusion")]
    partners: dict[tuple[str, str], list[Row]] = {}
    for r in fusions:
        partners.setdefault((r.meta["cancer"], r.meta["gene_5prime"]), []).append(r)
    own = [r.meta["gene_3prime"] for r in fusions]
    other = [f["gene_3prime"] for f in all_fusions if f["gene_3prime_kind"] == "gene"]
    out = []
    for r in fusions:
        code, g5, g3, cyto = r.meta["cancer"], r.meta["gene_5prime"], r.meta["gene_3prime"], r.meta["cytogenetics"]
        siblings = partners[(code, g5)]
        if len(siblings) > 1 and (cyto is None or [s.meta["cytogenetics"] for s in siblings].count(cyto) > 1):
            continue  # the 5' gene has several partners here and no rearrangement tells them apart
        if r.meta["kinds"] != ["gene", "gene"]:
            continue  # immunoglobulin / T-cell receptor loci (IGH, TRD) are not genes to ask about
        wrong = same_kind(own, other, {g3, g5}, random.Random(f"{seed}:{r.key}"))
        disease = reg[code].name
        by = f" by the {cyto} rearrangement" if len(siblings) > 1 else ""
        rearrangement = f"Rearrangement: {cyto}\n" if by else ""
        out.append(
            Fact(
                id=f"fusion:{code}:{g5}-{g3}",
                group=r.group,
                source=SOURCE,
                kind="fusion-partner",
                answer=g3,
                distractors=wrong,
                cloze=f"Disease: {disease}\n{rearrangement}5' fusion gene: {g5}\n3' fusion gene:",
                question=f"In {disease}, {g5} is fused{by} to a partner gene at its 3' end. Which gene is that "
                "partner? Reply with the gene symbol only.",
                evidence=_first_sentence(r.text),
            )
        )
    return out


# --- the source --------------------------------------------------------------------------------------------------


def load_oncoref_source(cfg: OncorefSource, where: str, seed: int) -> SourceResult:
    from domain_expert.fsutil import sha256_file

    folder = data_dir()
    reg = registry(folder)
    cancers = resolve_cancers(cfg.cancers, reg, where)
    rows = [row for t in cfg.tables for row in TABLES[t](folder, reg, cancers)]
    _unique_keys(rows)
    facts = []
    if "key-genes" in cfg.tables:
        all_targets = [r for r in read_table(folder, "cancer-key-genes.csv") if r["role"] == "target"]
        facts += target_facts(rows, reg, all_targets, seed)
    if "fusions" in cfg.tables:
        facts += fusion_facts(rows, reg, read_table(folder, "cancer-fusions.csv"), seed)
    files = sorted({"cancer-type-registry.csv", *(f for t in cfg.tables for f in TABLE_FILES[t])})
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.table] = counts.get(r.table, 0) + 1
    return SourceResult(
        name=SOURCE,
        kind="oncoref",
        license=cfg.license,
        attribution="Curated tables from the oncoref package (Apache-2.0); each row names its primary source (PMID)",
        records=to_records(rows, cfg.qa),
        inputs=[{"path": f"oncoref:{f}", "sha256": sha256_file(folder / f), "package": _version()} for f in files],
        notes={"cancers": cancers, "rows": counts, "groups": len({r.group for r in rows}), "facts": len(facts)},
        facts=facts,
    )


def _unique_keys(rows: list[Row]) -> None:
    """Two rows with the same key (a table listing a gene twice) get #2, #3...: record ids must be unique."""
    seen: dict[str, int] = {}
    for r in rows:
        n = seen[r.key] = seen.get(r.key, 0) + 1
        if n > 1:
            r.key = f"{r.key}#{n}"


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"oncoref=={version('oncoref')}"
    except PackageNotFoundError:
        return None


def gene_symbols(cancers: tuple[str, ...] | list[str]) -> set[str]:
    """Gene symbols oncoref's key-gene, fusion and cancer-type-gene rows name for these cancers (loci such as IGH
    left out); empty when oncoref is not installed. The pubmed source's cloze vocabulary."""
    try:
        folder = data_dir()
    except DataError:
        return set()
    reg = registry(folder)
    out = {r["symbol"] for r in read_table(folder, "cancer-key-genes.csv") if row_code(r, reg) in cancers}
    for r in read_table(folder, "cancer-fusions.csv"):
        if r["cancer_code"] in cancers:
            out |= {r[f"gene_{e}prime"] for e in (5, 3) if r[f"gene_{e}prime_kind"] == "gene"}
    out |= {r["Symbol"] for r in read_table(folder, "cancer-type-genes.csv") if r["Cancer_Type"] in cancers}
    return {s for s in out if s and s not in ("IGHV",)}

"""oncoref's CSV tables (oncoref/data/ in the installed package) as `Row`s: one short paragraph per table row, with
a question and answer about it, a stable key and a group (the split unit). The `oncoref` source (data/oncoref.py)
turns rows into records and facts; the tables and groups are described there.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain_expert.errors import DataError

INSTALL_FIX = "install it: pip install --no-deps oncoref==1.20.0 (`make setup` does; its dependencies are not needed)"
# In-sentence names; other codes use the registry's name.
NAMES = {
    "LAML": "acute myeloid leukemia (AML)",
    "LAML_APL": "acute promyelocytic leukemia (APL)",
    "B_ALL": "B-cell acute lymphoblastic leukemia (B-ALL)",
    "T_ALL": "T-cell acute lymphoblastic leukemia (T-ALL)",
    "CML": "chronic myeloid leukemia (CML)",
    "CLL": "chronic lymphocytic leukemia (CLL)",
    "MDS": "myelodysplastic syndrome (MDS)",
    "MPN": "myeloproliferative neoplasms (MPN)",
    "HCL": "hairy cell leukemia (HCL)",
}
_WORDS = {  # oncoref's vocabulary -> words a reader (and a model) knows
    "small_molecule": "small-molecule drug",
    "ADC": "antibody-drug conjugate",
    "bispecific": "bispecific antibody",
    "CAR-T": "CAR T-cell therapy",
    "phase_1": "phase 1",
    "phase_2": "phase 2",
    "phase_3": "phase 3",
    "off_label": "off-label",
    "standard_or_frontline": "standard or front-line therapy",
    "later_line_approved": "approved in later lines",
    "approved_biomarker_matched": "approved for a biomarker-matched indication",
    "clinical_trial": "clinical-trial setting",
    "tsg": "tumour suppressor gene",
    "possible tsg": "possible tumour suppressor gene",
    "fusion_transcript": "fusion transcript",
    "promoter_swap": "promoter swap",
    "enhancer_hijack": "enhancer hijacking",
    "ig_enhancer_hijack": "immunoglobulin enhancer hijacking",
    "surrogate": "only through surrogate expression",
    "heme-myeloid": "myeloid blood cancer",
    "heme-bcell": "B-cell blood cancer",
    "heme-tcell": "T-cell blood cancer",
    "bone_marrow": "bone marrow",
    "peripheral_blood": "peripheral blood",
    "activated_ectopic": "ectopically activated",
    "target": "therapeutic target",
    "subtype": "subtype-defining gene",
    "suppressor": "tumour suppressor",
    "fusion": "fusion partner",
    "marker": "marker",
}
_CYTO = re.compile(r"\b(?:t|inv|del)\([^)\s]*\)(?:\([^)\s]*\))?")


def words(value: str) -> str:
    return _WORDS.get(value, value.replace("_", " "))


def read_table(folder: Path, name: str) -> list[dict[str, str]]:
    path = folder / name
    if not path.exists():
        raise DataError("oncoref data file missing", where=str(path), fix="re" + INSTALL_FIX)
    with open(path, encoding="utf-8", newline="") as f:
        return [{k: (v or "").strip() for k, v in row.items()} for row in csv.DictReader(f)]


@dataclass
class Cancer:
    code: str
    name: str  # in-sentence name
    row: dict[str, str]


def registry(folder: Path) -> dict[str, Cancer]:
    rows = read_table(folder, "cancer-type-registry.csv")
    return {r["code"]: Cancer(r["code"], NAMES.get(r["code"], r["name"]), r) for r in rows}


def row_code(row: dict[str, str], reg: dict[str, Cancer]) -> str:
    """A key-gene row's own code: LAML + subtype apl is LAML_APL (the registry child with that subtype key)."""
    code, sub = row["cancer_code"], row.get("subtype", "")
    if sub:
        for c in reg.values():
            if c.row.get("parent_code") == code and c.row.get("subtype_key") == sub:
                return c.code
    return code


@dataclass
class Row:
    """One table row as a paragraph (+ an optional question and answer)."""

    table: str
    key: str  # stable id
    group: str
    text: str
    question: str | None = None
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _sentences(*parts: str | None) -> str:
    out = []
    for p in parts:
        if p:
            p = p.strip()
            out.append(p if p.endswith((".", "!", "?")) else p + ".")
    return " ".join(out)


def _source(ref: str) -> str | None:
    return f"Source: {ref}" if ref else None


def agent_name(agent: str) -> tuple[str, list[str]]:
    """'tisagenlecleucel (tisa-cel)' -> ('tisagenlecleucel', ['tisa-cel']); 'imatinib + chemo' -> ('imatinib', [])."""
    base = agent.split(" + ")[0].strip()
    m = re.fullmatch(r"(.+?)\s*\(([^)]+)\)", base)
    return (m.group(1), [m.group(2)]) if m else (base, [])


# --- tables -> rows ----------------------------------------------------------------------------------------------


def key_gene_rows(folder: Path, reg: dict[str, Cancer], cancers: list[str]) -> list[Row]:
    out = []
    for r in read_table(folder, "cancer-key-genes.csv"):
        code = row_code(r, reg)
        if code not in cancers or not r["symbol"]:
            continue
        out.append(_target_row(r, reg[code]) if r["role"] == "target" and r["agent"] else _biomarker_row(r, reg[code]))
    return out


def _biomarker_row(r: dict[str, str], cancer: Cancer) -> Row:
    gene = r["symbol"]
    role = "a biomarker" if r["role"] == "biomarker" else f"a {words(r['role'])}"
    return Row(
        "key-genes",
        f"key-genes:{cancer.code}:{gene}:{r['role']}",
        f"oncoref:gene:{gene}",
        _sentences(f"In {cancer.name}, {gene} is {role}: {r['rationale']}", _source(r["source"])),
        f"Why is {gene} tested in {cancer.name}?",
        _sentences(r["rationale"], _source(r["source"])),
        {"cancer": cancer.code, "gene": gene, "role": r["role"], "pmid": r["source"]},
    )


def _target_row(r: dict[str, str], cancer: Cancer) -> Row:
    gene, agent = r["symbol"], r["agent"]
    name, aliases = agent_name(agent)
    kind = _sentences(
        f"{name[:1].upper() + name[1:]} is a {words(r['agent_class'])} ({words(r['phase'])}, "
        f"{words(r['line_of_therapy'])})"
    )
    text = _sentences(
        f"In {cancer.name}, {name} targets {gene}",
        kind,
        f"Also called {', '.join(aliases)}" if aliases else None,
        f"It is given as {agent}" if "+" in agent else None,
        f"Indication: {r['indication']}" if r["indication"] else None,
        f"Rationale: {r['rationale']}" if r["rationale"] else None,
        _source(r["source"]),
    )
    answer = _sentences(f"{kind} It targets {gene}", f"Indication: {r['indication']}", r["rationale"])
    return Row(
        "key-genes",
        f"key-genes:{cancer.code}:{gene}:target:{name}",
        f"oncoref:gene:{gene}",
        text,
        f"What is {name} used for in {cancer.name}?",
        answer,
        {"cancer": cancer.code, "gene": gene, "role": "target", "agent": agent, "pmid": r["source"]},
    )


def fusion_rows(folder: Path, reg: dict[str, Cancer], cancers: list[str]) -> list[Row]:
    out = []
    for r in read_table(folder, "cancer-fusions.csv"):
        if r["cancer_code"] not in cancers:
            continue
        cancer = reg[r["cancer_code"]]
        out.append(_fusion_row(r, cancer) if r["gene_5prime"] and r["gene_3prime"] else _no_fusion_row(r, cancer))
    return out


def _fusion_row(r: dict[str, str], cancer: Cancer) -> Row:
    g5, g3, family = r["gene_5prime"], r["gene_3prime"], r["fusion_family"]
    traits = [
        t
        for t, on in (("defines the disease", r["is_defining"]), ("is pathognomonic", r["pathognomonic"]))
        if on == "true"
    ]
    families = "; ".join(
        f"{g} belongs to the {f} family" for g, f in ((g5, r["gene_5prime_family"]), (g3, r["gene_3prime_family"])) if f
    )
    detail = _sentences(
        families,
        f"Frequency: {r['frequency']}" if r["frequency"] else None,
        f"It {' and '.join(traits)}" if traits else None,
        f"Mechanism: {words(r['mechanism'])}; detectable by RNA sequencing: {words(r['rnaseq_detectable'])}",
        f"Notes: {r['notes']}" if r["notes"] else None,
        _source(r["pmid"]),
    )
    first = f"In {cancer.name}, the {family} rearrangement joins the 5' gene {g5} to the 3' gene {g3}."
    return Row(
        "fusions",
        f"fusions:{cancer.code}:{g5}-{g3}",
        f"oncoref:fusion:{g5}-{g3}",
        f"{first} {detail}",
        f"What is known about the {family} fusion in {cancer.name}?",
        f"It joins {g5} (5') to {g3} (3'). {detail}",
        {
            "cancer": cancer.code,
            "fusion": family,
            "gene_5prime": g5,
            "gene_3prime": g3,
            "pmid": r["pmid"],
            "cytogenetics": cytogenetics(r["notes"]),
            "kinds": [r["gene_5prime_kind"], r["gene_3prime_kind"]],
        },
    )


def cytogenetics(notes: str) -> str | None:
    """The rearrangement named in a fusion's notes ('t(8;21)(q22;q22)'), if exactly one."""
    found = list(dict.fromkeys(m.group(0) for m in _CYTO.finditer(notes or "")))
    return found[0] if len(found) == 1 else None


def _no_fusion_row(r: dict[str, str], cancer: Cancer) -> Row:
    text = _sentences(f"Gene fusions do not drive {cancer.name}", r["notes"])
    return Row(
        "fusions",
        f"fusions:{cancer.code}:none",
        f"oncoref:cancer:{cancer.code}",
        text,
        f"Is {cancer.name} driven by gene fusions?",
        _sentences("No", r["notes"]),
        {"cancer": cancer.code, "fusion": None},
    )


def driver_rows(folder: Path, reg: dict[str, Cancer], cancers: list[str]) -> list[Row]:
    """cancer-type-genes.csv roles and driver-gene-evidence.csv calls, one paragraph per gene and cancer."""
    roles: dict[tuple[str, str], list[str]] = {}
    for r in read_table(folder, "cancer-type-genes.csv"):
        if r["Cancer_Type"] in cancers:
            roles.setdefault((r["Symbol"], r["Cancer_Type"]), []).append(r["Role"])
    calls = {
        (r["gene_symbol"], r["source_scope"]): r
        for r in read_table(folder, "driver-gene-evidence.csv")
        if r["scope_kind"] == "source_cancer_code" and r["source_scope"] in cancers
    }
    return [
        _driver_row(gene, reg[code], roles.get((gene, code), []), calls.get((gene, code)))
        for gene, code in sorted(roles.keys() | calls.keys())
    ]


def _driver_row(gene: str, cancer: Cancer, roles: list[str], call: dict[str, str] | None) -> Row:
    listed = f"oncoref lists {gene} as a {' and '.join(words(r) for r in roles)}" if roles else None
    evidence = None
    if call:
        function = f"a {words(call['driver_role'])}" if call["driver_role"] else "a driver gene"
        freq = call["tissue_frequency_percent"]
        mutated = f", mutated in {freq}% of samples" if freq and float(freq) > 0 else ""
        evidence = (
            f"The TCGA pan-cancer driver catalogue ({call['pmid']}) calls {gene} {function} in "
            f"{cancer.code} ({call['decision']} call){mutated}"
        )
    body = _sentences(listed, evidence)
    return Row(
        "drivers",
        f"drivers:{cancer.code}:{gene}",
        f"oncoref:gene:{gene}",
        f"In {cancer.name}, {gene} is a cancer gene. {body}",
        f"What role does {gene} play in {cancer.name}?",
        body,
        {"cancer": cancer.code, "gene": gene, "roles": roles, "pmid": call["pmid"] if call else None},
    )


def overview_rows(folder: Path, reg: dict[str, Cancer], cancers: list[str]) -> list[Row]:
    return [_overview_row(reg[c], reg) for c in cancers]


def _overview_row(c: Cancer, reg: dict[str, Cancer]) -> Row:
    r = c.row
    parent = reg.get(r["parent_code"])
    what = f"a subtype of {parent.name}" if parent else f"a {words(r['family'])}"
    text = _sentences(
        f"{r['name']} (oncoref code {c.code}) is {what} arising in the {words(r['primary_tissue'])}",
        f"Curator notes: {r['notes']}" if r["notes"] else None,
    )
    return Row(
        "overview",
        f"overview:{c.code}",
        f"oncoref:cancer:{c.code}",
        text,
        f"What is {r['name']}?",
        text,
        {"cancer": c.code},
    )


def fusion_rule_rows(folder: Path, reg: dict[str, Cancer], cancers: list[str]) -> list[Row]:
    out = []
    for r in read_table(folder, "rare-cancer-fusion-rules.csv"):
        if r["cancer_code"] in cancers:
            a, b = r["gene_a"], r["gene_b"]
            text = _sentences(
                f"A {a}-{b} fusion found by RNA sequencing points to {reg[r['cancer_code']].name}: {r['basis']}",
                f"Confirmatory tests: {r['confirmatory_tests']}",
                f"Caveat: {r['caveat']}",
                _source(r["source"]),
            )
            q = f"What does a {a}-{b} fusion found by RNA sequencing suggest, and how is it confirmed?"
            out.append(
                Row(
                    "fusion-rules",
                    f"fusion-rules:{r['rule_id']}",
                    f"oncoref:fusion:{a}-{b}",
                    text,
                    q,
                    text,
                    {"cancer": r["cancer_code"], "pmid": r["source"]},
                )
            )
    for r in read_table(folder, "fusion-surrogate-expression.csv"):
        if r["cancer_code"] in cancers:
            fusion, gene, name = r["fusion_class"], r["surrogate_gene"], reg[r["cancer_code"]].name
            text = _sentences(
                f"In {name}, the {fusion} fusion leaves a trace in expression: {gene} is {words(r['surrogate_role'])}",
                r["rationale"],
                _source(r["refs"]),
            )
            q = f"Which expression change accompanies the {fusion} fusion in {name}?"
            out.append(
                Row(
                    "fusion-rules",
                    f"fusion-surrogate:{r['cancer_code']}:{fusion}:{gene}",
                    f"oncoref:fusion:{fusion}",
                    text,
                    q,
                    text,
                    {"cancer": r["cancer_code"], "gene": gene},
                )
            )
    return out


def checkpoint_rows(folder: Path, reg: dict[str, Cancer], cancers: list[str]) -> list[Row]:
    out = []
    for r in read_table(folder, "cancer-apd1-response.csv"):
        if r["cancer_code"] in cancers:
            name = reg[r["cancer_code"]].name
            text = _sentences(
                f"In {name}, PD-1 blockade with {r['drug']} ({r['trial_name']}, {r['trial_nct']}; {r['setting']}) "
                f"gave an objective response rate of {r['apd1_orr_pct']}%",
                r["notes"],
                _source(r["pmid_doi"]),
            )
            q = f"How well does PD-1 blockade work in {name}?"
            out.append(
                Row(
                    "checkpoint",
                    f"checkpoint:{r['cancer_code']}:{r['drug']}",
                    f"oncoref:cancer:{r['cancer_code']}",
                    text,
                    q,
                    text,
                    {"cancer": r["cancer_code"]},
                )
            )
    return out


TABLES = {
    "overview": overview_rows,
    "key-genes": key_gene_rows,
    "fusions": fusion_rows,
    "drivers": driver_rows,
    "fusion-rules": fusion_rule_rows,
    "checkpoint": checkpoint_rows,
}


TABLE_FILES = {
    "overview": ["cancer-type-registry.csv"],
    "key-genes": ["cancer-key-genes.csv"],
    "fusions": ["cancer-fusions.csv"],
    "drivers": ["cancer-type-genes.csv", "driver-gene-evidence.csv"],
    "fusion-rules": ["rare-cancer-fusion-rules.csv", "fusion-surrogate-expression.csv"],
    "checkpoint": ["cancer-apd1-response.csv"],
}

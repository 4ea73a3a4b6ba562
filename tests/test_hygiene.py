"""Data hygiene in prepare: duplicates, overlapping groups kept on one side, the leakage check, provenance, and the bad
inputs (all duplicates, broken CSV quoting, mixed encodings). The PHI scrub itself is tests/test_scrub.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from domain_expert.config import DedupConfig, LeakageConfig, load_config
from domain_expert.data import prepare
from domain_expert.data.dedup import UnionFind, deduplicate
from domain_expert.data.leakage import check_leakage, join_overlapping
from domain_expert.data.records import Record, read_records
from domain_expert.errors import DataError

NO_SCRUB = "data.hygiene.scrub.enabled=false"


def qa(i, q, a, group=None, source="s"):
    return Record(id=f"r{i}", group=group or f"g{i}", source=source, task="qa", prompt=q, completion=a)


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer"])
        w.writerows(rows)
    return path


def file_cfg(tmp_path: Path, *paths: Path, extra: tuple[str, ...] = ()):
    sources = ", ".join(f"{{kind: file, path: '{p}', license: 'CC-BY-4.0 (test)'}}" for p in paths)
    return load_config(None, [f"data.sources=[{sources}]", f"output_dir={tmp_path / 'run'}", "data.seed=1", *extra])


def splits_of(out: Path) -> dict[str, list[Record]]:
    return {s: read_records(out / f"{s}.jsonl") for s in ("train", "val", "test")}


def words(t: str) -> list[str]:
    return re.findall(r"\w+", t.lower())


def contained(answer: str, corpus: set[str], n: int = 8) -> float:
    w = words(answer)
    grams = {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}
    return len(grams & corpus) / len(grams) if grams else 0.0


# --- duplicates -------------------------------------------------------------------------------------------------


def test_exact_duplicates_ignore_case_and_punctuation_and_the_first_is_kept():
    recs = [qa(0, "What is anemia?", "Low hemoglobin."), qa(1, "what is ANEMIA", "low hemoglobin"), qa(2, "x?", "y.")]
    res = deduplicate(recs, DedupConfig(), uf := UnionFind())
    assert [r.id for r in res.records] == ["r0", "r2"]
    assert [(r.id, kind) for r, kind in res.removed] == [("r1", "exact")]
    assert uf.find("g1") == uf.find("g0")  # what is left of a removed record's group goes with the kept one


def test_near_duplicate_of_another_group_is_removed_but_a_group_keeps_its_own_variants():
    long = "The number of circulating platelets is reduced below the lower limit of normal for the age of the person"
    recs = [
        qa(0, "Define thrombocytopenia.", long),
        qa(1, "Define thrombocytopenia.", long.replace("person", "patient")),  # one word in 22: Jaccard 0.9+
        qa(2, "What does thrombocytopenia mean?", long, group="g0"),  # a rewording of g0: a deliberate variant
        qa(3, "Define anemia.", "A reduced concentration of hemoglobin or of red cells in the blood of the person"),
    ]
    res = deduplicate(recs, DedupConfig(threshold=0.8), UnionFind())
    assert [r.id for r in res.records] == ["r0", "r2", "r3"]
    assert [(r.id, kind) for r, kind in res.removed] == [("r1", "near")]


def test_overlapping_answers_join_groups_but_template_phrases_do_not():
    template = "relative to the total number of cells in the peripheral blood of the affected person"
    recs = [qa(i, f"What is term {i}?", f"An abnormal proportion of cell type {i} {template}.") for i in range(30)]
    recs += [
        qa(100, "What is A?", "Increased time to coagulation in the prothrombin time test, a measure of the extrinsic"),
        qa(101, "What is B?", "Shortened time to coagulation in the prothrombin time test, a measure of the extrinsic"),
    ]
    uf = UnionFind()
    summary = join_overlapping(recs, LeakageConfig(), uf)
    assert uf.find("g100") == uf.find("g101")
    assert len({uf.find(f"g{i}") for i in range(30)}) == 30  # a phrase 30 groups share is template, not content
    assert summary["joins"] == 1 and summary["template_ngrams_ignored"] > 0


def test_split_keeps_clusters_whole_and_near_the_fractions():
    groups = [f"g{i:03d}" for i in range(200)]
    cluster = {g: f"c{i // 4}" for i, g in enumerate(groups[:80])}  # 20 clusters of 4 groups, 120 singletons
    for seed in range(5):
        where = prepare.split_groups(groups, 0.1, 0.2, seed, cluster)
        for c in set(cluster.values()):
            assert len({where[g] for g in groups if cluster.get(g) == c}) == 1
        counts = {s: sum(v == s for v in where.values()) for s in ("train", "val", "test")}
        assert counts["test"] == 40 and counts["val"] == 20  # fillable exactly: singletons top the sides up


def test_leakage_refuses_moves_or_drops_naming_the_items():
    shared = "a reduction in the number of circulating neutrophils in the blood below the normal range"
    splits = {
        "train": [qa(0, "Define neutropenia.", shared.capitalize() + ".")],
        "val": [],
        "test": [qa(1, "Define low neutrophils.", "Any " + shared + "."), qa(2, "Define x.", "Unrelated answer " * 5)],
    }
    with pytest.raises(DataError, match=r"r1 \(test, 89% of its 8-grams in training\)") as e:
        check_leakage(splits, LeakageConfig(), {})
    assert "on_leak=move" in e.value.fix
    moved = check_leakage(splits, LeakageConfig(on_leak="move"), {})
    assert [r.id for r in moved.splits["train"]] == ["r0", "r1"] and [r.id for r in moved.splits["test"]] == ["r2"]
    assert moved.moved_groups == ["g1"]
    dropped = check_leakage(splits, LeakageConfig(on_leak="drop"), {})
    assert [r.id for r in dropped.splits["train"]] == ["r0"] and dropped.dropped_groups == ["g1"]
    assert [r.id for r in dropped.splits["test"]] == ["r2"]


def test_default_data_has_near_duplicates_across_splits_and_prepare_keeps_them_on_one_side(tmp_path):
    # without the hygiene steps, held-out definitions of the shipped data are mostly found in training answers of
    # sibling terms ("... relative to the total number of T cells"); with them, none is
    out = tmp_path / "plain"
    cfg = load_config("medical-terms", [NO_SCRUB, "data.hygiene.leakage.keep_together=false"])
    with pytest.raises(DataError, match="held-out record\\(s\\) are mostly contained in the training split"):
        prepare.run(cfg, out)
    assert not out.exists()

    out = tmp_path / "clean"
    prepare.run(load_config("medical-terms", [NO_SCRUB]), out)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    joined = manifest["hygiene"]["overlap_clusters"]
    assert joined["joins"] > 0 and joined["groups_joined"] >= 2 * joined["joins"] // 2
    assert manifest["hygiene"]["leakage"]["leaked"] == 0
    s = splits_of(out)
    corpus = set()
    for r in s["train"]:
        w = words(" ".join(x for x in (r.prompt, r.completion, r.text) if x))
        corpus |= {" ".join(w[i : i + 8]) for i in range(len(w) - 7)}
    # an independent count, without the template rule: no held-out answer is mostly training text
    assert max(contained(r.completion, corpus) for r in s["test"] + s["val"]) < 0.5


# --- prepare: provenance and bad input -----------------------------------------------------------------------


def test_records_keep_source_id_licence_and_origin_and_manifest_lists_them(tmp_path):
    rows = [(f"What is term {i}?", f"Term {i} is the name of thing number {i}.") for i in range(30)]
    rows.append(rows[3])  # an exact duplicate row
    path = write_csv(tmp_path / "glossary.csv", rows)
    out = tmp_path / "prepared"
    prepare.run(file_cfg(tmp_path, path, extra=(NO_SCRUB,)), out)
    recs = [r for v in splits_of(out).values() for r in v]
    assert len(recs) == 30
    assert {r.license for r in recs} == {"CC-BY-4.0 (test)"}
    by_id = {r.id: r for r in recs}
    assert by_id["glossary:1"].meta["origin"] == "glossary.csv:2" and by_id["glossary:1"].source == "glossary.csv"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    src = manifest["sources"][0]
    assert (src["records_read"], src["records"], src["license"]) == (31, 30, "CC-BY-4.0 (test)")
    assert manifest["hygiene"]["dedup"]["removed_exact"] == 1
    assert manifest["hygiene"]["by_source"]["glossary.csv"] == {"records": 31, "duplicates": 1, "left": 30}


def test_a_source_of_nothing_but_duplicates_stops_with_counts(tmp_path):
    path = write_csv(tmp_path / "same.csv", [("What is anemia?", "Low hemoglobin.")] * 25)
    out = tmp_path / "prepared"
    with pytest.raises(DataError, match=r"'same.csv' has nothing left to train on: 25 record\(s\).*24 duplicates"):
        prepare.run(file_cfg(tmp_path, path, extra=(NO_SCRUB,)), out)
    assert not out.exists()


def test_a_source_duplicating_another_entirely_stops(tmp_path):
    rows = [(f"What is term {i}?", f"Term {i} is the name of thing number {i}.") for i in range(10)]
    a, b = write_csv(tmp_path / "a.csv", rows), write_csv(tmp_path / "b.csv", rows)
    with pytest.raises(DataError, match=r"'b.csv' has nothing left.*10 duplicates of other records, 0 left"):
        prepare.run(file_cfg(tmp_path, a, b, extra=(NO_SCRUB,)), tmp_path / "prepared")


def test_csv_quote_never_closed_names_the_line_it_opened(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('question,answer\nq1,a1\n"q2 opens a quote,a2\nq3,a3\nq4,a4\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"qa.csv:3: malformed CSV: a quoted field opened on this line is never closed"):
        prepare.run(file_cfg(tmp_path, path, extra=(NO_SCRUB,)), tmp_path / "prepared")


def test_csv_stray_quote_names_its_line(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('question,answer\nq1,a1\nq2,"a2" and more\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"qa.csv:3: malformed CSV") as e:
        prepare.run(file_cfg(tmp_path, path, extra=(NO_SCRUB,)), tmp_path / "prepared")
    assert '""' in e.value.fix


def test_csv_with_mixed_encodings_names_the_first_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_bytes("question,answer\nq1,café\n".encode() + "q2,naïve\n".encode("cp1252") + b"q3,a3\n")
    with pytest.raises(DataError, match=r"qa.csv:3: not UTF-8 text") as e:
        prepare.run(file_cfg(tmp_path, path, extra=(NO_SCRUB,)), tmp_path / "prepared")
    assert "mix encodings" in e.value.fix


# --- the PHI scrub inside prepare ---------------------------------------------------------------------------


PLANTED = {
    "email": "jane.roe@example.org",
    "phone": "(617) 555-0142",
    "mrn": "MRN: 00482913",
    "ssn": "078-05-1120",
    "dob": "DOB 03/14/1962",
    "address": "1234 Elm Street, Springfield, IL 62704",
    "url": "https://portal.example.org/patient?id=88341",
    "name": "Dr. Margaret Chen",
}


def test_prepare_scrubs_planted_identifiers_from_every_output_and_counts_them(tmp_path, capsys):
    rows = [
        (f"What is term {i}?", f"Term {i} names thing number {i} in the glossary of this clinic.") for i in range(30)
    ]
    rows[4] = ("Who do I call about term 4?", f"Call {PLANTED['name']} at {PLANTED['phone']} or {PLANTED['email']}.")
    rows[7] = (
        "What does the intake note say?",
        f"Patient {PLANTED['mrn']}, {PLANTED['dob']}, SSN {PLANTED['ssn']}, lives at {PLANTED['address']}; "
        f"records at {PLANTED['url']}. The note describes mild anemia and fatigue for two weeks.",
    )
    rows.append(("Contact?", f"{PLANTED['email']} {PLANTED['phone']}"))  # nothing but identifiers: dropped
    path = write_csv(tmp_path / "notes.csv", rows)
    out = tmp_path / "prepared"
    prepare.run(file_cfg(tmp_path, path), out)
    written = "".join(p.read_text(encoding="utf-8") for p in out.iterdir()) + "".join(capsys.readouterr())
    for kind, value in PLANTED.items():
        core = value.split(": ")[-1].split(" ", 1)[-1] if kind in ("mrn", "dob") else value
        assert core not in written, kind
    recs = {r.id: r for v in splits_of(out).values() for r in v}
    assert "[PHONE]" in recs["notes:5"].completion and "[EMAIL]" in recs["notes:5"].completion
    assert "[NAME]" in recs["notes:5"].completion
    assert "mild anemia" in recs["notes:8"].completion  # the rest of the text is kept readable
    assert "notes:31" not in recs
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    scrub = manifest["hygiene"]["scrub"]
    assert scrub["records_dropped"] == 1 and scrub["records_changed"] == 3
    assert set(PLANTED) <= set(scrub["found"])
    assert manifest["hygiene"]["by_source"]["notes.csv"]["phi"] == 1
    assert "Includes user-provided data (notes.csv)" in manifest["note"]


def test_a_source_that_is_all_identifiers_stops_with_counts(tmp_path):
    rows = [(f"Contact {i}?", f"{i}{PLANTED['email']} (617) 555-01{i:02d}") for i in range(12)]
    out = tmp_path / "prepared"
    with pytest.raises(
        DataError, match=r"'ids.csv' has nothing left to train on: 12 record\(s\), 12 mostly identifiers"
    ):
        prepare.run(file_cfg(tmp_path, write_csv(tmp_path / "ids.csv", rows)), out)
    assert not out.exists()

"""Knowledge-uptake probes: built in prepare from the facts sources state, labelled held-in / held-out by the split,
leaks refused; scored in evaluate; 'learned' (content / style) computed from verdicts."""

from __future__ import annotations

import json

import pytest

from domain_expert.data.probes import Fact, build_probes, fact_items, short_answer_correct
from domain_expert.data.records import Record
from domain_expert.errors import DataError


def _fact(i: int, group: str, evidence: str | None = None) -> Fact:
    return Fact(
        id=f"F{i}",
        group=group,
        source="src",
        kind="term",
        answer=f"Answer{i}",
        distractors=[f"Answer{i}", "Other one", "Other two", "other one", "Other three"],
        cloze=f"Definition {i}. Term:",
        question=f"Which term is described by definition {i}?",
        evidence=evidence or f"Definition number {i} of the thing",
        accept=[f"Alias{i}"],
    )


def _rec(group: str, prompt: str, completion: str) -> Record:
    return Record(id=f"{group}:{prompt[:8]}", group=group, source="src", task="qa", prompt=prompt,
                  completion=completion)  # fmt: skip


def _splits(train: list[Record], test: list[Record], val: list[Record] | None = None) -> dict[str, list[Record]]:
    return {"train": train, "val": val or [], "test": test}


def test_fact_items_formats_and_options():
    items = fact_items(_fact(1, "g1"), "held_in", choices=4, seed=0, formats=["cloze", "mc", "short"])
    assert [it["format"] for it in items] == ["cloze", "mc", "short"]
    cloze = items[0]
    # the answer once, distractors deduplicated case-insensitively and never equal to the answer
    assert sorted(o.lower() for o in cloze["options"]) == ["answer1", "other one", "other three", "other two"]
    assert cloze["options"][cloze["answer_index"]] == "Answer1"
    assert items[2]["accept"] == ["Answer1", "Alias1"]
    # too few distinct distractors: the choice formats are left out, the short question stays
    f = _fact(2, "g2")
    f.distractors = ["Other one"]
    assert [it["format"] for it in fact_items(f, "held_in", 4, 0, ["cloze", "mc", "short"])] == ["short"]


def test_options_are_deterministic_per_seed():
    a = fact_items(_fact(1, "g1"), "held_in", 4, seed=0, formats=["cloze"])
    b = fact_items(_fact(1, "g1"), "held_in", 4, seed=0, formats=["cloze"])
    assert a == b


def test_short_answer_matches_whole_words_of_any_accepted_name():
    assert short_answer_correct("It is called Anemia.", ["Anemia"])
    assert short_answer_correct("anaemia? no: ALIAS-1 it is", ["Anemia", "alias 1"])
    assert not short_answer_correct("Hypochromic anemias", ["anemia"])  # whole words only
    assert not short_answer_correct("", ["anemia"])


def test_held_in_and_held_out_follow_the_split():
    facts = [_fact(1, "g1"), _fact(2, "g2"), _fact(3, "g3")]
    splits = _splits(train=[_rec("g1", "q", "a")], test=[_rec("g2", "q", "a")], val=[_rec("g3", "q", "a")])
    items, counts = build_probes(facts, splits, choices=4, seed=0, formats=["cloze", "mc", "short"])
    by_fact = {it["fact"]: it["split"] for it in items}
    assert by_fact == {"F1": "held_in", "F2": "held_out"}
    assert counts["held_in"] == 1 and counts["held_out"] == 1 and counts["not_in_train_or_test"] == 1
    assert counts["items"] == {"cloze": 2, "mc": 2, "short": 2}


def test_a_held_out_fact_stated_in_training_is_refused_or_dropped():
    leak = _fact(2, "g2", evidence="Red cells are too few")
    # another group's training record states the held-out fact: its evidence and its answer together
    train = [_rec("g1", "What is it?", "Red cells are too few; this is Answer2.")]
    splits = _splits(train=train, test=[_rec("g2", "q", "a")])
    with pytest.raises(DataError) as e:
        build_probes([leak], splits, choices=4, seed=0, formats=["short"])
    assert "src:F2" in str(e.value) and "on_leak=drop" in str(e.value)
    items, counts = build_probes([leak], splits, choices=4, seed=0, formats=["short"], on_leak="drop")
    assert items == [] and counts["dropped_for_leakage"] == 1


def test_evidence_alone_is_not_a_leak():
    # HPO: a longer definition that contains a shorter term's definition does not teach the shorter term's name
    f = _fact(2, "g2", evidence="A type of anemia with low hemoglobin")
    train = [_rec("g1", "Which term is defined as: A type of anemia with low hemoglobin and small cells", "Other")]
    items, counts = build_probes([f], _splits(train, [_rec("g2", "q", "a")]), choices=4, seed=0, formats=["short"])
    assert counts["held_out"] == 1 and counts["dropped_for_leakage"] == 0


def test_hpo_rewordings_are_training_records_and_never_probe_wordings():
    from domain_expert.data.hpo import DEFINE_WORDINGS, REVERSE_WORDINGS, Term, term_fact, term_records

    t = Term(id="HP:1", name="Anemia", definition="Too few red cells.", synonyms=["Anaemia"], parents=["HP:0"])
    other = Term(id="HP:2", name="Polycythemia", definition="Too many red cells.", parents=["HP:0"])
    recs = term_records(t, "medical-terms", include_comment=False, tasks=["define", "reverse"], wordings=3)
    assert len(recs) == 6 and {r.group for r in recs} == {"HP:1"}
    assert sum(1 for r in recs if r.meta.get("wording")) == 4
    fact = term_fact({"HP:1": t, "HP:2": other, "HP:0": Term(id="HP:0", name="Blood")}, {"HP:0": ["HP:1", "HP:2"]},
                     t, "medical-terms", seed=0)  # fmt: skip
    assert fact.answer == "Anemia" and fact.distractors == ["Polycythemia"]
    assert fact.mc_question.startswith("Too few red cells.")  # the description first: no training wording does that
    prompts = {r.prompt for r in recs}
    for probe_text in (fact.question, fact.mc_question, fact.cloze):
        assert probe_text not in prompts
    for pattern in DEFINE_WORDINGS + REVERSE_WORDINGS:
        assert pattern.split("{")[0] not in (fact.question + fact.mc_question + fact.cloze)


def test_prepare_writes_probes_and_counts(tmp_path):
    from domain_expert.config import load_config
    from domain_expert.data import prepare

    cfg = load_config("medical-terms", ["data.sources.0.max_terms=60"])
    out = prepare.run(cfg, tmp_path / "data")
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["outputs"]["probes.jsonl"]
    items = [json.loads(line) for line in (out / "probes.jsonl").read_text().splitlines()]
    assert len(items) == sum(counts["items"].values()) and counts["held_in"] > counts["held_out"] > 0
    train_groups = {json.loads(line)["group"] for line in (out / "train.jsonl").read_text().splitlines()}
    test_groups = {json.loads(line)["group"] for line in (out / "test.jsonl").read_text().splitlines()}
    for it in items:
        assert it["group"] in (train_groups if it["split"] == "held_in" else test_groups)


def test_probe_items_sample_whole_facts_per_side(tmp_path):
    from domain_expert.config import EvalConfig
    from domain_expert.evaluate.items import probe_items

    rows = []
    for side, n in (("held_in", 30), ("held_out", 5)):
        for i in range(n):
            for fmt in ("cloze", "short"):
                rows.append({"id": f"{side}{i}:{fmt}", "fact": f"{side}{i}", "split": side, "format": fmt})
    path = tmp_path / "probes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = probe_items(path, EvalConfig(probe_facts=10))
    facts_in = {it["fact"] for it in got if it["split"] == "held_in"}
    assert len(facts_in) == 10 and sum(1 for it in got if it["split"] == "held_out") == 10  # all 5 facts x 2
    assert all(sum(1 for it in got if it["fact"] == f) == 2 for f in facts_in)  # every format of a sampled fact
    assert probe_items(path, EvalConfig(probe_facts=0)) == []
    assert probe_items(tmp_path / "missing.jsonl", EvalConfig()) == []


@pytest.mark.parametrize(
    ("verdicts", "summary"),
    [
        ({"probe_held_in": "better", "stopped": "better"}, "content and style"),
        ({"probe_held_in": "better", "stopped": "no detectable difference"}, "content"),
        ({"probe_held_in": "no detectable difference", "length_gap": "better"}, "style only"),
        ({"stopped": "better"}, "style (content not probed)"),
        ({"probe_held_in": "worse", "stopped": "worse"}, "nothing detectable"),
    ],
)
def test_learned_names_content_and_style_from_verdicts(verdicts, summary):
    from domain_expert.evaluate.aggregate import learned

    comparisons = [{"metric": m, "verdict": v, "b": "tuned"} for m, v in verdicts.items()]
    got = learned(comparisons, "tuned")
    assert got["summary"] == summary
    assert got["content"] == verdicts.get("probe_held_in")


def test_aggregate_splits_probe_rows_by_side():
    from domain_expert.config import EvalConfig
    from domain_expert.evaluate.aggregate import aggregate
    from domain_expert.evaluate.specs import ModelSpec

    rows = []
    for i in range(40):
        side = "held_in" if i < 30 else "held_out"
        for model, correct in (("base", i % 4 == 0), ("tuned", i < 25 or i % 4 == 0)):
            rows.append({"model": model, "kind": "probe", "id": f"p{i}", "fact": f"f{i}", "split": side,
                         "format": "cloze" if i % 2 else "short", "fact_kind": "term", "correct": correct})  # fmt: skip
    specs = [ModelSpec("base", "r:base", "run-base", "r"), ModelSpec("tuned", "r", "run", "r")]
    m = aggregate(rows, specs, {"probe": []}, EvalConfig(bootstrap_resamples=200), {"base": "v", "tuned": "v"})
    comp = {c["metric"]: c for c in m["comparisons"]}
    assert comp["probe_held_in"]["n"] == 30 and comp["probe_held_out"]["n"] == 10
    assert comp["probe_held_in"]["verdict"] == "better"
    assert comp["probe_held_out"]["diff"] == 0
    assert m["learned"]["tuned"]["content"] == "better"
    sides = {(c["side"], c["value"]) for c in m["probe_breakdown"] if c["by"] == "format"}
    assert sides == {("held_in", "cloze"), ("held_in", "short"), ("held_out", "cloze"), ("held_out", "short")}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_choice_nll_equals_scoring_each_row_in_full(tiny_model_dir, attn):
    """Batched questions with a shared, left-padded context and the options on its cache give the same NLL as one
    full (context + option) row each; options of different lengths and lists of different sizes included."""
    import torch
    from transformers import AutoModelForCausalLM

    from domain_expert.likelihood import Example, choice_nll, collate, sequence_nll

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn).eval()
    g = torch.Generator().manual_seed(0)

    def seq(n: int) -> list[int]:
        return torch.randint(5, 900, (n,), generator=g).tolist()

    contexts = [seq(12), seq(3), seq(20)]
    options = [[seq(2), seq(5), seq(1), seq(3)], [seq(4), seq(4)], [seq(1), seq(6), seq(2)]]
    with torch.no_grad():
        got = choice_nll(model, contexts, options, pad_id=0)
        for c, opts, row in zip(contexts, options, got, strict=True):
            ids, mask, labels = collate([Example(c + o, len(c)) for o in opts], 0)
            sums, counts = sequence_nll(model, ids, mask, labels)
            assert [n for _, n in row] == counts
            assert [s for s, _ in row] == pytest.approx(sums, rel=1e-4, abs=1e-4)

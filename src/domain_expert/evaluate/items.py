"""The held-out items every model is scored on, built from the run's prepared test split alone: generation questions,
term-recognition multiple choice, general-English chunks (forgetting guard) and held-out domain text."""

from __future__ import annotations

import random
from pathlib import Path

from domain_expert.config import EvalConfig
from domain_expert.errors import DataError

NO_NEIGHBOURS = (
    "the run's data was prepared before `prepare` recorded ontology neighbours in define records, and multiple-choice "
    "distractors come from them: prepare the data again (then fine-tune) to score term recognition"
)


def subsample(items: list, n: int | None, seed: int) -> list:
    if n is None or len(items) <= n:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def build_items(run_dir: Path, cfg: EvalConfig, skipped: list[dict] | None = None) -> dict[str, list[dict]]:
    """Items per kind; a kind that cannot be built for a reason the user can fix is appended to `skipped`."""
    from domain_expert.data.records import read_records

    test_path = run_dir / "data" / "test.jsonl"
    if not test_path.exists():
        raise DataError("the run has no test split", where=str(test_path),
                        fix="prepare with data.test_fraction > 0 (e.g. 0.1), then fine-tune again")  # fmt: skip
    records = read_records(test_path)
    if not records:
        raise DataError("the test split is empty", where=str(test_path),
                        fix="raise data.test_fraction or add data, then prepare again")  # fmt: skip
    # one question per fact: further wordings of the same question (data/hpo.py) would only repeat its reference
    asked = [r for r in records if r.prompt and not r.meta.get("wording")]
    qa = [r for r in asked if r.task in ("define", "qa")] or asked
    generation = [{"id": r.id, "prompt": r.prompt, "reference": r.completion} for r in qa]
    mc, reason = mc_items([r for r in asked if r.task == "define"], cfg)
    if reason is not None and skipped is not None:
        skipped.append({"metric": "correct", "model": "*", "reason": reason})
    texts = subsample([r for r in records if r.is_text], cfg.max_items, cfg.seed)
    return {
        "probe": probe_items(run_dir / "data" / "probes.jsonl", cfg),
        "generation": subsample(generation, cfg.max_items, cfg.seed),
        "mc": mc,
        "general": general_items(cfg),
        "domain_text": [{"id": r.id, "text": r.text} for r in texts],
    }


def mc_items(defines: list, cfg: EvalConfig) -> tuple[list[dict], str | None]:
    """Definition -> term, options = the term and K-1 ontology neighbours (siblings, then the parents' level):
    plausible distractors that share the term's vocabulary, so the model must know the definition, not the topic.
    The neighbours are the ones `prepare` wrote into each define record's meta; returns (items, reason skipped)."""
    if not defines or "term_id" not in defines[0].meta:
        return [], None  # not ontology terms (file, hub or document sources): no multiple choice to build
    if any("neighbours" not in r.meta for r in defines):
        return [], NO_NEIGHBOURS
    out = []
    for r in subsample(defines, cfg.max_items, cfg.seed):
        item = _mc_item(r.id, r.meta, cfg)
        if item is not None:
            out.append(item)
    return out, None


def _mc_item(rid: str, meta: dict, cfg: EvalConfig) -> dict | None:
    """One question, or None when the term has fewer distinct neighbours than distractors wanted."""
    term = meta["term"]
    # the seed string and the shuffle order (each level in id order, shuffled, then concatenated) fix the options
    rng = random.Random(f"{cfg.seed}:{meta['term_id']}")
    pool: list[str] = []
    for level in ("siblings", "parent_level"):
        names = list(meta["neighbours"][level])
        rng.shuffle(names)
        pool += names
    own = {s.lower() for s in meta.get("surfaces", [])} | {term.lower()}
    names = []
    for name in pool:
        if name.lower() not in own and name not in names:
            names.append(name)
        if len(names) == cfg.mc_choices - 1:
            break
    if len(names) < cfg.mc_choices - 1:
        return None
    options = [term, *names]
    rng.shuffle(options)
    question = f"Which medical term is defined as: {meta['definition']}"
    return {"id": rid, "question": question, "options": options, "answer_index": options.index(term)}


def probe_items(path: Path, cfg: EvalConfig) -> list[dict]:
    """The uptake probes `prepare` wrote (data/probes.py): all formats of up to `probe_facts` facts per side, the
    same facts for every model. A run prepared before probes existed has none."""
    if not path.exists() or cfg.probe_facts == 0:
        return []
    from domain_expert.evaluate.rows import read_rows

    items = read_rows(path)
    out = []
    for side in ("held_in", "held_out"):
        facts = sorted({it["fact"] for it in items if it["split"] == side})
        keep = set(subsample(facts, cfg.probe_facts, cfg.seed))
        out += [it for it in items if it["split"] == side and it["fact"] in keep]
    return out


def general_items(cfg: EvalConfig) -> list[dict]:
    """General (non-medical) English that ships with every Python: the language reference topics of pydoc_data."""
    if cfg.general_chunks == 0:
        return []
    from pydoc_data.topics import topics

    keys = sorted(k for k, v in topics.items() if len(v) > 800)
    keys = sorted(random.Random(cfg.seed).sample(keys, min(cfg.general_chunks, len(keys))))
    return [{"id": f"pydoc:{k}", "text": topics[k][:2000]} for k in keys]

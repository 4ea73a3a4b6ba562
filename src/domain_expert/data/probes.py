"""Knowledge-uptake probes: facts the training data states, asked in formats training never uses.

A source that can tell what it teaches returns `Fact`s next to its records. `prepare` turns each fact into up to three
probe items and writes them to `data/probes.jsonl`:

- `cloze`: raw text (no chat template, no question) that the answer completes, e.g. "<definition> In medical
  terminology this is called" -> the answer or one of its distractors; the model's choice is the likeliest option.
- `mc`: a question in a wording no training record uses, in the run's prompt format, options scored the same way.
- `short`: the same kind of unseen question answered freely (greedy); right when the answer names the fact's answer
  or an accepted alias (case and punctuation ignored).

Whether a fact is held-in (taught: its group is in the train split) or held-out (its group is in the test split; never
seen) is decided here, after the split. A held-out fact that a training record states (its evidence and its answer
together) is a leak: the report would call memorisation generalisation, so `prepare` refuses (or, by option, drops
those probes), naming them.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from domain_expert.data.records import Record
from domain_expert.errors import DataError

FORMATS = ("cloze", "mc", "short")
HELD_IN, HELD_OUT = "held_in", "held_out"


@dataclass
class Fact:
    """One thing the data states, with same-kind wrong answers to choose against."""

    id: str  # unique within the source
    group: str  # the group of the records that state it (the split unit)
    source: str
    kind: str  # what sort of fact (e.g. "term", "gene-drug"): a breakdown in the report
    answer: str  # what the model should produce
    distractors: list[str]  # same-kind wrong answers; none equal to the answer
    cloze: str  # raw text the answer completes (ends where the answer goes)
    question: str  # a short question in a wording no training record uses
    evidence: str  # the training text that states the fact (the leakage check looks for it)
    accept: list[str] = field(default_factory=list)  # other names that make a short answer right
    mc_question: str | None = None  # multiple choice asked the other way round; None = `question`
    mc_answer: str | None = None
    mc_distractors: list[str] | None = None


def norm(text: str) -> str:
    """Lower case, punctuation as spaces, single spaces: how short answers and evidence are compared."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def short_answer_correct(answer: str, accept: list[str]) -> bool:
    """Right when any accepted name appears in the answer as whole words ("It is anemia." names "Anemia")."""
    said = f" {norm(answer)} "
    return any(f" {norm(a)} " in said for a in accept if norm(a))


def _options(answer: str, distractors: list[str], n: int, rng: random.Random) -> tuple[list[str], int] | None:
    seen = {norm(answer)}
    picked = []
    for d in distractors:
        if norm(d) not in seen:
            seen.add(norm(d))
            picked.append(d)
        if len(picked) == n - 1:
            break
    if len(picked) < n - 1:
        return None
    options = [answer, *picked]
    rng.shuffle(options)
    return options, options.index(answer)


def fact_items(fact: Fact, split: str, choices: int, seed: int, formats: list[str]) -> list[dict[str, Any]]:
    """The probe items of one fact (a choice format is left out when the fact has too few distinct distractors)."""
    rng = random.Random(f"{seed}:{fact.source}:{fact.id}")
    common = {"fact": fact.id, "group": fact.group, "source": fact.source, "kind": fact.kind, "split": split}
    out = []
    if "cloze" in formats:
        opts = _options(fact.answer, fact.distractors, choices, rng)
        if opts:
            out.append({"id": f"{fact.source}:{fact.id}:cloze", "format": "cloze", "context": fact.cloze,
                        "options": opts[0], "answer_index": opts[1], **common})  # fmt: skip
    if "mc" in formats:
        answer = fact.mc_answer or fact.answer
        opts = _options(answer, fact.mc_distractors or fact.distractors, choices, rng)
        if opts:
            out.append({"id": f"{fact.source}:{fact.id}:mc", "format": "mc", "question": fact.mc_question or
                        fact.question, "options": opts[0], "answer_index": opts[1], **common})  # fmt: skip
    if "short" in formats:
        accept = [fact.answer, *(a for a in fact.accept if norm(a) != norm(fact.answer))]
        out.append({"id": f"{fact.source}:{fact.id}:short", "format": "short", "question": fact.question,
                    "accept": accept, **common})  # fmt: skip
    return out


def training_texts(records: list[Record]) -> list[str]:
    """Every training record's text, normalised, padded with spaces: what the leakage check searches."""
    return [f" {norm(' '.join(x for x in (r.prompt, r.completion, r.text) if x))} " for r in records]


def states(texts: list[str], fact: Fact) -> bool:
    """True when one training record holds both the fact's evidence and its answer (as whole words): that record
    teaches the fact. Evidence alone is not enough: HPO's "Hypochromic microcytic anemia" is defined by
    "Hypochromic anemia"'s definition plus more words, which does not teach that the shorter one is its name."""
    evidence, answer = f" {norm(fact.evidence)} ", f" {norm(fact.answer)} "
    return bool(evidence.strip()) and any(evidence in t and answer in t for t in texts)


def build_probes(facts: list[Fact], splits: dict[str, list[Record]], *, choices: int, seed: int, formats: list[str],
                 on_leak: str = "refuse") -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Probe items for the facts whose group is in train (held-in) or test (held-out), and counts for the manifest.
    A held-out fact whose evidence is in the training text is refused (or dropped with on_leak="drop")."""
    train_groups = {r.group for r in splits["train"]}
    test_groups = {r.group for r in splits["test"]}
    texts = training_texts(splits["train"]) if any(f.group in test_groups for f in facts) else []
    items: list[dict[str, Any]] = []
    leaked: list[str] = []
    counts = {HELD_IN: 0, HELD_OUT: 0, "not_in_train_or_test": 0, "dropped_for_leakage": 0}
    for f in facts:
        if f.group in train_groups:
            split = HELD_IN
        elif f.group in test_groups:
            split = HELD_OUT
            if states(texts, f):
                leaked.append(f"{f.source}:{f.id}")
                continue
        else:
            counts["not_in_train_or_test"] += 1  # validation groups, or records dropped by the split's own check
            continue
        got = fact_items(f, split, choices, seed, formats)
        if got:
            counts[split] += 1
            items += got
    if leaked and on_leak == "refuse":
        shown = ", ".join(leaked[:5]) + (f" and {len(leaked) - 5} more" if len(leaked) > 5 else "")
        raise DataError(
            f"{len(leaked)} held-out probe fact(s) are stated in the training data: {shown}",
            where="data.probes",
            fix="remove the duplicated text from the training sources, or set data.probes.on_leak=drop to leave "
            "those probes out",
        )
    counts["dropped_for_leakage"] = len(leaked)
    counts["items"] = _by(items, "format")
    counts["kinds"] = _by(items, "kind")
    return items, counts


def _by(items: list[dict], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it[key]] = out.get(it[key], 0) + 1
    return out

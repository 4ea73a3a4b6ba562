"""Overlap between groups by word n-grams (the contamination measure of GPT-3 and later reports; n = 8 by default).

A record overlaps another group when at least `threshold` of its answer's n-grams (or its raw text's) occur in that
group's text (prompts, answers and raw text all count: an answer shown as a prompt is as seen as one shown as an
answer). Two uses:
- before the split, `join_overlapping` joins such groups into one cluster, so they land on one side (HPO siblings
  with templated definitions: "An abnormally decreased proportion of naive T cells relative to the total number of
  T cells" vs "Any abnormality in the proportion of naive T cells ...");
- after it, `check_leakage` checks every val/test record against the whole training split, and refuses, moves or
  drops what still leaks (a safety net: with `keep_together` on it finds nothing on the shipped data).

n-grams found in many groups are template, not content ("relative to the total number of"), and are not counted:
otherwise every answer of a templated dataset would overlap. A record shorter than n words is not checked (counted):
exact and near duplicates of short records are the dedup step's business.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from domain_expert.config import LeakageConfig
from domain_expert.data.dedup import UnionFind, content, words
from domain_expert.data.records import Record
from domain_expert.errors import DataError

# an n-gram in more training groups than this (and than TEMPLATE_SHARE of them) is template
TEMPLATE_MIN_GROUPS = 5
TEMPLATE_SHARE = 0.02


def ngrams(text: str, n: int) -> set[str]:
    w = words(text)
    return {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}


def _checked_text(r: Record) -> str:
    # what a held-out record asks the model to produce: the reference answer, or the raw text it is scored on
    return r.completion if r.completion is not None else (r.text or "")


def _index(records: Iterable[Record], n: int) -> dict[str, set[str]]:
    """n-gram -> the groups whose text holds it."""
    owners: dict[str, set[str]] = {}
    for r in records:
        for g in ngrams(content(r), n):
            owners.setdefault(g, set()).add(r.group)
    return owners


def _template(owners: dict[str, set[str]], n_groups: int) -> set[str]:
    limit = max(TEMPLATE_MIN_GROUPS, TEMPLATE_SHARE * n_groups)
    return {g for g, o in owners.items() if len(o) > limit}


def join_overlapping(records: list[Record], cfg: LeakageConfig, uf: UnionFind, *, max_examples: int = 5) -> dict:
    """Join every group to the groups its records' answers overlap (see the module doc); counts for the manifest."""
    n = cfg.ngram
    owners = _index(records, n)
    template = _template(owners, len({r.group for r in records}))
    joins, examples = 0, []
    for r in records:
        grams = ngrams(_checked_text(r), n) - template
        if not grams:
            continue
        covered = [g for g in grams if owners.get(g, set()) - {r.group}]
        share = len(covered) / len(grams)
        if share < cfg.threshold:
            continue
        # the answer is mostly found elsewhere, possibly pieced together from several groups: join every one of them,
        # since any of them in training would show the model part of this answer (the check after the split counts
        # the training split as a whole, and this must agree with it)
        for other in sorted({o for g in covered for o in owners[g]} - {r.group}):
            if uf.find(other) != uf.find(r.group):
                uf.union(r.group, other)
                joins += 1
                if len(examples) < max_examples:
                    examples.append({"record": r.id, "overlaps_group": other, "share": round(share, 3)})
    return {"joins": joins, "template_ngrams_ignored": len(template), "examples": examples}


@dataclass
class Leak:
    id: str
    split: str
    group: str
    share: float  # of the record's n-grams found in training
    example: str  # one of the shared n-grams (already scrubbed text)


@dataclass
class LeakageResult:
    splits: dict[str, list[Record]]
    leaks: list[Leak] = field(default_factory=list)
    checked: int = 0
    too_short: int = 0
    template_ngrams: int = 0
    moved_groups: list[str] = field(default_factory=list)
    dropped_groups: list[str] = field(default_factory=list)
    max_share: float = 0.0

    def summary(self, cfg: LeakageConfig) -> dict:
        return {
            "ngram": cfg.ngram,
            "threshold": cfg.threshold,
            "on_leak": cfg.on_leak,
            "checked": self.checked,
            "too_short": self.too_short,
            "template_ngrams_ignored": self.template_ngrams,
            "leaked": len(self.leaks),
            "max_share": round(self.max_share, 3),
            "moved_groups": len(self.moved_groups),
            "dropped_groups": len(self.dropped_groups),
            "leaks": [vars(x) for x in self.leaks[:20]],
        }


def check_leakage(splits: dict[str, list[Record]], cfg: LeakageConfig, cluster: dict[str, str]) -> LeakageResult:
    """Find leaking val/test records; refuse (DataError naming them), move their clusters to train, or drop them."""
    n = cfg.ngram
    # template as join_overlapping saw it (counted over every split), so the two agree on what is content
    every = [r for s in ("train", "val", "test") for r in splits[s]]
    owners = _index(every, n)
    template = _template(owners, len({r.group for r in every}))
    # seen in training: held by a training group (a group lies in one split only), from the same one index
    train_groups = {r.group for r in splits["train"]}
    seen = {g for g, o in owners.items() if not o.isdisjoint(train_groups)} - template

    res = LeakageResult(splits=splits, template_ngrams=len(template))
    for split in ("val", "test"):
        for r in splits[split]:
            grams = ngrams(_checked_text(r), n) - template
            if not grams:
                res.too_short += 1
                continue
            res.checked += 1
            shared = grams & seen
            share = len(shared) / len(grams)
            res.max_share = max(res.max_share, share)
            if share >= cfg.threshold:
                res.leaks.append(Leak(r.id, split, r.group, round(share, 3), min(shared)))
    if not res.leaks:
        return res
    if cfg.on_leak == "refuse":
        shown = "; ".join(f"{x.id} ({x.split}, {x.share:.0%} of its {n}-grams in training)" for x in res.leaks[:5])
        more = f" and {len(res.leaks) - 5} more" if len(res.leaks) > 5 else ""
        raise DataError(
            f"{len(res.leaks)} held-out record(s) are mostly contained in the training split: {shown}{more}",
            where="data.hygiene.leakage",
            fix="remove the overlapping rows from your data, or set data.hygiene.leakage.on_leak=move (their groups go "
            "to train) or =drop, or raise data.hygiene.leakage.threshold",
        )
    # move / drop whole clusters: the rest of a leaking record's cluster is as close to training as it is
    bad = {cluster.get(x.group, x.group) for x in res.leaks}
    out: dict[str, list[Record]] = {"train": list(splits["train"]), "val": [], "test": []}
    for split in ("val", "test"):
        for r in splits[split]:
            if cluster.get(r.group, r.group) not in bad:
                out[split].append(r)
            elif cfg.on_leak == "move":
                out["train"].append(r)
    moved = sorted({r.group for s in ("val", "test") for r in splits[s] if cluster.get(r.group, r.group) in bad})
    if cfg.on_leak == "move":
        res.moved_groups = moved
    else:
        res.dropped_groups = moved
    res.splits = out
    return res

"""Exact and near-duplicate records, within and across sources (MinHash LSH from `datasketch` finds the candidates;
the decision is the exact Jaccard of word 5-gram sets, so it does not depend on hash luck).

A record whose normalised content equals an earlier one's, or whose Jaccard with a record of another group reaches
`threshold`, is dropped (the first seen wins: source order, then record order), and what is left of its group is
joined to the other's cluster, so the split puts them on one side. Groups that merely overlap (HPO siblings with
templated definitions) are joined by data/leakage.py.

Records of one group are never removed as duplicates of each other: they are deliberate variants (rewordings of one
term, the overlapping windows of one document) and already share a side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from domain_expert.config import DedupConfig
from domain_expert.data.records import Record

SHINGLE_WORDS = 5
_WORD = re.compile(r"\w+")


def content(r: Record) -> str:
    """What a record says: the prompt and its answer, or the raw text."""
    return " ".join(x for x in (r.prompt, r.completion, r.text) if x)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def shingles(text: str, n: int = SHINGLE_WORDS) -> frozenset[str]:
    """Word n-grams; a text shorter than n words is one shingle (so short texts match only when equal)."""
    w = words(text)
    if len(w) <= n:
        return frozenset([" ".join(w)]) if w else frozenset()
    return frozenset(" ".join(w[i : i + n]) for i in range(len(w) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class DedupResult:
    records: list[Record]  # what is kept, in the input order
    removed: list[tuple[Record, str]] = field(default_factory=list)  # (record, "exact" | "near")
    examples: list[dict] = field(default_factory=list)  # a few removed records (ids only), for the manifest

    def summary(self) -> dict:
        return {
            "removed_exact": sum(k == "exact" for _, k in self.removed),
            "removed_near": sum(k == "near" for _, k in self.removed),
            "examples": self.examples,
        }


class UnionFind:
    """Groups joined into clusters (the split assigns clusters)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the smaller id names the cluster: deterministic whatever the order of the unions
            self.parent[max(ra, rb)] = min(ra, rb)

    def clusters(self, groups) -> dict[str, str]:
        return {g: self.find(g) for g in groups}


def deduplicate(records: list[Record], cfg: DedupConfig, uf: UnionFind, *, max_examples: int = 5) -> DedupResult:
    from datasketch import MinHash, MinHashLSH

    removed: list[tuple[Record, str]] = []
    examples: list[dict] = []

    def drop(r: Record, kind: str, kept_id: str, sim: float) -> None:
        removed.append((r, kind))
        if len(examples) < max_examples:
            examples.append({"removed": r.id, "kind": kind, "duplicate_of": kept_id, "jaccard": round(sim, 3)})

    # 1. exact: same normalised words (case, punctuation and spacing do not make a record new)
    seen: dict[str, Record] = {}
    unique: list[Record] = []
    for r in records:
        key = " ".join(words(content(r)))
        first = seen.get(key)
        if first is None:
            seen[key] = r
            unique.append(r)
        elif first.group == r.group:
            unique.append(r)  # a deliberate variant of its own group (e.g. the same answer to two wordings)
        else:
            uf.union(r.group, first.group)
            drop(r, "exact", first.id, 1.0)

    # 2. near: LSH proposes pairs; exact Jaccard decides
    sh = [shingles(content(r)) for r in unique]
    hashes = MinHash.bulk([[s.encode() for s in x] for x in sh], num_perm=cfg.num_perm, seed=1)
    # LSH at a lower threshold than the decision, so that pairs just above it are rarely missed
    lsh = MinHashLSH(threshold=max(0.1, cfg.threshold - 0.2), num_perm=cfg.num_perm)
    kept: list[Record] = []
    for i, (r, m) in enumerate(zip(unique, hashes, strict=True)):
        drop_it = False
        for j in sorted(lsh.query(m)):
            other = unique[j]
            if other.group == r.group:
                continue
            sim = jaccard(sh[i], sh[j])
            if sim >= cfg.threshold:
                uf.union(r.group, other.group)  # what is left of r's group shares the other's side
                drop(r, "near", other.id, sim)
                drop_it = True
                break
        if not drop_it:
            lsh.insert(i, m)
            kept.append(r)

    return DedupResult(records=kept, removed=removed, examples=examples)

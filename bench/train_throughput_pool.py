"""Pool several `bench/train_throughput.py` results: the speed ratio of each side-by-side run, and the validation loss
of finetune's defaults vs the naive Trainer seed by seed, over every seed any run trained.

    .venv/bin/python bench/train_throughput_pool.py RESULT.json [RESULT.json@ROW ...] [--row NAME] [--out FILE]

`@ROW` names the row of finetune's defaults in that file when it is not `--row` (e.g. a run made while another
default was on, with today's default as a `--lever` row).

Why: the naive fp32 loop's speed varies between runs on this machine (115-135 tokens/s) while finetune's stays
within a few percent, so one run's ratio says little; and two seeds of one side differ by up to 1%, more than the
two sides differ, so "equal or better validation loss" needs the seeds paired. Each run is one side-by-side
measurement (its ratio is that run's mean finetune tokens/s over that run's mean naive tokens/s). A seed trained in
several runs counts once per run for speed, and for loss its val losses are averaged per side first (the naive
Trainer is not bit-reproducible across runs). The interval is mean +- 2 standard errors of the paired differences.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

NAIVE = "naive Trainer fp32"


def pool(results: list[tuple[dict, str]]) -> dict:
    """`results`: (result.json contents, name of the finetune row to compare) per run."""
    runs, naive_loss, ours_loss = [], {}, {}
    for res, row in results:
        rows = res["rows"]
        if NAIVE not in rows or row not in rows:
            continue
        runs.append(
            {
                "row": row,
                "naive_tokens_per_s": rows[NAIVE]["tokens_per_s"],
                "tokens_per_s": rows[row]["tokens_per_s"],
                "ratio": rows[row]["tokens_per_s"] / rows[NAIVE]["tokens_per_s"],
                "seeds": sorted(int(s) for s in rows[row]["seeds"]),
            }
        )
        for side, into in ((NAIVE, naive_loss), (row, ours_loss)):
            for seed, s in rows[side]["seeds"].items():
                into.setdefault(int(seed), []).append(s["val_loss"])
    if not runs:
        raise SystemExit(f"no result has both the {NAIVE!r} row and the finetune row asked for")
    seeds = sorted(set(naive_loss) & set(ours_loss))
    diffs = [statistics.mean(ours_loss[s]) - statistics.mean(naive_loss[s]) for s in seeds]
    out = {
        "runs": runs,
        "ratio_mean": statistics.mean(r["ratio"] for r in runs),
        "ratio_min": min(r["ratio"] for r in runs),
        "runs_at_or_above_4x": sum(r["ratio"] >= 4 for r in runs),
        "val_loss": {
            str(s): {"naive": statistics.mean(naive_loss[s]), "ours": statistics.mean(ours_loss[s])} for s in seeds
        },
        "val_loss_naive_mean": statistics.mean(statistics.mean(naive_loss[s]) for s in seeds),
        "val_loss_ours_mean": statistics.mean(statistics.mean(ours_loss[s]) for s in seeds),
        "paired_diff_mean": statistics.mean(diffs),
        "seeds_ours_better": sum(d < 0 for d in diffs),
    }
    if len(diffs) > 1:
        se = statistics.stdev(diffs) / len(diffs) ** 0.5
        out["paired_diff_interval"] = [out["paired_diff_mean"] - 2 * se, out["paired_diff_mean"] + 2 * se]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="result.json files of bench/train_throughput.py, each PATH[@ROW]")
    ap.add_argument("--row", default="domain-expert finetune", help="the finetune row to compare with the naive one")
    ap.add_argument("--out", type=Path, help="write the pooled figures as JSON")
    args = ap.parse_args(argv)
    results, names = [], []
    for arg in args.results:
        path, _, row = arg.partition("@")
        try:
            res = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{path}: cannot read it ({e}); give result.json files of train_throughput.py") from None
        if res.get("overrides"):
            raise SystemExit(f"{path}: trained with --set {res['overrides']}; pool runs of the defaults only")
        results.append((res, row or args.row))
        names.append(Path(path).name)
    p = pool(results)
    print(f"{len(p['runs'])} side-by-side runs, finetune's defaults vs {NAIVE!r}:")
    for name, r in zip(names, p["runs"], strict=False):
        print(f"  {name} [{r['row']}]: naive {r['naive_tokens_per_s']:.1f}, ours {r['tokens_per_s']:.1f} tokens/s, "
              f"{r['ratio']:.2f}x (seeds {r['seeds']})")  # fmt: skip
    print(f"ratio: mean {p['ratio_mean']:.2f}x, lowest {p['ratio_min']:.2f}x, "
          f"{p['runs_at_or_above_4x']} of {len(p['runs'])} runs >= 4x")  # fmt: skip
    print("val loss by seed (naive / ours):")
    for s, v in p["val_loss"].items():
        print(f"  seed {s}: {v['naive']:.4f} / {v['ours']:.4f} ({v['ours'] - v['naive']:+.4f})")
    line = (f"mean: naive {p['val_loss_naive_mean']:.4f}, ours {p['val_loss_ours_mean']:.4f}; paired difference "
            f"{p['paired_diff_mean']:+.4f}")  # fmt: skip
    if "paired_diff_interval" in p:
        lo, hi = p["paired_diff_interval"]
        line += f" (+-2 s.e.: {lo:+.4f} .. {hi:+.4f})"
    print(line + f"; ours lower on {p['seeds_ours_better']} of {len(p['val_loss'])} seeds")
    if args.out:
        from domain_expert.fsutil import write_json_atomic
        from domain_expert.provenance import stamp

        write_json_atomic(args.out, {"stamp": stamp(None if argv is None else [__file__, *argv]), **p})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

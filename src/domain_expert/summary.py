"""Terminal summaries of an evaluation: the verdict table and the base-vs-tuned side by side."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path


def print_verdicts(metrics_path: Path) -> None:
    m = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
    print(f"\n{'metric':42} {'a':>8} {'b':>8} {'diff':>8}  {'95% CI':19} {'p':>8}  verdict")
    for c in m["comparisons"]:
        ci = f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]" if "ci_low" in c else ""
        p = f"{c['pvalue']:.2g}" if "pvalue" in c else ""
        print(
            f"{c['label'][:42]:42} {c['base_mean']:8.3f} {c['tuned_mean']:8.3f} {c['diff']:+8.3f}  {ci:19} {p:>8}  "
            f"{c['verdict']}  ({c['b']} vs {c['a']}, n={c['n']})"
        )
    for s in m.get("skipped", []):
        print(f"skipped {s['metric']} for {s['model']}: {s['reason']}")


def side_by_side(items_path: Path, n: int, base: str = "base", tuned: str = "tuned", width: int = 100) -> None:
    rows = [json.loads(x) for x in Path(items_path).read_text(encoding="utf-8").splitlines() if x.strip()]
    gen = {(r["model"], r["id"]): r for r in rows if r["kind"] == "generation"}
    ids = [r["id"] for r in rows if r["kind"] == "generation" and r["model"] == tuned][:n]

    def wrap(label: str, text: str) -> str:
        return textwrap.fill(
            text or "(empty)", width=width, initial_indent=f"  {label:<11} ", subsequent_indent=" " * 14
        )

    for i in ids:
        b, t = gen.get((base, i)), gen.get((tuned, i))
        if not b or not t:
            continue
        print(f"\nQ: {t['prompt']}")
        print(wrap("reference", t["reference"]))
        print(wrap(f"base {b['rougeL']:.2f}", b["answer"]))
        print(wrap(f"tuned {t['rougeL']:.2f}", t["answer"]))

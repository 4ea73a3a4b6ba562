"""Side by side: scoring multiple-choice and probe options the naive way (one full context + option row each,
`LocalEngine.nll`) vs several questions per pass on a shared cached context (`LocalEngine.choices`,
likelihood.choice_nll), on a run's real evaluation items, base and tuned. Checks both pick the same options.

    .venv/bin/python bench/eval_choice_scoring.py runs/medical-terms [--repeats 2] [--out FILE]

Writes a stamped JSON (default bench/results/eval_choice_scoring.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _questions(engine, items: dict) -> list[tuple[list[int], list[list[int]]]]:
    out = []
    for it in items["mc"]:
        out.append((engine.prompt_ids(it["question"]), [engine.answer_ids(o) for o in it["options"]]))
    for it in items["probe"]:
        if it["format"] == "cloze":
            pairs = [engine.cloze_ids(it["context"], o) for o in it["options"]]
            out.append((pairs[0][0], [x for _, x in pairs]))
        elif it["format"] == "mc":
            out.append((engine.prompt_ids(it["question"]), [engine.answer_ids(o) for o in it["options"]]))
    return out


def _naive(engine, questions) -> list[list[tuple[float, int]]]:
    flat = engine.nll([(c, o) for c, opts in questions for o in opts])
    out, k = [], 0
    for _, opts in questions:
        out.append(flat[k : k + len(opts)])
        k += len(opts)
    return out


def _best(scores: list[tuple[float, int]]) -> int:
    return min(range(len(scores)), key=lambda j: scores[j][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/eval_choice_scoring.json"))
    args = ap.parse_args()

    from domain_expert.config import load_config
    from domain_expert.evaluate.items import build_items
    from domain_expert.evaluate.scoring import local_engine
    from domain_expert.evaluate.specs import parse_model
    from domain_expert.fsutil import write_json_atomic
    from domain_expert.provenance import stamp

    cfg = load_config(str(args.run / "finetune" / "config.yaml")).evaluate
    items = build_items(args.run, cfg)
    cache: dict = {}
    result: dict = {"stamp": stamp(), "run": str(args.run), "models": {}}
    for spec in (f"{args.run}:base", str(args.run)):
        engine = local_engine(parse_model(spec), cfg, cache)
        questions = _questions(engine, items)
        times: dict[str, list[float]] = {"naive": [], "shared_context": []}
        for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both sides
            for name, fn in (
                ("naive", _naive),
                ("shared_context", lambda e, q: e.choices([c for c, _ in q], [o for _, o in q])),
            ):
                t0 = time.perf_counter()
                scores = fn(engine, questions)
                times[name].append(round(time.perf_counter() - t0, 2))
                if name == "naive":
                    naive = scores
                else:
                    shared = scores
        same = sum(_best(a) == _best(b) for a, b in zip(naive, shared, strict=True))
        diff = max(abs(x[0] - y[0]) for a, b in zip(naive, shared, strict=True) for x, y in zip(a, b, strict=True))
        label = "base" if spec.endswith(":base") else "tuned"
        result["models"][label] = {
            "questions": len(questions),
            "options": sum(len(o) for _, o in questions),
            "seconds": times,
            "speedup": round(min(times["naive"]) / min(times["shared_context"]), 2),
            "same_choice": f"{same}/{len(questions)}",
            "max_abs_nll_diff": diff,
        }
        print(label, json.dumps(result["models"][label]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

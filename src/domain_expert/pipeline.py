"""`domain-expert run`: every stage on one config, into one run folder, ending with the comparative evaluation and
its report, a base-vs-tuned side by side, and where everything is."""

from __future__ import annotations

import time
from pathlib import Path

from domain_expert.config import RunConfig, dump_config
from domain_expert.fsutil import check_output_dir, write_json_atomic, write_text_atomic
from domain_expert.provenance import peak_rss_mib


def run(cfg: RunConfig, *, overwrite: bool = False) -> Path:
    from domain_expert import evaluate, export, finetune, report
    from domain_expert.data import prepare
    from domain_expert.models import resolve_model
    from domain_expert.summary import print_verdicts, side_by_side

    run_dir = cfg.run_dir
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
    data_dir = timed("prepare", lambda: prepare.run(cfg, run_dir / "data", overwrite=overwrite))
    ft_dir = timed("finetune", lambda: finetune.run(cfg, data_dir, run_dir / "finetune", overwrite=overwrite))
    exp_dir = timed("export", lambda: export.run(ft_dir, run_dir / "export", overwrite=overwrite))
    eval_dir = timed("evaluate", lambda: evaluate.run(run_dir, overwrite=True))
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
    print(f"""
[domain-expert] run '{cfg.name}' finished in {total / 60:.1f} min (peak memory {peak_rss_mib() / 1024:.1f} GiB)
  prepared data   {data_dir}   (manifest.json: sources, licences, hashes)
  adapter         {ft_dir}   (metrics.jsonl, TensorBoard: tensorboard --logdir {ft_dir / "tb"})
  merged model    {exp_dir}   (plain Hugging Face folder + model card)
  evaluation      {eval_dir}   (items.jsonl per item, metrics.json)
  report          {report_dir / "report.html"}   (and report.md)
Ask it:   domain-expert generate {run_dir} "What is thrombocytopenia?"   (add --base for the untuned model)
Chat:     domain-expert chat {run_dir}
Serve:    domain-expert serve {run_dir}   (OpenAI API on http://127.0.0.1:8000/v1, models {run_dir.name}[:base])
Not a clinician: answers can be wrong; not medical advice.""")
    return run_dir


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

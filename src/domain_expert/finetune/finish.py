"""After the last step, rank 0 writes the results: the adapter (fp32 weights) and tokenizer, train_summary.json,
and stage.json last, whose presence marks the folder complete."""

from __future__ import annotations

import time
from pathlib import Path

from domain_expert.finetune.state import Trainer
from domain_expert.fsutil import write_json_atomic
from domain_expert.provenance import peak_rss_mib


def summary(tr: Trainer, elapsed: float) -> dict:
    """train_summary.json: what the run did; `elapsed` is the schedule's clock at the end, in seconds."""
    p, train = tr.progress, tr.data.train
    return {
        "steps": p.step,
        "planned_steps": tr.plan.total_steps,
        "stopped_by": tr.stopped_by,
        "epochs_seen": round(p.step / tr.plan.steps_per_epoch, 3),
        "train_examples": len(train),
        "truncated_examples": tr.data.truncated,
        "trained_tokens": p.tokens,
        "seconds": round(elapsed, 1),
        "eval_seconds": round(p.eval_s, 1),
        "tokens_per_s": round(p.tokens / max(elapsed - p.eval_s, 1e-9), 1),
        "val_loss_start": p.first_val,
        "val_loss_end": p.last_val,
        "trainable_params": tr.n_trainable,
        "total_params": tr.n_total,
        "processes": tr.d.world,
        "resumed_from_step": tr.ckpt.state.get("step") if tr.ckpt else None,
        "peak_rss_mib": peak_rss_mib(),
    }


def finish(tr: Trainer) -> Path:
    """Close the logs and write the results (rank 0; the other ranks only return the folder)."""
    from domain_expert.hardware import dtype_name

    elapsed = time.time() - tr.t0
    out_dir, p = tr.out_dir, tr.progress
    if not tr.d.main:
        return out_dir
    tr.log.close()
    with tr.fp32_weights_in_model():
        tr.model.save_pretrained(out_dir)  # adapter_config.json + adapter_model.safetensors
    tr.tokenizer.save_pretrained(out_dir)
    result = summary(tr, elapsed)
    write_json_atomic(out_dir / "train_summary.json", result)
    stage = {
        "stage": "finetune",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": tr.resolved.__dict__,
        "device": tr.device,
        "dtype": dtype_name(tr.dtype),
        "data_dir": str(tr.data_dir.resolve()),
        "data_manifest_sha256": tr.settings["data_manifest_sha256"],
        "summary": result,
    }
    write_json_atomic(out_dir / "stage.json", stage)
    done_msg = f"finetune done: {p.step} steps in {elapsed / 60:.1f} min ({result['tokens_per_s']:.0f} tokens/s)"
    if p.first_val is not None and p.last_val is not None:
        done_msg += f", val loss {p.first_val:.3f} -> {p.last_val:.3f}"
    tr.say(done_msg)
    return out_dir

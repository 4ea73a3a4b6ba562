"""`domain-expert finetune`: LoRA (PEFT) on a causal LM, loss on answer tokens only, EOS learned.

Writes into the run's finetune folder: the adapter, tokenizer, resolved config, prompt format, metrics.jsonl,
TensorBoard logs, checkpoints, and stage.json last (its presence marks the folder complete).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from domain_expert.config import RunConfig, dump_config
from domain_expert.errors import DataError, RunFolderError
from domain_expert.fsutil import (
    check_output_dir,
    read_json,
    sha256_file,
    staged_dir,
    write_json_atomic,
    write_text_atomic,
)
from domain_expert.provenance import peak_rss_mib

KEEP_CHECKPOINTS = 2


def check_prepared(data_dir: Path) -> dict:
    manifest = data_dir / "manifest.json"
    if not manifest.exists():
        raise RunFolderError(
            "not a prepared dataset (no manifest.json)", where=str(data_dir), fix="run `domain-expert prepare` first"
        )
    return read_json(manifest)


def lr_factor(step: int, total: int, warmup: int, elapsed: float, budget_s: float | None) -> float:
    """Linear warmup then cosine decay to 10%. Progress is the further of steps and time, so a run stopped by the
    wall-clock budget still ends with a decayed learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if budget_s:
        progress = max(progress, elapsed / budget_s)
    progress = min(1.0, progress)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def run(cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    import torch
    from tqdm.auto import tqdm

    from domain_expert.batching import collate, encode_records, length_grouped_batches, split_by_tokens
    from domain_expert.data.records import read_records
    from domain_expert.hardware import dtype_name, resolve_device, resolve_dtype
    from domain_expert.losses import causal_lm_loss
    from domain_expert.models import load_causal_lm, load_tokenizer, resolve_model
    from domain_expert.prompts import from_config

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    resolved = resolve_model(cfg.model)  # a bad model reference is the likelier mistake: say it first
    data_manifest = check_prepared(data_dir)
    check_output_dir(out_dir, overwrite)
    t_cfg = cfg.train
    device = resolve_device(t_cfg.device)
    dtype = resolve_dtype(t_cfg.dtype, device)
    if t_cfg.quantization == "4bit" and device != "cuda":
        raise RunFolderError(
            "QLoRA (train.quantization=4bit) needs a CUDA GPU",
            where="train.quantization",
            fix="set train.quantization=none on this machine",
        )
    torch.manual_seed(t_cfg.seed)

    tokenizer = load_tokenizer(resolved.path)
    fmt = from_config(cfg.prompt.style, cfg.prompt.system)
    train_recs = read_records(data_dir / "train.jsonl")
    val_recs = read_records(data_dir / "val.jsonl")
    train, n_trunc = encode_records(train_recs, fmt, tokenizer, t_cfg.max_seq_len)
    val, _ = encode_records(val_recs, fmt, tokenizer, t_cfg.max_seq_len)
    if not train:
        raise DataError(
            "no trainable examples (all prompts fill max_seq_len?)",
            where=str(data_dir / "train.jsonl"),
            fix="raise train.max_seq_len",
        )

    attn = t_cfg.attn_implementation
    if attn == "auto":
        attn = "eager" if device == "cpu" else "sdpa"
    model = load_causal_lm(resolved.path, dtype=dtype, device=device, quantization=t_cfg.quantization, attn=attn)
    model = _add_lora(model, cfg, tokenizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(trainable, lr=t_cfg.learning_rate, weight_decay=t_cfg.weight_decay)

    lengths = [len(e.ids) for e in train]
    batches_per_epoch = math.ceil(len(train) / t_cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / t_cfg.grad_accum)
    total_steps = max(1, math.ceil(t_cfg.epochs * steps_per_epoch))
    if t_cfg.max_steps:
        total_steps = min(total_steps, t_cfg.max_steps)
    budget_s = t_cfg.max_minutes * 60 if t_cfg.max_minutes else None

    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for stale in ("stage.json", "metrics.jsonl", "checkpoints", "tb"):
            p = out_dir / stale
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    write_text_atomic(out_dir / "config.yaml", dump_config(cfg))
    fmt.save(out_dir)
    write_json_atomic(out_dir / "data_manifest.json", data_manifest)
    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(str(out_dir / "tb"))
    metrics = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")

    def log(row: dict) -> None:
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        for k, v in row.items():
            if k != "step" and isinstance(v, int | float):
                tb.add_scalar(k, v, row["step"])

    def evaluate() -> float | None:
        if not val:
            return None
        model.eval()
        order = sorted(range(len(val)), key=lambda i: len(val[i].ids))
        chunks = [order[i : i + t_cfg.batch_size] for i in range(0, len(order), t_cfg.batch_size)]
        if t_cfg.max_val_batches:
            # spread the capped batches over all lengths so the estimate is not biased to short examples
            step_ = max(1, len(chunks) // t_cfg.max_val_batches)
            chunks = chunks[::step_][: t_cfg.max_val_batches]
        total, count = 0.0, 0
        with torch.no_grad():
            for ch in chunks:
                ids, mask, labels = (t.to(device) for t in collate([val[i] for i in ch], tokenizer.pad_token_id))
                s, n = causal_lm_loss(model, ids, mask, labels, reduction="sum")
                total, count = total + float(s), count + n
        model.train()
        return total / max(1, count)

    print(
        f"[domain-expert] finetune {resolved.reference} on {device}/{dtype_name(dtype)}: {len(train)} examples, "
        f"{total_steps} steps, LoRA r={cfg.lora.r} ({n_trainable / 1e6:.2f}M of {n_total / 1e6:.1f}M params trainable)"
        + (f", budget {t_cfg.max_minutes:g} min" if budget_s else ""),
        flush=True,
    )
    model.train()
    first_val = evaluate()
    step, tokens, t0, eval_s = 0, 0, time.time(), 0.0
    if first_val is not None:
        log({"step": 0, "val_loss": first_val, "elapsed_s": 0.0})
    last_val, stopped_by = first_val, "steps"
    bar = tqdm(total=total_steps, unit="step", desc="finetune", dynamic_ncols=True)
    epoch = 0
    done = False
    while not done:
        batches = length_grouped_batches(len(train), lengths, t_cfg.batch_size, t_cfg.seed, epoch)
        for b0 in range(0, len(batches), t_cfg.grad_accum):
            group = batches[b0 : b0 + t_cfg.grad_accum]
            n_lab = sum(sum(len(train[i].ids) - max(1, train[i].start) for i in b) for b in group)
            loss_sum = 0.0
            micro = [mb for b in group for mb in split_by_tokens(b, lengths, t_cfg.max_batch_tokens)]
            for b in micro:
                ids, mask, labels = (t.to(device) for t in collate([train[i] for i in b], tokenizer.pad_token_id))
                s, n = causal_lm_loss(model, ids, mask, labels, reduction="sum")
                # normalise by the labelled tokens of the whole accumulated step: token-weighted, not batch-weighted
                (s / max(1, n_lab)).backward()
                loss_sum += float(s.detach())
                tokens += int(mask.sum())
            elapsed = time.time() - t0
            for g in opt.param_groups:
                g["lr"] = t_cfg.learning_rate * lr_factor(step, total_steps, t_cfg.warmup_steps, elapsed, budget_s)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            elapsed = time.time() - t0
            tps = tokens / max(elapsed - eval_s, 1e-9)  # training throughput: validation time excluded
            row = {
                "step": step,
                "epoch": round(step / steps_per_epoch, 3),
                "train_loss": loss_sum / max(1, n_lab),
                "lr": opt.param_groups[0]["lr"],
                "tokens": tokens,
                "tokens_per_s": tps,
                "elapsed_s": elapsed,
            }
            if step % t_cfg.eval_every == 0 or step == total_steps:
                t_eval = time.time()
                last_val = evaluate()
                eval_s += time.time() - t_eval
                if last_val is not None:
                    row["val_loss"] = last_val
            log(row)
            bar.set_postfix(
                loss=f"{row['train_loss']:.3f}", val=f"{last_val:.3f}" if last_val else "-", tok_s=f"{tps:.0f}"
            )
            if budget_s and elapsed > 0:
                # the wall-clock budget may end training before total_steps: size the bar (and its ETA) to it
                bar.total = max(step, min(total_steps, int(step * budget_s / elapsed)))
                bar.refresh()
            bar.update(1)
            if step % t_cfg.save_every == 0:
                _save_checkpoint(model, opt, out_dir, step, epoch, b0 + t_cfg.grad_accum)
            if step >= total_steps:
                done = True
                break
            if budget_s and elapsed >= budget_s:
                stopped_by, done = "time budget", True
                break
        epoch += 1
    bar.close()
    if stopped_by != "steps":
        last_val = evaluate()
        if last_val is not None:
            log({"step": step, "val_loss": last_val, "elapsed_s": time.time() - t0})
    elapsed = time.time() - t0
    metrics.close()
    tb.close()

    model.save_pretrained(out_dir)  # adapter_config.json + adapter_model.safetensors
    tokenizer.save_pretrained(out_dir)
    summary = {
        "steps": step,
        "planned_steps": total_steps,
        "stopped_by": stopped_by,
        "epochs_seen": round(step / steps_per_epoch, 3),
        "train_examples": len(train),
        "truncated_examples": n_trunc,
        "trained_tokens": tokens,
        "seconds": round(elapsed, 1),
        "eval_seconds": round(eval_s, 1),
        "tokens_per_s": round(tokens / max(elapsed - eval_s, 1e-9), 1),
        "val_loss_start": first_val,
        "val_loss_end": last_val,
        "trainable_params": n_trainable,
        "total_params": n_total,
        "peak_rss_mib": peak_rss_mib(),
    }
    write_json_atomic(out_dir / "train_summary.json", summary)
    write_json_atomic(
        out_dir / "stage.json",
        {
            "stage": "finetune",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base_model": resolved.__dict__,
            "device": device,
            "dtype": dtype_name(dtype),
            "data_dir": str(data_dir.resolve()),
            "data_manifest_sha256": sha256_file(data_dir / "manifest.json"),
            "summary": summary,
        },
    )
    done_msg = f"[domain-expert] finetune done: {step} steps in {elapsed / 60:.1f} min"
    done_msg += f" ({summary['tokens_per_s']:.0f} tokens/s)"
    if first_val is not None and last_val is not None:
        done_msg += f", val loss {first_val:.3f} -> {last_val:.3f}"
    print(done_msg, flush=True)
    return out_dir


def _add_lora(model, cfg: RunConfig, tokenizer):
    from peft import LoraConfig, get_peft_model

    if cfg.train.quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.lora.target_modules if m not in present]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise RunFolderError(
            f"LoRA target modules {missing} not found in {type(model).__name__}",
            where="lora.target_modules",
            fix=f"choose from the model's linear layers: {', '.join(linear)}",
        )
    lcfg = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg)


def _save_checkpoint(model, opt, out_dir: Path, step: int, epoch: int, next_batch: int) -> None:
    """Atomic checkpoint: written to a temporary folder, then renamed; the oldest beyond KEEP_CHECKPOINTS goes."""
    import torch

    ckpts = out_dir / "checkpoints"
    with staged_dir(ckpts / f"step-{step:06d}", overwrite=True) as tmp:
        model.save_pretrained(tmp)
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        # data order is a pure function of (seed, epoch), so step/epoch/next_batch are enough to find our place
        write_json_atomic(tmp / "trainer_state.json", {"step": step, "epoch": epoch, "next_batch": next_batch})
    for old in sorted(ckpts.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)

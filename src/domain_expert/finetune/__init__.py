"""`domain-expert finetune`: LoRA (PEFT) on a causal LM, loss on answer tokens only, EOS learned.

Writes into the run's finetune folder: the adapter, tokenizer, resolved config, prompt format, metrics.jsonl,
TensorBoard logs, checkpoints, and stage.json last (its presence marks the folder complete).

`--resume` continues from the newest complete checkpoint (checkpoint.py); under torchrun or accelerate launch the
same loop runs data-parallel (distributed.py). docs/training.md has the commands and what each one guarantees.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path

from domain_expert.config import RunConfig, dump_config
from domain_expert.distributed import Dist
from domain_expert.errors import DataError, RunFolderError
from domain_expert.fsutil import check_output_dir, read_json, sha256_file, write_json_atomic, write_text_atomic
from domain_expert.provenance import peak_rss_mib


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


def run(
    cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False, resume: bool = False
) -> Path:
    """Fine-tune into `out_dir`. `resume` continues from its newest complete checkpoint. Under a multi-process
    launcher (torchrun, accelerate launch) every rank runs this; rank 0 alone writes files."""
    from domain_expert import distributed
    from domain_expert.hardware import resolve_device

    d = distributed.setup(resolve_device(cfg.train.device))
    ok = False
    try:
        result = _run(cfg, Path(data_dir), Path(out_dir), overwrite=overwrite, resume=resume, d=d)
        ok = True
        return result
    finally:
        distributed.teardown(d, ok=ok)


def _run(cfg: RunConfig, data_dir: Path, out_dir: Path, *, overwrite: bool, resume: bool, d: Dist) -> Path:
    import torch
    from tqdm.auto import tqdm

    from domain_expert import adapter_precision, checkpoint, distributed, fused_lora
    from domain_expert.batching import (
        collate,
        collate_packed,
        encode_records,
        length_grouped_batches,
        packed_micro_batches,
        split_by_tokens,
    )
    from domain_expert.data.records import read_records
    from domain_expert.hardware import dtype_name, resolve_device, resolve_dtype
    from domain_expert.losses import causal_lm_loss, packed_loss
    from domain_expert.models.kinds import CAUSAL, model_kind, require_kind
    from domain_expert.models.loader import load_model
    from domain_expert.models.reference import resolve_model
    from domain_expert.models.tokenizer import load_tokenizer
    from domain_expert.prompts import from_config

    # a bad model reference is the likelier mistake: say it first (rank 0 first: it may fill the model cache)
    resolved = distributed.main_first(d, lambda: resolve_model(cfg.model, progress=d.main))
    kind = model_kind(resolved.path)
    require_kind(kind, (CAUSAL,), "fine-tuning", where=f"model={cfg.model}")
    data_manifest = check_prepared(data_dir)
    t_cfg = cfg.train
    device = resolve_device(t_cfg.device)  # the kind ("cuda"); d.device is this rank's own ("cuda:1")
    dtype = resolve_dtype(t_cfg.dtype, device)
    if t_cfg.quantization == "4bit" and device != "cuda":
        raise RunFolderError(
            "QLoRA (train.quantization=4bit) needs a CUDA GPU",
            where="train.quantization",
            fix="set train.quantization=none on this machine",
        )
    data_sha = sha256_file(data_dir / "manifest.json")

    def say(msg: str) -> None:
        if d.main:
            print(f"[domain-expert] {msg}", flush=True)

    expected = {"config": cfg.model_dump(mode="json"), "dtype": dtype_name(dtype), "data_manifest_sha256": data_sha}
    ckpt = None
    if resume:
        ckpt = checkpoint.find_resumable(out_dir, expected, say)  # every check before anything is loaded or written
    else:
        _check_fresh(out_dir, overwrite)
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
    distributed.check_fits(d, t_cfg.batch_size, len(train))

    attn = t_cfg.attn_implementation
    if attn == "auto":
        attn = "eager" if device == "cpu" else "sdpa"
    model = load_model(
        resolved.path, dtype=dtype, device=d.device, quantization=t_cfg.quantization, attn=attn, kind=kind
    )
    model = _add_lora(model, cfg, tokenizer)
    if t_cfg.fuse_lora:
        fused_lora.fuse(model)  # this model only trains and saves its adapter: no need to undo
    # packed rows need a per-example attention mask (4D); flash-attention kernels take none
    packing = t_cfg.packing and attn in ("eager", "sdpa")
    if t_cfg.packing and not packing:
        say(f"train.packing is off with attn_implementation={attn} (it takes no per-example mask): padded batches")
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(trainable, lr=t_cfg.learning_rate, weight_decay=t_cfg.weight_decay)
    saved_rng = checkpoint.restore(ckpt, model, opt, d.device) if ckpt else None
    distributed.broadcast_params(d, trainable)
    # bf16 adapters with an fp32 master copy: `trainable` (what the optimizer steps) stays the fp32 parameters
    mw = adapter_precision.MasterWeights(model, dtype) if adapter_precision.wanted(dtype, t_cfg.quantization) else None
    fp32_weights_in_model = mw.master_in_model if mw else contextlib.nullcontext
    if d.enabled and not ckpt:
        torch.manual_seed(t_cfg.seed + d.rank)  # ranks see different rows: give them different dropout masks too

    lengths = [len(e.ids) for e in train]
    # Each step's summed loss is divided by the labelled tokens an average step has, not by its own count: with
    # length-grouped batches a step of short answers would otherwise weigh each of its tokens several times more
    # than a step of long ones. Measured (bench/train_throughput.py, 60 steps): val loss 2.155 -> 2.140 (seed 0),
    # 2.176 -> 2.153 (seed 1). Over all ranks and micro-batches the gradients still add up to the one-process one.
    n_labels = [len(e.ids) - max(1, e.start) for e in train]  # next-token targets per example
    label_scale = sum(n_labels) / len(train) * t_cfg.batch_size * t_cfg.grad_accum
    batches_per_epoch = math.ceil(len(train) / t_cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / t_cfg.grad_accum)
    total_steps = max(1, math.ceil(t_cfg.epochs * steps_per_epoch))
    if t_cfg.max_steps:
        total_steps = min(total_steps, t_cfg.max_steps)
    budget_s = t_cfg.max_minutes * 60 if t_cfg.max_minutes else None
    state = ckpt.state if ckpt else {}
    step = state.get("step", 0)

    distributed.barrier(d)  # every rank has checked the folder before rank 0 writes into it
    tb = metrics = None
    if d.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for stale in ("stage.json", "metrics.jsonl", "checkpoints", "tb"):
                p = out_dir / stale
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        if ckpt:
            for p in checkpoint.remove_leftovers(out_dir):
                say(f"removed {p.name}: a checkpoint write cut short")
            _truncate_metrics(out_dir / "metrics.jsonl", step)  # steps after the checkpoint are trained again
        write_text_atomic(out_dir / "config.yaml", dump_config(cfg))
        fmt.save(out_dir)
        write_json_atomic(out_dir / "data_manifest.json", data_manifest)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops the events the interrupted run logged after its checkpoint
        tb = SummaryWriter(str(out_dir / "tb"), purge_step=step + 1 if ckpt else None)
        metrics = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")

    def log(row: dict) -> None:
        if metrics is None or tb is None:
            return
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        for k, v in row.items():
            if k != "step" and isinstance(v, int | float):
                tb.add_scalar(k, v, row["step"])

    def evaluate() -> float | None:
        """Token-weighted mean loss over the (capped) validation batches; each rank scores its share of the
        batches and the sums are added, so the value does not depend on the number of processes."""
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
            for ch in chunks[d.rank :: d.world]:
                ids, mask, labels = (t.to(d.device) for t in collate([val[i] for i in ch], tokenizer.pad_token_id))
                s, n = causal_lm_loss(model, ids, mask, labels, reduction="sum")
                total, count = total + float(s), count + n
        total, count = distributed.all_sum(d, [total, float(count)])
        model.train()
        return total / max(1, count)

    def _passes(mine: list[list[int]]):
        """(summed loss, the examples' tokens) of each forward pass over this rank's rows of a step's batches."""
        for rows in mine:
            if not rows:
                continue
            if packing:
                exs = [train[i] for i in rows]
                for mb in packed_micro_batches(exs, t_cfg.pack_row_tokens, t_cfg.max_batch_tokens):
                    pk = collate_packed(exs, mb, tokenizer.pad_token_id).to(d.device)
                    yield packed_loss(model, pk)[0], pk.tokens
            else:
                for mb in split_by_tokens(rows, lengths, t_cfg.max_batch_tokens):
                    batch = collate([train[i] for i in mb], tokenizer.pad_token_id)
                    ids, mask, labels = (t.to(d.device) for t in batch)
                    yield causal_lm_loss(model, ids, mask, labels, reduction="sum")[0], int(mask.sum())

    procs = f", {d.world} processes" if d.enabled else ""
    say(
        f"finetune {resolved.reference} on {device}/{dtype_name(dtype)}{procs}: {len(train)} examples, "
        f"{total_steps} steps, LoRA r={cfg.lora.r} ({n_trainable / 1e6:.2f}M of {n_total / 1e6:.1f}M params trainable)"
        + (f", budget {t_cfg.max_minutes:g} min" if budget_s else "")
    )
    model.train()
    if ckpt:
        # the schedule's clock continues from the checkpoint: the remaining budget is what the interrupted run had
        # left when it saved; time spent down, reloading, or on steps after the checkpoint does not count
        first_val, last_val = state["first_val"], state["last_val"]
        tokens, eval_s, elapsed0 = state["tokens"], state["eval_s"], state["elapsed_s"]
        epoch, start = state["epoch"], state["next_batch"]
        if len(saved_rng) == d.world:
            checkpoint.set_rng_state(saved_rng[d.rank], d.device)
        else:
            say(f"checkpoint written by {len(saved_rng)} process(es), now {d.world}: data order, weights and "
                "optimizer continue exactly; random state (dropout) starts from the seed")  # fmt: skip
        say(f"resuming from {ckpt.path} (step {step} of {total_steps}, epoch {epoch}, batch {start})")
    else:
        first_val = evaluate()
        if first_val is not None:
            log({"step": 0, "val_loss": first_val, "elapsed_s": 0.0})
        last_val, tokens, eval_s, elapsed0, epoch, start = first_val, 0, 0.0, 0.0, 0, 0
    t0 = time.time() - elapsed0

    def clock() -> float:
        elapsed = time.time() - t0
        return distributed.broadcast_float(d, elapsed) if budget_s else elapsed

    # what a resume checks against (settings) or reports (plan): the same for every checkpoint of this run
    run_info = {**expected, "total_steps": total_steps, "budget_s": budget_s, "world_size": d.world}
    stopped_by = "steps"
    bar = tqdm(total=total_steps, initial=step, unit="step", desc="finetune", dynamic_ncols=True, disable=not d.main)
    done = step >= total_steps
    while not done:
        batches = length_grouped_batches(len(train), lengths, t_cfg.batch_size, t_cfg.seed, epoch, t_cfg.length_window)
        for b0 in range(start, len(batches), t_cfg.grad_accum):
            # One optimizer step = grad_accum batches of batch_size rows, the same for any number of processes;
            # each rank takes its share of every batch and splits it into token-budget micro-batches.
            group = batches[b0 : b0 + t_cfg.grad_accum]
            n_lab = sum(n_labels[i] for b in group for i in b)
            loss_sum, step_tokens = 0.0, 0
            mine = [distributed.shard(b, lengths, d) for b in group]
            for s, n_tokens in _passes(mine):
                # token-weighted (see label_scale); the sum of the ranks' gradients is exactly the one-process one
                (s / label_scale).backward()
                loss_sum += float(s.detach())
                step_tokens += n_tokens
            if mw:
                mw.grads_to_master()
            distributed.all_reduce_grads(d, trainable)
            loss_sum, step_tokens = distributed.all_sum(d, [loss_sum, float(step_tokens)])
            tokens += int(step_tokens)
            elapsed = clock()
            for g in opt.param_groups:
                g["lr"] = t_cfg.learning_rate * lr_factor(step, total_steps, t_cfg.warmup_steps, elapsed, budget_s)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if mw:
                mw.master_to_model()
            step += 1
            elapsed = clock()
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
                rng = distributed.gather_objects(d, checkpoint.rng_state(d.device))
                if d.main:
                    # data order is a pure function of (seed, epoch): step/epoch/next_batch find our place again
                    position = {"step": step, "epoch": epoch, "next_batch": b0 + t_cfg.grad_accum}
                    progress = {"tokens": tokens, "elapsed_s": time.time() - t0, "eval_s": eval_s,
                                "first_val": first_val, "last_val": last_val}  # fmt: skip
                    with fp32_weights_in_model():
                        checkpoint.save(out_dir, model=model, opt=opt, rng=rng,
                                        state={**position, **progress, **run_info})  # fmt: skip
            if step >= total_steps:
                done = True
                break
            if budget_s and elapsed >= budget_s:
                stopped_by, done = "time budget", True
                break
        start = 0
        epoch += 1
    bar.close()
    if stopped_by != "steps":
        last_val = evaluate()
        if last_val is not None:
            log({"step": step, "val_loss": last_val, "elapsed_s": time.time() - t0})
    elapsed = time.time() - t0
    if not d.main:
        return out_dir
    if metrics is not None and tb is not None:
        metrics.close()
        tb.close()

    with fp32_weights_in_model():
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
        "processes": d.world,
        "resumed_from_step": state.get("step"),
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
            "data_manifest_sha256": data_sha,
            "summary": summary,
        },
    )
    done_msg = f"finetune done: {step} steps in {elapsed / 60:.1f} min"
    done_msg += f" ({summary['tokens_per_s']:.0f} tokens/s)"
    if first_val is not None and last_val is not None:
        done_msg += f", val loss {first_val:.3f} -> {last_val:.3f}"
    say(done_msg)
    return out_dir


def _check_fresh(out_dir: Path, overwrite: bool) -> None:
    """A new run needs an empty folder; an unfinished one is worth pointing at --resume rather than a bare
    'exists'."""
    from domain_expert import checkpoint

    if not overwrite and not (out_dir / "stage.json").exists():
        complete, _ = checkpoint.scan(out_dir)
        if complete:
            raise RunFolderError(
                f"an unfinished fine-tuning run is here (last checkpoint: {complete[-1].name})",
                where=str(out_dir),
                fix="pass --resume to continue it, --overwrite to start over, or --out for another folder",
            )
    check_output_dir(out_dir, overwrite)


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows up to the checkpoint's step (and drop a line torn by the kill): the resumed run logs the
    later steps again, and a curve must not have two values for one step."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


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

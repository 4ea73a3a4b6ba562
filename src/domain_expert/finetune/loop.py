"""The step loop: optimizer steps over length-grouped (or random) batches until the planned steps or the time
budget, with validation, metrics rows, the progress bar and checkpoints on their cadence.

One optimizer step = grad_accum batches of batch_size rows, the same for any number of processes: each rank takes
its share of every batch (distributed.shard) and runs it as token-budget forward/backward passes, packed rows or
padded ones; the ranks' gradients are summed before the step."""

from __future__ import annotations

import time
from collections.abc import Iterator

from domain_expert.finetune import checkpoint, distributed
from domain_expert.finetune.schedule import lr_factor
from domain_expert.finetune.state import Trainer


def validation_loss(tr: Trainer) -> float | None:
    """Token-weighted mean loss over the (capped) validation batches; each rank scores its share of the batches and
    the sums are added, so the value does not depend on the number of processes."""
    import torch

    from domain_expert.likelihood import causal_lm_loss, collate

    val, t, d = tr.data.val, tr.cfg.train, tr.d
    if not val:
        return None
    tr.model.eval()
    order = sorted(range(len(val)), key=lambda i: len(val[i].ids))
    chunks = [order[i : i + t.batch_size] for i in range(0, len(order), t.batch_size)]
    if t.max_val_batches:
        # spread the capped batches over all lengths so the estimate is not biased to short examples
        stride = max(1, len(chunks) // t.max_val_batches)
        chunks = chunks[::stride][: t.max_val_batches]
    total, count = 0.0, 0
    with torch.no_grad():
        for ch in chunks[d.rank :: d.world]:
            batch = collate([val[i] for i in ch], tr.tokenizer.pad_token_id, seq2seq=tr.data.fmt.seq2seq)
            ids, mask, labels = (x.to(d.device) for x in batch)
            s, n = causal_lm_loss(tr.model, ids, mask, labels, reduction="sum")
            total, count = total + float(s), count + n
    total, count = distributed.all_sum(d, [total, float(count)])
    tr.model.train()
    return total / max(1, count)


def passes(tr: Trainer, mine: list[list[int]]) -> Iterator[tuple[object, int]]:
    """(summed loss, the examples' tokens) of each forward pass over this rank's rows of a step's batches."""
    from domain_expert.finetune.batching import collate_packed, packed_micro_batches, split_by_tokens
    from domain_expert.finetune.losses import packed_loss
    from domain_expert.likelihood import IGNORE, causal_lm_loss, collate

    train, t, device, pad = tr.data.train, tr.cfg.train, tr.d.device, tr.tokenizer.pad_token_id
    for rows in mine:
        if not rows:
            continue
        if tr.packing:
            exs = [train[i] for i in rows]
            for mb in packed_micro_batches(exs, t.pack_row_tokens, t.max_batch_tokens):
                pk = collate_packed(exs, mb, pad).to(device)
                yield packed_loss(tr.model, pk)[0], pk.tokens
        else:
            for mb in split_by_tokens(rows, tr.data.lengths, t.max_batch_tokens):
                batch = collate([train[i] for i in mb], pad, seq2seq=tr.data.fmt.seq2seq)
                ids, mask, labels = (x.to(device) for x in batch)
                tokens = int(mask.sum()) + int((labels != IGNORE).sum()) if tr.data.fmt.seq2seq else int(mask.sum())
                yield causal_lm_loss(tr.model, ids, mask, labels, reduction="sum")[0], tokens


def train_step(tr: Trainer, group: list[list[int]]) -> dict:
    """One optimizer step over `group` (grad_accum batches of example indices); returns its metrics row."""
    import torch

    t, d, p, plan = tr.cfg.train, tr.d, tr.progress, tr.plan
    n_lab = sum(tr.data.n_labels[i] for b in group for i in b)
    loss_sum, step_tokens = 0.0, 0
    mine = [distributed.shard(b, tr.data.lengths, d) for b in group]
    for s, n_tokens in passes(tr, mine):
        # token-weighted (see schedule.plan); the sum of the ranks' gradients is exactly the one-process one
        (s / plan.label_scale).backward()
        loss_sum += float(s.detach())
        step_tokens += n_tokens
    if tr.mw:
        tr.mw.grads_to_master()
    distributed.all_reduce_grads(d, tr.trainable)
    loss_sum, step_tokens = distributed.all_sum(d, [loss_sum, float(step_tokens)])
    p.tokens += int(step_tokens)
    elapsed = tr.clock()
    for g in tr.opt.param_groups:
        g["lr"] = t.learning_rate * lr_factor(p.step, plan.total_steps, t.warmup_steps, elapsed, plan.budget_s)
    torch.nn.utils.clip_grad_norm_(tr.trainable, 1.0)
    tr.opt.step()
    tr.opt.zero_grad(set_to_none=True)
    if tr.mw:
        tr.mw.master_to_model()
    p.step += 1
    elapsed = tr.clock()
    return {
        "step": p.step,
        "epoch": round(p.step / plan.steps_per_epoch, 3),
        "train_loss": loss_sum / max(1, n_lab),
        "lr": tr.opt.param_groups[0]["lr"],
        "tokens": p.tokens,
        "tokens_per_s": p.tokens / max(elapsed - p.eval_s, 1e-9),  # training throughput: validation excluded
        "elapsed_s": elapsed,
    }


def validate(tr: Trainer) -> float | None:
    """validation_loss, its time counted apart from training's."""
    t_eval = time.time()
    tr.progress.last_val = validation_loss(tr)
    tr.progress.eval_s += time.time() - t_eval
    return tr.progress.last_val


def save_checkpoint(tr: Trainer) -> None:
    """Every rank's random state, gathered; rank 0 writes the checkpoint with the fp32 adapter weights."""
    rng = distributed.gather_objects(tr.d, checkpoint.rng_state(tr.d.device))
    if tr.d.main:
        state = {**tr.progress.as_state(), "elapsed_s": time.time() - tr.t0, **tr.run_info()}
        with tr.fp32_weights_in_model():
            checkpoint.save(tr.out_dir, model=tr.model, opt=tr.opt, rng=rng, state=state)


def begin(tr: Trainer) -> None:
    """Announce the run; then either continue the checkpoint's counters, clock and random state, or score the
    untrained adapter as step 0."""
    from domain_expert.hardware import dtype_name

    d, p, plan, cfg = tr.d, tr.progress, tr.plan, tr.cfg
    procs = f", {d.world} processes" if d.enabled else ""
    tr.say(
        f"finetune {tr.resolved.reference} on {tr.device}/{dtype_name(tr.dtype)}{procs}: {len(tr.data.train)} "
        f"examples, {plan.total_steps} steps, LoRA r={cfg.lora.r} ({tr.n_trainable / 1e6:.2f}M of "
        f"{tr.n_total / 1e6:.1f}M params trainable)"
        + (f", budget {cfg.train.max_minutes:g} min" if plan.budget_s else "")
    )
    tr.model.train()
    if tr.ckpt:
        # the schedule's clock continues from the checkpoint: the remaining budget is what the interrupted run had
        # left when it saved; time spent down, reloading, or on steps after the checkpoint does not count
        if len(tr.saved_rng) == d.world:
            checkpoint.set_rng_state(tr.saved_rng[d.rank], d.device)
        else:
            tr.say(f"checkpoint written by {len(tr.saved_rng)} process(es), now {d.world}: data order, weights and "
                   "optimizer continue exactly; random state (dropout) starts from the seed")  # fmt: skip
        tr.say(f"resuming from {tr.ckpt.path} (step {p.step} of {plan.total_steps}, epoch {p.epoch}, "
               f"batch {p.next_batch})")  # fmt: skip
    else:
        p.first_val = p.last_val = validation_loss(tr)
        if p.first_val is not None:
            tr.log({"step": 0, "val_loss": p.first_val, "elapsed_s": 0.0})
    tr.t0 = time.time() - p.elapsed_s


def fit(tr: Trainer) -> None:
    """Train until the planned steps or the time budget (`tr.stopped_by` says which); a run stopped by the budget
    is validated once more at its last step."""
    from tqdm.auto import tqdm

    from domain_expert.finetune.batching import length_grouped_batches

    t, p, plan, data = tr.cfg.train, tr.progress, tr.plan, tr.data
    begin(tr)
    bar = tqdm(total=plan.total_steps, initial=p.step, unit="step", desc="finetune", dynamic_ncols=True,
               disable=not tr.d.main)  # fmt: skip
    done = p.step >= plan.total_steps
    while not done:
        batches = length_grouped_batches(len(data.train), data.lengths, t.batch_size, t.seed, p.epoch, t.length_window)
        for b0 in range(p.next_batch, len(batches), t.grad_accum):
            p.next_batch = b0 + t.grad_accum  # where a checkpoint saved after this step resumes
            row = train_step(tr, batches[b0 : b0 + t.grad_accum])
            if p.step % t.eval_every == 0 or p.step == plan.total_steps:
                if validate(tr) is not None:
                    row["val_loss"] = p.last_val
            tr.log(row)
            _show(bar, tr, row)
            if p.step % t.save_every == 0:
                save_checkpoint(tr)
            if p.step >= plan.total_steps:
                done = True
                break
            if plan.budget_s and row["elapsed_s"] >= plan.budget_s:
                tr.stopped_by, done = "time budget", True
                break
        p.next_batch = 0
        p.epoch += 1
    bar.close()
    if tr.stopped_by != "steps":
        p.last_val = validation_loss(tr)
        if p.last_val is not None:
            tr.log({"step": p.step, "val_loss": p.last_val, "elapsed_s": time.time() - tr.t0})


def _show(bar, tr: Trainer, row: dict) -> None:
    last_val, plan, elapsed = tr.progress.last_val, tr.plan, row["elapsed_s"]
    bar.set_postfix(
        loss=f"{row['train_loss']:.3f}", val=f"{last_val:.3f}" if last_val else "-", tok_s=f"{row['tokens_per_s']:.0f}"
    )
    if plan.budget_s and elapsed > 0:
        # the wall-clock budget may end training before total_steps: size the bar (and its ETA) to it
        bar.total = max(tr.progress.step, min(plan.total_steps, int(tr.progress.step * plan.budget_s / elapsed)))
        bar.refresh()
    bar.update(1)

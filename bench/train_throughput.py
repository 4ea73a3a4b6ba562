"""LoRA training throughput: a plain Hugging Face `Trainer` loop vs `domain-expert finetune`, same model, same
prepared data, same number of optimizer steps, side by side in one run (issue #5; goal: >= 4x at equal val loss).

    .venv/bin/python bench/train_throughput.py runs/medical-terms --steps 60 --seeds 0 1    # after `make run`
    .venv/bin/python bench/train_throughput.py runs/medical-terms --steps 8 --lever "train.max_batch_tokens=2048"

(a) naive: `transformers.Trainer` + PEFT LoRA (same r, alpha, dropout and target modules as the config), fp32, random
    batches padded to their longest row by `DataCollatorForSeq2Seq`, labels masked on the prompt exactly as ours
    (same prompt format and token ids), same learning rate, warmup, cosine-to-10% schedule, batch size, clipping.
(b) `python -m domain_expert finetune <config>` with its defaults (bf16 where the CPU has it, random batches packed
    into rows, logits only at answer positions; `train.fuse_lora` is off by default: no gain measured), and each
    `--lever` as extra key=value overrides.

Each runs in its own process, so peak RSS is its own. Definitions, the same for every row:
- trained tokens: the trained examples' own tokens (prompt + answer + EOS; no padding, and a prefix that packed rows
  hold once counts once per example, as it would in an unpacked pass): both sides count the same tokens for the same
  examples; tokens/s = trained tokens / training wall time (model loading and validation excluded).
- val loss: after training, each adapter is loaded onto the fp32 base and scored by one function on the whole
  validation split: token-weighted mean next-token cross-entropy on answer tokens (EOS included), as in training.
Checkpointing is off in both (save_strategy="no"; train.save_every above the step count): it is not training work.
Both see the same number of examples (steps x batch size); their token counts differ only by which examples.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

NAIVE, BASE = "naive Trainer fp32", "base (no adapter)"


def _examples(cfg, data_dir: Path, split: str):
    from domain_expert.data.records import read_records
    from domain_expert.finetune.batching import encode_records
    from domain_expert.models.reference import resolve_model
    from domain_expert.models.tokenizer import load_tokenizer
    from domain_expert.prompts import from_config

    tok = load_tokenizer(resolve_model(cfg.model, progress=False).path)
    fmt = from_config(cfg.prompt.style, cfg.prompt.system, tok)  # what finetune uses
    exs, _ = encode_records(read_records(data_dir / f"{split}.jsonl"), fmt, tok, cfg.train.max_seq_len)
    return tok, exs


def naive_trainer(config: str, overrides: list[str], data_dir: str, out_dir: str, steps: int) -> dict:
    """(a): what a user writes from the Hugging Face docs. Runs in a child process (see `_child`)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from domain_expert.config import load_config
    from domain_expert.likelihood import IGNORE
    from domain_expert.models.reference import resolve_model
    from domain_expert.provenance import peak_rss_mib

    cfg = load_config(config, overrides)
    t = cfg.train
    tok, exs = _examples(cfg, Path(data_dir), "train")
    rows = [
        {"input_ids": e.ids, "attention_mask": [1] * len(e.ids), "labels": [IGNORE] * e.start + e.ids[e.start :]}
        for e in exs
    ]
    model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model, progress=False).path, dtype=torch.float32)
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(model, lora)
    args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type="cosine_with_min_lr",  # finetune decays to 10% of the peak
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        max_grad_norm=1.0,
        max_steps=steps,
        logging_steps=max(1, steps // 4),
        save_strategy="no",
        report_to="none",
        use_cpu=t.device in ("auto", "cpu") and not torch.cuda.is_available(),
        seed=t.seed,
        dataloader_num_workers=0,
    )
    counted = {"tokens": 0, "t0": 0.0, "t1": 0.0}

    class CountingTrainer(Trainer):
        def compute_loss(self, model, inputs, *a, **kw):  # measurement only: the loss is Trainer's own
            counted["tokens"] += int(inputs["attention_mask"].sum())
            return super().compute_loss(model, inputs, *a, **kw)

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            counted["t0"] = time.time()

        def on_train_end(self, *a, **kw):
            counted["t1"] = time.time()

    trainer = CountingTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=IGNORE),
        callbacks=[Clock()],
    )
    out = trainer.train()
    seconds = counted["t1"] - counted["t0"]
    model.save_pretrained(out_dir)
    return {
        "steps": out.global_step,
        "trained_tokens": counted["tokens"],
        "seconds": round(seconds, 1),
        "tokens_per_s": round(counted["tokens"] / seconds, 1),
        "dtype": "fp32",
        "train_loss": round(out.training_loss, 4),
        "peak_rss_mib": peak_rss_mib(),
    }


def ours(config: str, overrides: list[str], data_dir: Path, out_dir: Path) -> dict:
    """(b): the real CLI in a subprocess; its train_summary.json carries tokens, time and peak RSS."""
    cmd = [sys.executable, "-m", "domain_expert", "finetune", config, *overrides,
           "--data", str(data_dir), "--out", str(out_dir), "--overwrite"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"finetune failed ({shlex.join(cmd)}):\n{proc.stderr[-3000:]}")
    s = json.loads((out_dir / "train_summary.json").read_text())
    stage = json.loads((out_dir / "stage.json").read_text())
    return {k: s[k] for k in ("steps", "trained_tokens", "seconds", "tokens_per_s", "peak_rss_mib")} | {
        "dtype": stage["dtype"],
        "train_loss": _last_train_loss(out_dir),
    }


def _last_train_loss(out_dir: Path) -> float | None:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    return round(sum(losses) / len(losses), 4) if losses else None  # mean over steps, like Trainer's training_loss


def val_losses(config: str, overrides: list[str], data_dir: Path, adapters: dict[str, Path | None]) -> dict:
    """One scorer for every row: fp32 base + adapter, whole val split, token-weighted answer-token cross-entropy."""
    import torch
    from peft import PeftModel
    from transformers.utils import logging as hf_logging

    from domain_expert.config import load_config
    from domain_expert.likelihood import causal_lm_loss, collate
    from domain_expert.models.loader import load_model
    from domain_expert.models.reference import resolve_model

    hf_logging.disable_progress_bar()
    cfg = load_config(config, overrides)
    tok, val = _examples(cfg, data_dir, "val")
    order = sorted(range(len(val)), key=lambda i: len(val[i].ids))
    chunks = [order[i : i + 16] for i in range(0, len(order), 16)]
    path = resolve_model(cfg.model, progress=False).path
    out = {}
    for name, adapter in adapters.items():
        model = load_model(path, dtype=torch.float32, attn="eager")
        if len(tok) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tok))
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter))
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for ch in chunks:
                s, n = causal_lm_loss(model, *collate([val[i] for i in ch], tok.pad_token_id), reduction="sum")
                total, count = total + float(s), count + n
        out[name] = round(total / max(1, count), 4)
    return out


def _child(fn: str, **kwargs) -> dict:
    """Run one function of this file in a fresh interpreter, so peak RSS and threads are its own."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import train_throughput as b; "
        f"print(json.dumps(b.{fn}(**json.loads(sys.argv[1]))))"
    )
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{fn} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default="runs/medical-terms", help="run folder with data/ (from prepare)")
    ap.add_argument("--config", default="medical-terms", help="config for both sides (default: the shipped default)")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps for every row")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override for both sides (e.g. model=..., train.batch_size=8)")  # fmt: skip
    ap.add_argument("--lever", action="append", default=[], metavar="'K=V K=V'",
                    help="an extra `domain-expert finetune` row with these overrides (repeatable)")  # fmt: skip
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed values; rows report the means")
    ap.add_argument("--skip-naive", action="store_true", help="only the finetune rows (e.g. to compare levers)")
    ap.add_argument("--out", type=Path, help="work folder for adapters and result.json (default: <run>/bench)")
    args = ap.parse_args(argv)

    data_dir = Path(args.run) / "data"
    if not (data_dir / "manifest.json").exists():
        raise SystemExit(f"{data_dir} is not prepared data: run `domain-expert prepare` (or `make run`) first")
    out = args.out or Path(args.run) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    per_seed = {seed: _one_seed(args, seed, data_dir, out / f"seed{seed}") for seed in args.seeds}
    # a row over the seeds: means of its measures, and each seed's own row
    rows: dict[str, dict] = {}
    for name in per_seed[args.seeds[0]][0]:
        runs = {seed: per_seed[seed][0][name] for seed in args.seeds}
        mean = {k: round(statistics.mean(r[k] for r in runs.values()), 4)
                for k in ("tokens_per_s", "val_loss", "peak_rss_mib", "trained_tokens", "steps")}  # fmt: skip
        x = [r["speedup_vs_naive"] for r in runs.values()]
        rows[name] = {**mean, "dtype": runs[args.seeds[0]]["dtype"],
                      "speedup_vs_naive": round(statistics.mean(x), 2) if all(x) else None,
                      "overrides": runs[args.seeds[0]].get("overrides", []), "seeds": runs}  # fmt: skip
    base_val = statistics.mean(per_seed[seed][1] for seed in args.seeds)
    seeds = ", ".join(map(str, args.seeds))
    print(f"\nLoRA training, {args.steps} steps, seed(s) {seeds}: means over seeds; val loss by one scorer "
          f"(base model: {base_val:.4f})")  # fmt: skip
    print(f"{'':46} {'dtype':>5} {'tokens':>7} {'tok/s':>7} {'x naive':>7} {'peak RSS':>9} {'val loss':>8} per seed")
    for name, r in rows.items():
        x = f"{r['speedup_vs_naive']:.2f}" if r["speedup_vs_naive"] else "-"
        each = " / ".join(f"{v['val_loss']:.4f}" for v in r["seeds"].values())
        print(f"{name[:46]:46} {r['dtype']:>5} {r['trained_tokens']:>7.0f} {r['tokens_per_s']:>7.1f} {x:>7} "
              f"{r['peak_rss_mib'] / 1024:>7.2f}Gi {r['val_loss']:>8.4f} {each}")  # fmt: skip
    loads = [max(v["load_1min"]) for r in rows.values() for v in r["seeds"].values()]
    if max(loads) > os.cpu_count():
        print(f"load average above the {os.cpu_count()} cores: the CPU was shared, tokens/s are low and noisy")
    from domain_expert.provenance import package_versions, stamp

    result = {
        "stamp": stamp(None if argv is None else [__file__, *argv]),
        "steps": args.steps,
        "config": args.config,
        "overrides": args.set,
        "data_dir": str(data_dir),
        "definitions": {
            "trained_tokens": "the trained examples' own tokens (prompt+answer+EOS, no padding; a prefix shared "
            "in a packed row counts once per example, as in an unpacked pass)",
            "tokens_per_s": "trained_tokens / training wall time (model load and validation excluded)",
            "val_loss": "fp32 base + adapter, whole val split, token-weighted CE on answer tokens incl. EOS",
        },
        "seeds": args.seeds,
        "val_loss_base": round(base_val, 4),
        "rows": rows,
        "wall_s": round(time.time() - t_start, 1),
        "cpu_count": os.cpu_count(),
        "versions": package_versions("torch", "transformers", "peft"),
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out / 'result.json'}")
    return 0


def _one_seed(args, seed: int, data_dir: Path, out: Path) -> tuple[dict[str, dict], float]:
    """Every row trained with train.seed=seed, then scored: (rows, the base model's val loss)."""
    fixed = [f"train.max_steps={args.steps}", "train.max_minutes=null", f"train.save_every={10**9}"]
    shared = [*args.set, *fixed, f"train.seed={seed}"]
    rows: dict[str, dict] = {}
    adapters: dict[str, Path | None] = {BASE: None}
    if not args.skip_naive:
        print(f"seed {seed} (a) transformers.Trainer, fp32, padded batches: {args.steps} steps ...", flush=True)
        kw = dict(config=args.config, overrides=shared, data_dir=str(data_dir), out_dir=str(out / "naive"))
        rows[NAIVE] = _measured(_child, "naive_trainer", **kw, steps=args.steps)
        adapters[NAIVE] = out / "naive"
    runs = {"domain-expert finetune": []} | {f"finetune {lv}": shlex.split(lv) for lv in args.lever}
    for i, (name, extra) in enumerate(runs.items()):
        print(f"seed {seed} (b) {name}: {args.steps} steps ...", flush=True)
        folder = out / ("finetune" if i == 0 else f"lever-{i}")
        rows[name] = _measured(ours, args.config, [*shared, *extra], data_dir, folder) | {"overrides": extra}
        adapters[name] = folder
    print(f"seed {seed}: scoring every adapter on the validation split (fp32, one shared function) ...", flush=True)
    losses = val_losses(args.config, args.set, data_dir, adapters)
    ref = rows.get(NAIVE)
    for name, r in rows.items():
        r["val_loss"] = losses[name]
        r["speedup_vs_naive"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 2) if ref else None
    return rows, losses[BASE]


def _measured(fn, *args, **kwargs) -> dict:
    """The row, plus the wall time of its whole process (imports, model load, validation) and the 1-minute load
    average before and after: on a shared CPU a load above the core count slows that row, so ratios drift."""
    load0, t = os.getloadavg()[0], time.time()
    row = fn(*args, **kwargs)
    return row | {
        "process_wall_s": round(time.time() - t, 1),
        "load_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


if __name__ == "__main__":
    sys.exit(main())

"""Everything before the first step: resolve the base model, check the folder (or the checkpoint to resume), load
the tokenizer and the prepared data, load the model with its LoRA adapter, build the optimizer, restore the
checkpoint's weights and optimizer state, and open the logs. The pieces are separate so that benchmarks measure the
model and batches training uses (bench/train_levers.py)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domain_expert.config import RunConfig, TrainConfig
from domain_expert.errors import ConfigError, DataError, RunFolderError
from domain_expert.finetune import checkpoint, distributed, outputs, schedule
from domain_expert.finetune.distributed import Dist
from domain_expert.finetune.state import Data, Progress, Trainer, say
from domain_expert.fsutil import read_json, sha256_file

if TYPE_CHECKING:
    from domain_expert.finetune.adapter_precision import MasterWeights
    from domain_expert.models.reference import ResolvedModel


def check_prepared(data_dir: Path) -> dict:
    manifest = data_dir / "manifest.json"
    if not manifest.exists():
        raise RunFolderError(
            "not a prepared dataset (no manifest.json)", where=str(data_dir), fix="run `domain-expert prepare` first"
        )
    return read_json(manifest)


def resolve_base(cfg: RunConfig, d: Dist) -> tuple[ResolvedModel, str]:
    """The base model's folder and its kind (causal or seq2seq); options a kind cannot use are refused here,
    before any weights are loaded."""
    from domain_expert.models.kinds import CAUSAL, SEQ2SEQ, model_kind, require_kind
    from domain_expert.models.reference import resolve_model

    # rank 0 first: it may fill the model cache
    resolved = distributed.main_first(d, lambda: resolve_model(cfg.model, progress=d.main))
    kind = model_kind(resolved.path)
    require_kind(kind, (CAUSAL, SEQ2SEQ), "fine-tuning", where=f"model={cfg.model}")
    if kind == SEQ2SEQ and cfg.train.fuse_lora:
        raise ConfigError(
            "train.fuse_lora fuses a decoder-only layer's q/k/v and gate/up projections; this is a seq2seq model",
            where=f"train.fuse_lora (model={cfg.model})",
            fix="set train.fuse_lora=false",
        )
    return resolved, kind


def device_and_dtype(t: TrainConfig) -> tuple[str, Any]:
    """The device kind ("cuda", "cpu", ...) and the torch dtype the base model trains in."""
    from domain_expert.hardware import resolve_device, resolve_dtype

    device = resolve_device(t.device)
    dtype = resolve_dtype(t.dtype, device)
    if t.quantization == "4bit" and device != "cuda":
        raise RunFolderError(
            "QLoRA (train.quantization=4bit) needs a CUDA GPU",
            where="train.quantization",
            fix="set train.quantization=none on this machine",
        )
    return device, dtype


def attn_implementation(t: TrainConfig, device: str) -> str:
    if t.attn_implementation == "auto":
        return "eager" if device == "cpu" else "sdpa"
    return t.attn_implementation


def load_data(cfg: RunConfig, data_dir: Path, tokenizer, kind: str = "causal") -> Data:
    """The prepared train and val splits, tokenised in the config's prompt format for the model's kind."""
    from domain_expert.data.records import read_records
    from domain_expert.finetune.batching import encode_records
    from domain_expert.prompts import from_config

    fmt = from_config(cfg.prompt.style, cfg.prompt.system, tokenizer, kind)
    train_recs = read_records(data_dir / "train.jsonl")
    val_recs = read_records(data_dir / "val.jsonl")
    train, n_trunc = encode_records(train_recs, fmt, tokenizer, cfg.train.max_seq_len)
    val, _ = encode_records(val_recs, fmt, tokenizer, cfg.train.max_seq_len)
    if not train:
        raise DataError(
            "no trainable examples (all prompts fill max_seq_len?)",
            where=str(data_dir / "train.jsonl"),
            fix="raise train.max_seq_len",
        )
    return Data(fmt, train, val, n_trunc)


def add_lora(model, cfg: RunConfig, tokenizer, kind: str = "causal"):
    """Wrap `model` in a PEFT LoRA model as the config says; unknown target modules are refused by name."""
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
        task_type="SEQ_2_SEQ_LM" if kind == "seq2seq" else "CAUSAL_LM",
    )
    return get_peft_model(model, lcfg)


def load_lora_model(cfg: RunConfig, path: str, tokenizer, *, dtype, device: str, attn: str, kind: str | None = None):
    """The base model with a fresh LoRA adapter (fp32 adapter weights), projections fused if train.fuse_lora."""
    from domain_expert.finetune import fused_lora
    from domain_expert.models.loader import load_model

    t = cfg.train
    model = load_model(path, dtype=dtype, device=device, quantization=t.quantization, attn=attn, kind=kind)
    model = add_lora(model, cfg, tokenizer, kind or "causal")
    if t.fuse_lora:
        fused_lora.fuse(model)  # this model only trains and saves its adapter: no need to undo
    return model


def _packing(t: TrainConfig, attn: str, kind: str, note) -> bool:
    """Whether batches run as packed rows. Packing changes speed, never the loss, so where it cannot apply the run
    goes on with padded rows (split by length into passes: little padding) and says so once."""
    if not t.packing:
        return False
    if kind != "causal":
        # an encoder-decoder example is two sequences (encoder input, decoder labels): rows cannot be concatenated
        note("train.packing applies to causal models only: this seq2seq model trains on padded rows split by length")
        return False
    if attn not in ("eager", "sdpa"):  # packed rows need a per-example attention mask (4D); flash kernels take none
        note(f"train.packing is off with attn_implementation={attn} (it takes no per-example mask): padded batches")
        return False
    return True


def optimizer(
    cfg: RunConfig, model, dtype, d: Dist, ckpt: checkpoint.Checkpoint | None
) -> tuple[list, Any, MasterWeights | None, list[dict] | None]:
    """(trainable fp32 parameters, AdamW over them, bf16 master-weights swap or None, the checkpoint's random
    states or None). A checkpoint's adapter and optimizer state are loaded here; every rank then holds rank 0's
    weights."""
    import torch

    from domain_expert.finetune import adapter_precision

    t = cfg.train
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=t.learning_rate, weight_decay=t.weight_decay)
    saved_rng = checkpoint.restore(ckpt, model, opt, d.device) if ckpt else None
    distributed.broadcast_params(d, trainable)
    # bf16 adapters with an fp32 master copy: `trainable` (what the optimizer steps) stays the fp32 parameters
    mw = adapter_precision.MasterWeights(model, dtype) if adapter_precision.wanted(dtype, t.quantization) else None
    if d.enabled and not ckpt:
        torch.manual_seed(t.seed + d.rank)  # ranks see different rows: give them different dropout masks too
    return trainable, opt, mw, saved_rng


def setup(cfg: RunConfig, data_dir: Path, out_dir: Path, *, overwrite: bool, resume: bool, d: Dist) -> Trainer:
    """This rank's trainer, ready for its first (or resumed) step. Folder and checkpoint checks come before any
    weights are loaded; rank 0 writes into the folder only after every rank has passed them."""
    import torch

    from domain_expert.hardware import dtype_name
    from domain_expert.models.tokenizer import load_tokenizer

    resolved, kind = resolve_base(cfg, d)  # a bad model reference is the likelier mistake: say it first
    data_manifest = check_prepared(data_dir)
    device, dtype = device_and_dtype(cfg.train)
    data_sha = sha256_file(data_dir / "manifest.json")
    settings = {"config": cfg.model_dump(mode="json"), "dtype": dtype_name(dtype), "data_manifest_sha256": data_sha}
    note = functools.partial(say, d)
    ckpt = outputs.claim(out_dir, resume=resume, overwrite=overwrite, settings=settings, note=note)
    torch.manual_seed(cfg.train.seed)

    tokenizer = load_tokenizer(resolved.path)
    data = load_data(cfg, data_dir, tokenizer, kind)
    distributed.check_fits(d, cfg.train.batch_size, len(data.train))
    attn = attn_implementation(cfg.train, device)
    model = load_lora_model(cfg, resolved.path, tokenizer, dtype=dtype, device=d.device, attn=attn, kind=kind)
    packing = _packing(cfg.train, attn, kind, note)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    trainable, opt, mw, saved_rng = optimizer(cfg, model, dtype, d, ckpt)
    progress = Progress.from_state(ckpt.state) if ckpt else Progress()

    distributed.barrier(d)  # every rank has checked the folder before rank 0 writes into it
    log = outputs.RunLog()
    if d.main:
        log = outputs.open_folder(cfg, out_dir, fmt=data.fmt, data_manifest=data_manifest, overwrite=overwrite,
                                  resumed_step=progress.step if ckpt else None, note=note)  # fmt: skip
    return Trainer(
        cfg=cfg, d=d, data_dir=data_dir, out_dir=out_dir, resolved=resolved, device=device, dtype=dtype,
        settings=settings, data=data, tokenizer=tokenizer, model=model, trainable=trainable, opt=opt, mw=mw,
        packing=packing, n_trainable=n_trainable, n_total=n_total, plan=schedule.plan(cfg.train, data.n_labels),
        log=log, ckpt=ckpt, saved_rng=saved_rng, progress=progress,
    )  # fmt: skip

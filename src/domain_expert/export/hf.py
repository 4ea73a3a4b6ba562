"""The `hf` export: merge the LoRA adapter into the base and write a plain Hugging Face folder that loads with
transformers' Auto class for its kind (`AutoModelForCausalLM`, `AutoModelForSeq2SeqLM`) and no project code, plus a
model card. Fidelity is checked on the written folder: its logits against adapter+base on held-out prompts; above
the tolerance the export fails and nothing is left behind."""

from __future__ import annotations

import time
from pathlib import Path

from domain_expert.errors import FidelityError
from domain_expert.export.model_card import model_card
from domain_expert.fsutil import read_json, staged_dir, write_json_atomic, write_text_atomic
from domain_expert.runs import find_stage

# max |logit difference| allowed, by export dtype. fp32 merges are exact up to summation order; bf16 rounds every
# weight to 8 significant bits, which moves logits by a few tenths on a 30-layer model (docs/benchmarks.md).
DEFAULT_TOLERANCE = {"fp32": 1e-3, "fp16": 0.5, "bf16": 1.5}


def run(
    finetune_path: str | Path, out_dir: str | Path | None = None, *, dtype: str | None = None, overwrite: bool = False
) -> Path:
    from domain_expert.config import load_config
    from domain_expert.models.loader import load_for_inference

    ft_dir = find_stage(finetune_path, "finetune")
    stage = read_json(ft_dir / "stage.json")
    cfg = load_config(ft_dir / "config.yaml")
    dtype = dtype or cfg.export.dtype
    tolerance = cfg.export.fidelity_tolerance or DEFAULT_TOLERANCE[dtype]
    out_dir = Path(out_dir) if out_dir else ft_dir.parent / "export"

    t0 = time.time()
    print(f"[domain-expert] export: merging adapter into {stage['base_model']['reference']} ({dtype})", flush=True)
    lm = load_for_inference(ft_dir, adapter="unmerged", device="cpu", dtype="fp32")
    batch = [lm.fmt.encode_prompt(lm.tokenizer, p) for p in _fidelity_prompts(stage, cfg.export.fidelity_prompts)]
    reference = _logits(lm.model, batch)
    merged, merge_diff = _merge_checked(lm.model, batch, reference, ft_dir)
    merged = _as_release(merged, dtype, lm.tokenizer)
    kind, tokenizer, fmt = lm.kind, lm.tokenizer, lm.fmt
    del lm

    with staged_dir(out_dir, overwrite=overwrite) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        fmt.save(tmp)
        del merged
        fidelity = _check_written(tmp, kind, batch, reference, dtype, tolerance, ft_dir)
        fidelity["merge_max_abs_logit_diff_fp32"] = merge_diff
        data_manifest = read_json(ft_dir / "data_manifest.json") if (ft_dir / "data_manifest.json").exists() else {}
        write_text_atomic(tmp / "README.md", model_card(cfg, stage, data_manifest, dtype, fidelity, kind))
        write_json_atomic(
            tmp / "stage.json",
            {
                "stage": "export",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "dtype": dtype,
                "kind": kind,
                "finetune_dir": str(ft_dir.resolve()),
                "base_model": stage["base_model"],
                "fidelity": fidelity,
                "seconds": round(time.time() - t0, 1),
            },
        )
    diff = fidelity["max_abs_logit_diff"]
    print(f"[domain-expert] export done: {out_dir} (max |logit diff| {diff:.3g} <= {tolerance:g})", flush=True)
    return out_dir


def _merge_checked(peft_model, batch: list[list[int]], reference: list, ft_dir: Path) -> tuple:
    """(the adapter merged into the fp32 weights, its max |logit diff|). Checked on its own (it must be exact up to
    summation order): a merge bug is then told apart from what the export dtype's rounding costs."""
    merged = peft_model.merge_and_unload()
    merge_diff = _max_diff(reference, _logits(merged, batch))
    if merge_diff > DEFAULT_TOLERANCE["fp32"]:
        raise FidelityError(
            f"the fp32 merge differs from adapter+base: max |logit diff| {merge_diff:.4g}"
            f" > {DEFAULT_TOLERANCE['fp32']}",
            where=str(ft_dir),
            fix="this is a bug (or an adapter type that does not merge linearly): use the adapter with its base",
        )
    return merged, merge_diff


def _as_release(merged, dtype: str, tokenizer):
    """The merged model in the export dtype, with a generation config that decodes as evaluated (greedy)."""
    import torch

    merged = merged.to({"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype])
    gen = merged.generation_config
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.do_sample = False  # greedy by default, as evaluated; callers may sample
    for k in ("temperature", "top_p", "top_k"):
        setattr(gen, k, None)
    return merged


def _check_written(
    folder: Path, kind: str, batch: list, reference: list, dtype: str, tolerance: float, ft_dir: Path
) -> dict:
    """Load what was written exactly as a user would (plain transformers, the Auto class of its kind, no project
    code, no adapter) and compare its logits with adapter+base."""
    import torch

    from domain_expert.models.kinds import auto_class

    reloaded = auto_class(kind).from_pretrained(folder, dtype=torch.float32)
    exported = _logits(reloaded, batch)
    diff = _max_diff(reference, exported)
    same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(reference, exported, strict=True))
    fidelity = {
        "prompts": len(batch),
        "max_abs_logit_diff": diff,
        "tolerance": tolerance,
        "argmax_agreement": same / sum(len(x) for x in batch),
        "compared": f"exported {dtype} folder (loaded in fp32) vs adapter+base in fp32",
    }
    if diff > tolerance:
        raise FidelityError(
            f"merged model differs from adapter+base: max |logit diff| {diff:.4g} > tolerance {tolerance:g}",
            where=str(ft_dir),
            fix="export with --dtype fp32, or raise export.fidelity_tolerance if this is expected",
        )
    return fidelity


def _fidelity_prompts(stage: dict, n: int) -> list[str]:
    from domain_expert.data.records import read_records

    data_dir = Path(stage.get("data_dir", ""))
    for split in ("test", "val", "train"):
        path = data_dir / f"{split}.jsonl"
        if path.exists():
            prompts = [r.prompt or (r.text or "")[:500] for r in read_records(path)][:n]
            if prompts:
                return prompts
    # the prepared data moved away: still check on fixed generic prompts
    return ["What is anemia?", "Explain thrombocytopenia in plain language.", "What is a gene?", "Hello"][:n]


def _max_diff(a: list, b: list) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _logits(model, batch: list[list[int]]) -> list:
    """Logits at every position of each prompt. An encoder-decoder model reads the prompt with its encoder and the
    same tokens, shifted right after its decoder start token, with its decoder: every weight is exercised and there
    are as many positions as prompt tokens."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    seq2seq = getattr(base.config, "is_encoder_decoder", False)
    out = []
    with torch.no_grad():
        for ids in batch:  # one at a time: no padding, so nothing but the weights can differ
            x = torch.tensor([ids])
            kw = {"decoder_input_ids": base.prepare_decoder_input_ids_from_labels(labels=x)} if seq2seq else {}
            out.append(model(input_ids=x, **kw).logits[0].float())
    return out

"""`domain-expert export`: merge the LoRA adapter into the base and write a plain Hugging Face folder that loads
with `AutoModelForCausalLM.from_pretrained` and no project code, plus a model card. Fidelity is checked on the
written folder: its logits against adapter+base on held-out prompts; above the tolerance the export fails."""

from __future__ import annotations

import time
from pathlib import Path

from domain_expert.config import RunConfig, load_config
from domain_expert.errors import FidelityError
from domain_expert.fsutil import read_json, staged_dir, write_json_atomic, write_text_atomic
from domain_expert.runs import find_stage

# max |logit difference| allowed, by export dtype. fp32 merges are exact up to summation order; bf16 rounds every
# weight to 8 significant bits, which moves logits by a few tenths on a 30-layer model (measured: see README).
DEFAULT_TOLERANCE = {"fp32": 1e-3, "fp16": 0.5, "bf16": 1.5}


def run(
    finetune_path: str | Path, out_dir: str | Path | None = None, *, dtype: str | None = None, overwrite: bool = False
) -> Path:
    import torch

    from domain_expert.data.records import read_records
    from domain_expert.models.kinds import auto_class
    from domain_expert.models.loader import load_for_inference

    ft_dir = find_stage(finetune_path, "finetune")
    stage = read_json(ft_dir / "stage.json")
    cfg = load_config(ft_dir / "config.yaml")
    dtype = dtype or cfg.export.dtype
    tolerance = cfg.export.fidelity_tolerance or DEFAULT_TOLERANCE[dtype]
    out_dir = Path(out_dir) if out_dir else ft_dir.parent / "export"
    prompts = _fidelity_prompts(stage, cfg.export.fidelity_prompts, read_records)

    t0 = time.time()
    print(f"[domain-expert] export: merging adapter into {stage['base_model']['reference']} ({dtype})", flush=True)
    lm = load_for_inference(ft_dir, adapter="unmerged", device="cpu", dtype="fp32")
    peft_model, tokenizer, fmt = lm.model, lm.tokenizer, lm.fmt
    batch = [fmt.encode_prompt(tokenizer, p) for p in prompts]
    reference = _logits(peft_model, batch, tokenizer.pad_token_id)
    merged = peft_model.merge_and_unload()
    lm_kind = lm.kind
    # Two checks: the merge itself (fp32, must be exact up to summation order) catches merge bugs; the written
    # folder in the export dtype shows what rounding costs and proves it loads in plain transformers.
    merge_diff = _max_diff(reference, _logits(merged, batch, tokenizer.pad_token_id))
    if merge_diff > DEFAULT_TOLERANCE["fp32"]:
        raise FidelityError(
            f"the fp32 merge differs from adapter+base: max |logit diff| {merge_diff:.4g}"
            f" > {DEFAULT_TOLERANCE['fp32']}",
            where=str(ft_dir),
            fix="this is a bug (or an adapter type that does not merge linearly): use the adapter with its base",
        )
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    merged = merged.to(torch_dtype)
    gen = merged.generation_config
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.do_sample = False  # greedy by default, as evaluated; callers may sample
    for k in ("temperature", "top_p", "top_k"):
        setattr(gen, k, None)

    with staged_dir(out_dir, overwrite=overwrite) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        fmt.save(tmp)
        del merged, peft_model, lm
        # Load what we wrote exactly as a user would: plain transformers (the Auto class of its kind), no project
        # code, no adapter.
        reloaded = auto_class(lm_kind).from_pretrained(tmp, dtype=torch.float32)
        exported = _logits(reloaded, batch, tokenizer.pad_token_id)
        diff = _max_diff(reference, exported)
        same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(reference, exported, strict=True))
        fidelity = {
            "prompts": len(batch),
            "merge_max_abs_logit_diff_fp32": merge_diff,
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
        data_manifest = read_json(ft_dir / "data_manifest.json") if (ft_dir / "data_manifest.json").exists() else {}
        write_text_atomic(tmp / "README.md", model_card(cfg, stage, data_manifest, dtype, fidelity))
        write_json_atomic(
            tmp / "stage.json",
            {
                "stage": "export",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "dtype": dtype,
                "finetune_dir": str(ft_dir.resolve()),
                "base_model": stage["base_model"],
                "fidelity": fidelity,
                "seconds": round(time.time() - t0, 1),
            },
        )
    print(f"[domain-expert] export done: {out_dir} (max |logit diff| {diff:.3g} <= {tolerance:g})", flush=True)
    return out_dir


def _fidelity_prompts(stage: dict, n: int, read_records) -> list[str]:
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


def _logits(model, batch: list[list[int]], pad_id: int) -> list:
    import torch

    out = []
    with torch.no_grad():
        for ids in batch:  # one at a time: no padding, so nothing but the weights can differ
            out.append(model(input_ids=torch.tensor([ids])).logits[0].float())
    return out


def model_card(cfg: RunConfig, stage: dict, data_manifest: dict, dtype: str, fidelity: dict) -> str:
    base = stage["base_model"]
    summ = stage.get("summary", {})
    sources = data_manifest.get("sources", [])
    src_lines = (
        "\n".join(
            f"- **{s['name']}** ({s['kind']}): {s.get('records', '?')} records"
            + (f", {s['scope']}" if s.get("scope") else "")
            + f". Licence: {s.get('license', 'unknown')}"
            for s in sources
        )
        or "- (data manifest not found)"
    )
    outputs = data_manifest.get("outputs", {})
    split_line = ", ".join(
        f"{k.split('.')[0]} {v['records']} records / {v['groups']} groups" for k, v in outputs.items()
    )
    base_hub = base["origin"].split(" ")[0] if base["source"] == "builtin" else base["reference"]
    return f"""---
base_model: {base_hub}
library_name: transformers
pipeline_tag: text-generation
tags: [medical, lora, domain-expert]
---

# {cfg.name}: {base["reference"]} fine-tuned with LoRA

**Not medical advice.** This model is not a clinician. It was tuned to explain medical terminology from public
reference definitions and can be wrong, incomplete or out of date. Do not use it to diagnose, treat or make any
decision about a patient; always check answers against authoritative sources and a qualified professional.

## Base model
- {base["origin"]} (licence: {base["license"]})

## Data
{src_lines}
- Split by group (term id, synonyms included) with seed {data_manifest.get("split", {}).get("seed", "?")}: {split_line}.
  No held-out term, nor any of its synonyms, was seen in training.
- Public reference data only; no patient data.

## Training
- LoRA r={cfg.lora.r}, alpha={cfg.lora.alpha}, dropout={cfg.lora.dropout}, targets {", ".join(cfg.lora.target_modules)}
- learning rate {cfg.train.learning_rate}, batch {cfg.train.batch_size} x {cfg.train.grad_accum}, max length
  {cfg.train.max_seq_len}, {summ.get("steps", "?")} steps ({summ.get("epochs_seen", "?")} epochs),
  {summ.get("trained_tokens", "?")} tokens, {summ.get("seconds", "?")} s on {stage.get("device")}/{stage.get("dtype")}
- validation loss {_fmt(summ.get("val_loss_start"))} -> {_fmt(summ.get("val_loss_end"))}
- Loss on answer tokens only; EOS is trained so the model stops.

## Prompt format
Style `{cfg.prompt.style}`{' with system message: "' + cfg.prompt.system + '"' if cfg.prompt.system else ""}. Use
the same format at inference (`prompt_format.json`; the chat template is in the tokenizer).

## Export
Merged weights in {dtype}. Fidelity on {fidelity["prompts"]} held-out prompts, against adapter+base in fp32: merge
in fp32 max |logit diff| {fidelity["merge_max_abs_logit_diff_fp32"]:.2g}; this {dtype} folder max |logit diff|
{fidelity["max_abs_logit_diff"]:.3g} (tolerance {fidelity["tolerance"]:g}), same top token at
{fidelity["argmax_agreement"]:.1%} of positions.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("PATH")
model = AutoModelForCausalLM.from_pretrained("PATH")
```

## Intended use
Research and education on medical terminology; a starting point for evaluation. Out of scope: clinical use,
patient-facing advice, anything involving protected health information.
"""


def _fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) else "?"

"""The `gguf` target: the merged model as one GGUF file (gguf_writer.py) plus an Ollama Modelfile (ollama.py), for
llama.cpp and Ollama. Checked before it is kept: transformers reloads the GGUF (its own GGUF reader: dequantize, undo
the q/k permutation, rebuild the tokenizer) and its logits on the run's held-out prompts, in the run's prompt format,
are compared with the merged HF folder's; the GGUF's tokenizer must encode those prompts to the same ids.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from domain_expert.errors import ExportError, FidelityError
from domain_expert.export.gguf_writer import GGUF_TYPES, check_convertible, write_gguf
from domain_expert.fsutil import staged_dir, write_json_atomic, write_text_atomic

GGUF_NAME = "model.gguf"
# max |logit diff| vs the merged folder (both run in fp32), by GGUF type. f32 only reorders rows (exact); f16/bf16
# round each weight (exact from a bf16 export; from an fp32 export they cost what `hf` allows for those dtypes); q8_0
# rounds to 8 bits per 32-weight block. Measured on the default SmolLM2 run's bf16 export, 4 held-out prompts
# (docs/deploy.md): f32 0, bf16 0, f16 6e-5, q8_0 0.88 (argmax agreement 0.98).
GGUF_TOLERANCE = {"f32": 1e-4, "f16": 0.5, "bf16": 1.5, "q8_0": 2.0}
MIN_ARGMAX_AGREEMENT = {"f32": 1.0, "f16": 0.95, "bf16": 0.95, "q8_0": 0.8}


def build_gguf(src, out: Path, *, gguf_type: str = "q8_0", overwrite: bool = False, prompts: int = 4,
               **_: object) -> Path:  # fmt: skip
    if gguf_type not in GGUF_TYPES:
        raise ExportError(f"unknown GGUF type '{gguf_type}'", where="--gguf-type", fix=f"use {', '.join(GGUF_TYPES)}")
    check_convertible(json.loads((src.folder / "config.json").read_text(encoding="utf-8")), str(src.folder))
    from transformers import AutoTokenizer

    from domain_expert.export.ollama import modelfile
    from domain_expert.prompts import PromptFormat

    tokenizer = AutoTokenizer.from_pretrained(src.folder)
    if (src.folder / "prompt_format.json").exists():
        fmt = PromptFormat.load(src.folder)
    else:
        fmt = PromptFormat("chat" if getattr(tokenizer, "chat_template", None) else "plain")
    batch = [fmt.encode_prompt(tokenizer, p) for p in src.held_out_prompts(prompts)]
    with staged_dir(out, overwrite=overwrite) as tmp:
        t0 = time.time()
        written = write_gguf(src.folder, tmp / GGUF_NAME, gguf_type, src.name)
        seconds = round(time.time() - t0, 1)
        check = check_gguf(tmp, src.folder, batch, gguf_type)
        text, ollama = modelfile(GGUF_NAME, tokenizer, fmt.system)
        write_text_atomic(tmp / "Modelfile", text)
        write_json_atomic(
            tmp / "stage.json",
            {
                "stage": "export-gguf",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "source": str(src.folder.resolve()),
                "gguf_type": gguf_type,
                "gguf_bytes": (tmp / GGUF_NAME).stat().st_size,
                "converter": "domain_expert.export.gguf_writer (gguf package GGUFWriter, Llama family)",
                "conversion_seconds": seconds,
                "written": written,
                "check": check,
                "ollama": ollama,
            },
        )
    mb = (out / GGUF_NAME).stat().st_size / 1e6
    diff, tol, agree = check["max_abs_logit_diff"], check["tolerance"], check["argmax_agreement"]
    print(
        f"[domain-expert] gguf: {out / GGUF_NAME} ({gguf_type}, {mb:.1f} MB, {seconds} s); max |logit diff| vs the"
        f" merged folder {diff:.3g} <= {tol:g}, argmax agreement {agree:.3f};"
        f" Ollama: cd {out} && ollama create NAME -f Modelfile",
        flush=True,
    )
    return out


def check_gguf(folder: Path, merged: Path, batch: list[list[int]], gguf_type: str) -> dict:
    """Reload the GGUF with transformers and compare it with the merged HF folder; raise FidelityError beyond the
    tolerance or when the GGUF's tokenizer encodes the prompts differently."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from domain_expert.export.hf import _logits

    t0 = time.time()
    ref_model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    reference = _logits(ref_model, batch)
    del ref_model
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME, dtype=torch.float32)
    got = _logits(gguf_model, batch)
    del gguf_model
    diff = max(float((a - b).abs().max()) for a, b in zip(reference, got, strict=True))
    same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(reference, got, strict=True))
    agreement = same / sum(len(x) for x in batch)
    ref_tok = AutoTokenizer.from_pretrained(merged)
    gguf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    texts = [ref_tok.decode(ids) for ids in batch]
    tokens_same = all(
        gguf_tok(t, add_special_tokens=False)["input_ids"] == ref_tok(t, add_special_tokens=False)["input_ids"]
        for t in texts
    )
    check = {
        "prompts": len(batch),
        "positions": sum(len(x) for x in batch),
        "max_abs_logit_diff": diff,
        "tolerance": GGUF_TOLERANCE[gguf_type],
        "argmax_agreement": agreement,
        "min_argmax_agreement": MIN_ARGMAX_AGREEMENT[gguf_type],
        "tokenizer_same_ids": tokens_same,
        "compared": f"GGUF {gguf_type} reloaded by transformers (fp32) vs the merged HF folder (fp32), held-out"
        " prompts in the run's prompt format",
        "seconds": round(time.time() - t0, 1),
    }
    if diff > check["tolerance"] or agreement < check["min_argmax_agreement"] or not tokens_same:
        raise FidelityError(
            f"the GGUF ({gguf_type}) differs from the merged model: max |logit diff| {diff:.4g} (tolerance"
            f" {check['tolerance']:g}), argmax agreement {agreement:.3f} (min {check['min_argmax_agreement']}),"
            f" tokenizer {'same' if tokens_same else 'DIFFERENT'} ids",
            where=str(merged),
            fix="try --gguf-type f32 or bf16; if those fail too, this is a converter bug: report it",
        )
    return check

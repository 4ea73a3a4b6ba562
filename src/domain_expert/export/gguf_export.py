"""The `gguf` target: the merged model as one GGUF file plus an Ollama Modelfile (ollama.py), for llama.cpp and
Ollama. The converter is our Llama-family writer (gguf_writer.py), or llama.cpp's own `convert_hf_to_gguf.py` when
the user points at a llama.cpp source tree (`--llama-cpp PATH` or DOMAIN_EXPERT_LLAMA_CPP): it knows many more
architectures and tokenizers.

Either way the GGUF is checked before it is kept: transformers reloads it (its own GGUF reader: dequantize, undo the
q/k permutation, rebuild the tokenizer) and its logits on the run's held-out prompts, in the run's prompt format, are
compared with the merged HF folder's; the GGUF's tokenizer must encode those prompts to the same ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from domain_expert.errors import ExportError, FidelityError
from domain_expert.export.gguf_writer import GGUF_TYPES, check_convertible, write_gguf
from domain_expert.export.targets import write_target_stage
from domain_expert.fsutil import staged_dir, write_text_atomic

GGUF_NAME = "model.gguf"
# max |logit diff| vs the merged folder (both run in fp32), by GGUF type. f32 only reorders rows (exact); f16/bf16
# round each weight (exact from a bf16 export; from an fp32 export they cost what `hf` allows for those dtypes); q8_0
# rounds to 8 bits per 32-weight block. Measured on the default SmolLM2 run's bf16 export, 4 held-out prompts
# (docs/deploy.md): f32 0, bf16 0, f16 6e-5, q8_0 0.88 (argmax agreement 0.98).
GGUF_TOLERANCE = {"f32": 1e-4, "f16": 0.5, "bf16": 1.5, "q8_0": 2.0}
MIN_ARGMAX_AGREEMENT = {"f32": 1.0, "f16": 0.95, "bf16": 0.95, "q8_0": 0.8}


LLAMA_CPP_ENV = "DOMAIN_EXPERT_LLAMA_CPP"


def build_gguf(src, out: Path, *, gguf_type: str = "q8_0", overwrite: bool = False, prompts: int = 4,
               llama_cpp: str | Path | None = None, **_: object) -> Path:  # fmt: skip
    if gguf_type not in GGUF_TYPES:
        raise ExportError(f"unknown GGUF type '{gguf_type}'", where="--gguf-type", fix=f"use {', '.join(GGUF_TYPES)}")
    config = json.loads((src.folder / "config.json").read_text(encoding="utf-8"))
    converter = find_llama_cpp(llama_cpp or os.environ.get(LLAMA_CPP_ENV))
    if converter is None:
        check_convertible(config, str(src.folder))
    elif config.get("is_encoder_decoder"):
        raise ExportError(
            "the gguf target is for decoder-only models (what Ollama and llama-server serve); this is encoder-decoder",
            where=str(src.folder),
            fix="use --target hf, bedrock or sagemaker for T5/Flan-T5 models",
        )
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
        if converter is None:
            written = write_gguf(src.folder, tmp / GGUF_NAME, gguf_type, src.name)
        else:
            written = run_llama_cpp(converter, src.folder, tmp / GGUF_NAME, gguf_type)
        seconds = round(time.time() - t0, 1)
        check = check_gguf(tmp, src.folder, batch, gguf_type)
        text, ollama = modelfile(GGUF_NAME, tokenizer, fmt.system)
        write_text_atomic(tmp / "Modelfile", text)
        write_target_stage(
            tmp,
            "gguf",
            src,
            gguf_type=gguf_type,
            gguf_bytes=(tmp / GGUF_NAME).stat().st_size,
            converter=str(converter) if converter else "domain_expert.export.gguf_writer (gguf, Llama family)",
            conversion_seconds=seconds,
            written=written,
            check=check,
            ollama=ollama,
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
    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as e:  # an architecture transformers' GGUF reader lacks
        raise ExportError(
            f"transformers cannot read this GGUF back ({str(e).splitlines()[0][:200]}), so it cannot be checked",
            where=str(merged),
            fix="an unchecked GGUF is not kept: use --target hf, bedrock or sagemaker for this architecture",
        ) from None
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


def find_llama_cpp(path: str | Path | None) -> Path | None:
    """llama.cpp's convert_hf_to_gguf.py in `path`: a llama.cpp checkout, or an unpacked llama-cpp-python source
    distribution (its vendor/llama.cpp). None when no path is given."""
    if not path:
        return None
    root = Path(path).expanduser()
    for cand in (root, root / "vendor" / "llama.cpp", root.parent if root.is_file() else root):
        script = cand / "convert_hf_to_gguf.py"
        if script.is_file() and (cand / "gguf-py").is_dir():
            return script
    raise ExportError(
        "no llama.cpp converter here (convert_hf_to_gguf.py next to gguf-py/)",
        where=f"--llama-cpp / {LLAMA_CPP_ENV}={path}",
        fix="point at a llama.cpp source tree, or unpack `pip download --no-deps --no-binary :all:"
        " llama-cpp-python` and point at it; or leave it unset to use the built-in Llama-family writer",
    )


def run_llama_cpp(script: Path, folder: Path, path: Path, gguf_type: str) -> dict:
    """Run llama.cpp's converter (its own gguf-py first on the path, as its README says) in a child process."""
    root = script.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root / "gguf-py"), str(root), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, str(script), str(folder), "--outtype", gguf_type, "--outfile", str(path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not path.exists():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise ExportError(
            f"llama.cpp's converter failed (exit {proc.returncode}): {tail[-400:]}",
            where=str(script),
            fix="read its message (a missing `sentencepiece` is common: pip install sentencepiece), or leave"
            f" --llama-cpp / {LLAMA_CPP_ENV} unset to use the built-in Llama-family writer",
        )
    return {"command": f"{script} {folder} --outtype {gguf_type} --outfile {path.name}"}

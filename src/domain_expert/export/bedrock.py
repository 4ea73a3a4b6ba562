"""The `bedrock` target: a folder ready for Amazon Bedrock Custom Model Import (Hugging Face format: config.json,
*.safetensors, tokenizer files, generation_config.json) and its validation report, made before anything is uploaded.
An import job takes minutes to fail on S3 and says little; every rule Bedrock is known to apply is checked here
first, and a folder that breaks one is never written.

`validate_bedrock(folder) -> dict` is public (`domain-expert aws` calls it on what it uploads); it raises an
ExportError naming every broken rule at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from domain_expert.errors import ExportError
from domain_expert.export.targets import write_target_stage
from domain_expert.fsutil import staged_dir, write_json_atomic

# What Bedrock Custom Model Import accepts, in one place. Checked against the AWS user guide on BEDROCK_CHECKED;
# re-check there before relying on a limit (the service changes: e.g. Qwen3 and GPT-OSS were added in 2025).
BEDROCK_DOC_URL = "https://docs.aws.amazon.com/bedrock/latest/userguide/model-customization-import-model.html"
BEDROCK_CHECKED = "2026-12-06"
BEDROCK_ARCHITECTURES = {  # config.json `architectures[0]` -> the family name the AWS guide uses
    "LlamaForCausalLM": "Llama (Llama 2, 3, 3.1, 3.2, 3.3)",
    "MllamaForConditionalGeneration": "Llama 3.2 vision (Mllama)",
    "MistralForCausalLM": "Mistral",
    "MixtralForCausalLM": "Mixtral",
    "T5ForConditionalGeneration": "Flan (T5 v1.1 / Flan-T5)",
    "GPTBigCodeForCausalLM": "GPTBigCode",
    "Qwen2ForCausalLM": "Qwen2 / Qwen2.5",
    "Qwen2VLForConditionalGeneration": "Qwen2-VL",
    "Qwen2_5_VLForConditionalGeneration": "Qwen2.5-VL",
    "Qwen3ForCausalLM": "Qwen3",
    "GptOssForCausalLM": "GPT-OSS",
}
BEDROCK_DTYPES = ("float32", "float16", "bfloat16")  # weights precisions the import accepts; no quantized weights
BEDROCK_MAX_BYTES = 200 * 1000**3  # total model files, text models
BEDROCK_MAX_CONTEXT = 128 * 1024  # tokens: max_position_embeddings / n_positions above this are refused
T5_HEAD_MULTIPLE = 4  # T5 num_heads must be divisible by 4: flan-t5-small (6 heads) was refused, flan-t5-large (16) not
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def build_bedrock(src, out: Path, *, dtype: str = "bf16", overwrite: bool = False, **_: object) -> Path:
    """Write the import folder in `dtype` (bf16 by default: Bedrock serves 16-bit weights, and bf16 halves an fp32
    upload without fp16's overflow risk), validate it inside the staging folder, and only then move it into place."""
    import torch

    from domain_expert.models.kinds import auto_class, model_kind

    if dtype not in ("bf16", "fp16", "fp32"):
        raise ExportError(f"unknown dtype '{dtype}'", where="--dtype", fix="use bf16 (default), fp16 or fp32")
    # rules readable from config.json alone fail before any weights are loaded
    _raise_if(_config_problems(_read_config(src.folder)), src.folder)
    t0 = time.time()
    kind = model_kind(src.folder)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    model = auto_class(kind).from_pretrained(src.folder, dtype=torch_dtype)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.folder)
    with staged_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        del model
        tokenizer.save_pretrained(tmp)
        _template_into_tokenizer_config(tmp, tokenizer)
        for extra in ("prompt_format.json", "README.md"):
            if (src.folder / extra).exists():
                (tmp / extra).write_bytes((src.folder / extra).read_bytes())
        report = validate_bedrock(tmp)
        write_json_atomic(tmp / "validation.json", report)
        write_target_stage(
            tmp,
            "bedrock",
            src,
            dtype=dtype,
            kind=kind,
            validation=report,
            seconds=round(time.time() - t0, 1),
        )
    print(summary(report, out))
    return out


def validate_bedrock(folder: str | Path) -> dict:
    """Check a model folder against what Bedrock Custom Model Import accepts; return the report or raise an
    ExportError listing every broken rule. Reads config.json and the safetensors headers only (no weights)."""
    folder = Path(folder)
    config = _read_config(folder)
    problems = _config_problems(config)
    checks: dict = {"architecture": (config.get("architectures") or ["?"])[0]}
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        problems.append("no *.safetensors weights (Bedrock imports safetensors only, not .bin or .gguf)")
    if not any(f in files for f in ("tokenizer.json", "tokenizer.model")):
        problems.append("no tokenizer.json or tokenizer.model")
    if "tokenizer_config.json" not in files:
        problems.append("no tokenizer_config.json")
    dtypes = sorted({d for w in weights for d in _safetensors_dtypes(w)})
    checks["weight_dtypes"] = [_SAFETENSORS_DTYPES.get(d, d) for d in dtypes]
    bad = [d for d in dtypes if d not in _SAFETENSORS_DTYPES]
    if bad:
        problems.append(f"weights stored as {', '.join(bad)}: Bedrock accepts {', '.join(BEDROCK_DTYPES)} only")
    size = sum((folder / f).stat().st_size for f in files)
    checks["total_bytes"] = size
    if size > BEDROCK_MAX_BYTES:
        problems.append(f"model files total {size / 1e9:.1f} GB > the {BEDROCK_MAX_BYTES / 1e9:.0f} GB limit")
    checks["context_length"] = _context_length(config)
    checks["files"] = files
    _raise_if(problems, folder)
    return {
        "ok": True,
        "checks": checks,
        "limits": {
            "architectures": sorted(BEDROCK_ARCHITECTURES),
            "dtypes": list(BEDROCK_DTYPES),
            "max_bytes": BEDROCK_MAX_BYTES,
            "max_context": BEDROCK_MAX_CONTEXT,
            "t5_num_heads_multiple_of": T5_HEAD_MULTIPLE,
            "source": BEDROCK_DOC_URL,
            "checked": BEDROCK_CHECKED,
        },
    }


def summary(report: dict, folder: Path) -> str:
    c = report["checks"]
    family = BEDROCK_ARCHITECTURES.get(c["architecture"], "?")
    return (
        f"[domain-expert] bedrock: {folder} passes Custom Model Import's rules (as of {BEDROCK_CHECKED}):"
        f" {c['architecture']} ({family}), weights {'/'.join(c['weight_dtypes'])},"
        f" {c['total_bytes'] / 1e6:.1f} MB, context {c['context_length']} tokens; upload the folder's files to S3"
    )


def _config_problems(config: dict) -> list[str]:
    problems = []
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in BEDROCK_ARCHITECTURES:
        problems.append(f"architecture {arch} is not one Bedrock imports ({', '.join(sorted(BEDROCK_ARCHITECTURES))})")
    if config.get("quantization_config"):
        problems.append("quantized weights (quantization_config in config.json): Bedrock imports fp32/fp16/bf16")
    declared = str(config.get("dtype") or config.get("torch_dtype") or "")
    if declared and declared not in BEDROCK_DTYPES:
        problems.append(f"config.json declares dtype {declared}: Bedrock accepts {', '.join(BEDROCK_DTYPES)}")
    ctx = _context_length(config)
    if ctx is not None and ctx > BEDROCK_MAX_CONTEXT:
        problems.append(f"context length {ctx} > Bedrock's {BEDROCK_MAX_CONTEXT} tokens")
    if config.get("model_type") == "t5":
        heads = int(config.get("num_heads", 0))
        if heads % T5_HEAD_MULTIPLE:
            problems.append(
                f"T5 num_heads={heads} is not divisible by {T5_HEAD_MULTIPLE}: Bedrock refuses such T5 models"
                " (flan-t5-small, 6 heads, is refused; flan-t5-base/large, 12/16 heads, import)"
            )
    return problems


def _raise_if(problems: list[str], folder: Path) -> None:
    if problems:
        raise ExportError(
            "not importable by Amazon Bedrock: " + "; ".join(problems),
            where=str(folder),
            fix="use a supported base model (e.g. a Llama, Mistral, Qwen2 or Flan-T5-base/large) or another --target"
            f" (rules as of {BEDROCK_CHECKED}: {BEDROCK_DOC_URL})",
        )


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise ExportError(
            "no config.json: not a Hugging Face model folder",
            where=str(folder),
            fix="export the run first (`domain-expert export RUN`) and pass its export/ folder",
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _context_length(config: dict) -> int | None:
    for key in ("max_position_embeddings", "n_positions"):
        if config.get(key) is not None:
            return int(config[key])
    return None  # T5: relative positions, no fixed maximum in the config


def _safetensors_dtypes(path: Path) -> set[str]:
    """The tensor dtypes in a safetensors file, from its JSON header (8-byte little-endian length, then JSON)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def _template_into_tokenizer_config(folder: Path, tokenizer) -> None:
    """transformers 5 writes the chat template to chat_template.jinja; Bedrock's chat (Converse) reads it from
    tokenizer_config.json, so it goes there too."""
    template = getattr(tokenizer, "chat_template", None)
    path = folder / "tokenizer_config.json"
    if template and path.exists():
        cfg = json.loads(path.read_text(encoding="utf-8"))
        cfg.setdefault("chat_template", template)
        write_json_atomic(path, cfg)

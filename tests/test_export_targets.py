"""`domain-expert export --target bedrock|sagemaker|gguf` on a tiny fine-tuned Llama (and tiny T5 folders): each
target's folder, its checks, and that a broken artifact fails with the reason and leaves nothing behind."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from domain_expert.cli import main

REPO = Path(__file__).resolve().parents[1]
LLAMA_CPP = os.environ.get("DOMAIN_EXPERT_LLAMA_CPP")  # a llama.cpp tree, for the one test of the real converter


@pytest.fixture(autouse=True)
def _builtin_gguf_writer(monkeypatch):
    """Tests run the built-in writer unless they ask for llama.cpp's converter themselves."""
    monkeypatch.delenv("DOMAIN_EXPERT_LLAMA_CPP", raising=False)


@pytest.fixture(scope="module")
def tiny_run(tiny_tuned, tmp_path_factory) -> Path:
    """A copy of the tiny tuned run with its export/ (fp32), so targets can write next to it."""
    run_dir = tmp_path_factory.mktemp("targets") / "run"
    shutil.copytree(tiny_tuned, run_dir)
    assert main(["export", str(run_dir)]) == 0
    return run_dir


def _tiny_t5(folder: Path, heads: int) -> Path:
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(str(REPO / "tests" / "assets" / "tiny-tokenizer"))
    cfg = T5Config(vocab_size=len(tok), d_model=8 * heads, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                   num_heads=heads, relative_attention_num_buckets=8, pad_token_id=tok.pad_token_id,
                   eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)  # fmt: skip
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _safetensors_dtypes(folder: Path) -> set[str]:
    from safetensors import safe_open

    out = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            out |= {str(st.get_tensor(k).dtype) for k in st.keys()}  # noqa: SIM118
    return out


# --- bedrock ----------------------------------------------------------------------------------------------------


def test_bedrock_folder_of_the_tiny_llama_is_bf16_validated_and_loads(tiny_run, capsys):
    assert main(["export", str(tiny_run), "--target", "bedrock"]) == 0
    out = tiny_run / "export-bedrock"
    assert "Custom Model Import" in capsys.readouterr().out
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
              "validation.json", "stage.json"):  # fmt: skip
        assert (out / f).exists(), f
    report = json.loads((out / "validation.json").read_text())
    assert report["ok"] and report["checks"]["architecture"] == "LlamaForCausalLM"
    assert report["checks"]["weight_dtypes"] == ["bfloat16"] and report["limits"]["checked"]
    assert _safetensors_dtypes(out) == {"torch.bfloat16"}  # converted, not just labelled
    assert "im_start" in json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    b = AutoModelForCausalLM.from_pretrained(tiny_run / "export", dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 12, 2]])
    with torch.no_grad():
        assert (a(ids).logits - b(ids).logits).abs().max() < 0.5  # bf16 rounding of the same weights


def test_bedrock_t5_with_4_heads_passes_and_6_heads_fails_naming_the_rule(tmp_path, capsys):
    from domain_expert.errors import ExportError
    from domain_expert.export import validate_bedrock

    ok = _tiny_t5(tmp_path / "t5-4", heads=4)
    assert main(["export", str(ok), "--target", "bedrock", "--out", str(tmp_path / "bedrock-4")]) == 0
    assert validate_bedrock(tmp_path / "bedrock-4")["checks"]["architecture"] == "T5ForConditionalGeneration"
    bad = _tiny_t5(tmp_path / "t5-6", heads=6)
    with pytest.raises(ExportError, match="num_heads=6 is not divisible by 4"):
        validate_bedrock(bad)
    capsys.readouterr()
    assert main(["export", str(bad), "--target", "bedrock", "--out", str(tmp_path / "bedrock-6")]) == 2
    err = capsys.readouterr().err
    assert "num_heads=6" in err and "divisible by 4" in err
    assert not (tmp_path / "bedrock-6").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bedrock-6")]  # no half-written staging folder


def test_bedrock_validation_reports_every_broken_rule(tiny_run, tmp_path):
    from domain_expert.errors import ExportError
    from domain_expert.export import validate_bedrock

    folder = tmp_path / "bad"
    shutil.copytree(tiny_run / "export", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(architectures=["GPT2LMHeadModel"], max_position_embeddings=1_000_000)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ExportError) as e:
        validate_bedrock(folder)
    msg = str(e.value)
    assert "GPT2LMHeadModel" in msg and "context length 1000000" in msg and "tokenizer.json" in msg


# --- sagemaker --------------------------------------------------------------------------------------------------


def test_sagemaker_tarball_extracts_and_serves_ping_and_invocations(tiny_run, tmp_path, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    assert main(["export", str(tiny_run), "--target", "sagemaker"]) == 0
    tarball = tiny_run / "export-sagemaker" / "model.tar.gz"
    model_dir = tmp_path / "opt" / "ml" / "model"
    model_dir.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        assert all("/" not in n for n in tar.getnames())  # SageMaker extracts the root into /opt/ml/model
        tar.extractall(model_dir, filter="data")
    # run exactly the command the image's entrypoint runs (`python -m MODULE serve`), with SageMaker's model dir
    script = (REPO / "deploy" / "sagemaker" / "serve").read_text()
    line = next(x for x in script.splitlines() if x.startswith("exec python -m "))
    module, verb = shlex.split(line)[3:]
    assert verb == "serve"
    monkeypatch.setenv("SM_MODEL_DIR", str(model_dir))
    name = json.loads((model_dir / "serving.json").read_text())["name"]
    seen: dict = {}

    def fake_run(app, host, port, **kw):  # instead of uvicorn: the same app, in-process
        seen.update(host=host, port=port)
        c = TestClient(app)
        seen["ping"] = c.get("/ping").status_code
        body = {"model": name, "messages": [{"role": "user", "content": "What is anemia?"}], "max_tokens": 4}
        seen["invocations"] = c.post("/invocations", json=body)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert importlib.import_module(module).main([verb]) == 0
    assert seen["host"] == "0.0.0.0" and seen["port"] == 8080 and seen["ping"] == 200
    r = seen["invocations"]
    assert r.status_code == 200, r.text
    assert r.json()["model"] == name and r.json()["usage"]["completion_tokens"] >= 1


def test_a_target_of_a_run_without_export_exports_it_first_and_unknown_targets_are_refused(tiny_tuned, tmp_path):
    from domain_expert.errors import ExportError
    from domain_expert.export import export_target

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_tuned, run_dir)
    assert not (run_dir / "export").exists()
    out = export_target(run_dir / "finetune", "sagemaker")
    assert out == run_dir / "export-sagemaker" and (out / "model.tar.gz").exists()
    assert json.loads((run_dir / "export" / "stage.json").read_text())["stage"] == "export"
    with pytest.raises(ExportError, match="unknown export target 'onnx'"):
        export_target(run_dir, "onnx")


def test_dockerfile_copies_what_exists_and_runs_the_tested_entrypoint():
    dockerfile = (REPO / "deploy" / "sagemaker" / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.M)
    sources = [s for line in copies for s in line.split()]
    assert "deploy/sagemaker/serve" in sources and "deploy/sagemaker/train" in sources
    for s in sources:
        assert (REPO / s).exists(), s
    assert 'CMD ["serve"]' in dockerfile and "torch==2.13.0" in dockerfile
    assert "/usr/local/bin/serve /usr/local/bin/train" in dockerfile  # SageMaker's two verbs are on PATH
    for verb in ("serve", "train"):  # both dispatch to the module the tests run
        assert (
            f"exec python -m domain_expert.aws.container {verb}" in (REPO / "deploy" / "sagemaker" / verb).read_text()
        )


# --- gguf -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gguf_type", ["f32", "q8_0"])
def test_gguf_matches_the_merged_folder_and_writes_a_modelfile(tiny_run, tmp_path, gguf_type):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / f"gguf-{gguf_type}"
    assert main(["export", str(tiny_run), "--target", "gguf", "--gguf-type", gguf_type, "--out", str(out)]) == 0
    stage = json.loads((out / "stage.json").read_text())
    check = stage["check"]
    assert check["max_abs_logit_diff"] <= check["tolerance"] and check["tokenizer_same_ids"]
    # independently of the stage's own check: reload and compare on a prompt in the run's format
    tok = AutoTokenizer.from_pretrained(tiny_run / "export")
    msgs = [{"role": "user", "content": "What is anemia?"}]
    ids = torch.tensor([tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True)["input_ids"]])
    g = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", dtype=torch.float32)
    m = AutoModelForCausalLM.from_pretrained(tiny_run / "export", dtype=torch.float32)
    with torch.no_grad():
        diff = float((g(ids).logits - m(ids).logits).abs().max())
    assert diff < (1e-4 if gguf_type == "f32" else check["tolerance"])
    if gguf_type == "q8_0":
        assert stage["written"]["tensor_types"].get("Q8_0", 0) > 0 and diff > 0  # really quantized
    modelfile = (out / "Modelfile").read_text()
    system = json.loads((tiny_run / "export" / "prompt_format.json").read_text())["system"]
    assert modelfile.startswith("FROM ./model.gguf\n")
    assert f'SYSTEM """{system}"""' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "{{ range .Messages }}" in modelfile.replace("{{- range", "{{ range")


def test_gguf_with_a_wrong_tensor_layout_fails_and_leaves_nothing(tiny_run, tmp_path, monkeypatch, capsys):
    from domain_expert.export import gguf_writer

    monkeypatch.setattr(gguf_writer, "_permute", lambda w, n_head, n_kv: w)  # forget llama.cpp's q/k row order
    out = tmp_path / "gguf-broken"
    assert main(["export", str(tiny_run), "--target", "gguf", "--gguf-type", "f32", "--out", str(out)]) == 2
    assert "differs from the merged model" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".gguf-broken*"))


def test_gguf_refuses_t5_with_the_reason(tmp_path, capsys):
    t5 = _tiny_t5(tmp_path / "t5", heads=4)
    assert main(["export", str(t5), "--target", "gguf"]) == 2
    err = capsys.readouterr().err
    assert "T5ForConditionalGeneration is not converted" in err and "--target hf" in err


def _fake_llama_cpp(root: Path, body: str) -> Path:
    """A folder shaped like a llama.cpp source tree whose convert_hf_to_gguf.py runs `body`."""
    (root / "gguf-py").mkdir(parents=True)
    (root / "convert_hf_to_gguf.py").write_text("import sys\nfrom pathlib import Path\n" + body)
    return root


def test_gguf_through_a_llama_cpp_tree_passes_its_arguments_and_checks_its_output(tiny_run, tmp_path, capsys):
    # a stand-in converter that writes with our writer: proves argument order, --outtype, --outfile and the check
    conv = _fake_llama_cpp(tmp_path / "llama.cpp", (
        "from domain_expert.export.gguf_writer import write_gguf\n"
        "a = sys.argv\n"
        "write_gguf(Path(a[1]), Path(a[a.index('--outfile') + 1]), a[a.index('--outtype') + 1], 'x')\n"))  # fmt: skip
    out = tmp_path / "gguf-lc"
    argv = ["export", str(tiny_run), "--target", "gguf", "--gguf-type", "f32", "--out", str(out), "--llama-cpp"]
    assert main([*argv, str(conv)]) == 0
    stage = json.loads((out / "stage.json").read_text())
    assert stage["converter"].endswith("convert_hf_to_gguf.py") and "--outtype f32" in stage["written"]["command"]
    assert stage["check"]["max_abs_logit_diff"] < 1e-4
    broken = _fake_llama_cpp(tmp_path / "broken", "print('BPE pre-tokenizer was not recognized', file=sys.stderr)"
                             "\nsys.exit(1)\n")  # fmt: skip
    capsys.readouterr()
    assert main([*argv[:-2], str(tmp_path / "gguf-x"), "--llama-cpp", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "converter failed (exit 1)" in err and "pre-tokenizer was not recognized" in err
    assert not (tmp_path / "gguf-x").exists()
    assert main([*argv[:-2], str(tmp_path / "gguf-y"), "--llama-cpp", str(tmp_path)]) == 2
    assert "no llama.cpp converter here" in capsys.readouterr().err


@pytest.mark.skipif(not LLAMA_CPP, reason="set DOMAIN_EXPERT_LLAMA_CPP to a llama.cpp source tree")
def test_gguf_with_the_real_llama_cpp_converter(tmp_path, monkeypatch):
    """llama.cpp's own converter on the built-in SmolLM2 (its tokenizer is one llama.cpp recognises)."""
    from domain_expert.models.reference import resolve_model

    monkeypatch.setenv("DOMAIN_EXPERT_LLAMA_CPP", LLAMA_CPP)
    folder = Path(resolve_model("smollm2-135m-instruct").path)
    out = tmp_path / "lc"
    assert main(["export", str(folder), "--target", "gguf", "--gguf-type", "q8_0", "--out", str(out)]) == 0
    stage = json.loads((out / "stage.json").read_text())
    assert stage["converter"].endswith("convert_hf_to_gguf.py") and stage["check"]["tokenizer_same_ids"]


def test_ollama_template_is_chatml_only_when_the_template_renders_chatml(tiny_run):
    from transformers import AutoTokenizer

    from domain_expert.export.ollama import _PROBE, chatml, is_chatml

    tok = AutoTokenizer.from_pretrained(tiny_run / "export")
    assert is_chatml(tok)
    assert tok.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True) == chatml(_PROBE)
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    assert not is_chatml(tok)


@pytest.mark.e2e
def test_gguf_q8_0_of_the_real_smollm2(tmp_path):
    """The built-in SmolLM2 (fp32 HF folder converted from its package's GGUF) to q8_0 and back (~25 s on 2 cores)."""
    from domain_expert.models.reference import resolve_model

    folder = Path(resolve_model("smollm2-135m-instruct").path)
    out = tmp_path / "smollm2-gguf"
    assert main(["export", str(folder), "--target", "gguf", "--gguf-type", "q8_0", "--out", str(out)]) == 0
    stage = json.loads((out / "stage.json").read_text())
    check = stage["check"]
    assert check["tokenizer_same_ids"] and check["argmax_agreement"] >= 0.8 and check["max_abs_logit_diff"] > 0
    assert stage["written"]["tokenizer"]["tokens"] == 49152 and stage["ollama"]["stop"][0] == "<|im_end|>"

"""Every bad input: exit code 2, one line on stderr that says what, where and how to fix, nothing half-written."""

from __future__ import annotations

import json

import pytest

from domain_expert.cli import main


def _file_source(path, columns="{prompt: question, completion: answer}", kind="file"):
    return f"data.sources=[{{kind: {kind}, path: '{path}', columns: {columns}}}]"


def _write(path, data) -> None:
    """Write text or bytes and return None, so setups read `_write(...) or [overrides]`."""
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)


def _run_cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _blank_pdf(path):
    from pypdf import PdfWriter

    w = PdfWriter()
    w.add_blank_page(width=200, height=200)
    with open(path, "wb") as f:
        w.write(f)


CASES = {
    # name: (setup(tmp) -> overrides, words the message must contain)
    "missing file": (lambda t: [_file_source(t / "nope.jsonl")], ["nope.jsonl", "not found"]),
    "empty dataset": (lambda t: _write(t / "e.jsonl", "") or [_file_source(t / "e.jsonl")], ["empty"]),
    "csv missing mapped column": (
        lambda t: _write(t / "d.csv", "q,a\nx,y\n") or [_file_source(t / "d.csv")],
        ["question", "the data has: 'q', 'a'", "columns"],
    ),
    "jsonl line not json": (
        lambda t: _write(t / "d.jsonl", '{"question": "a", "answer": "b"}\n{oops\n') or [_file_source(t / "d.jsonl")],
        ["d.jsonl:2", "JSON"],
    ),
    "non utf8": (
        lambda t: _write(t / "d.csv", b"question,answer\nan\xe9mie,x\n") or [_file_source(t / "d.csv")],
        ["d.csv", "UTF-8"],
    ),
    "pdf without text": (
        lambda t: (
            (t / "docs").mkdir()
            or _blank_pdf(t / "docs" / "scan.pdf")
            or ["data.sources=[{kind: documents, path: '" + str(t / "docs") + "'}]"]
        ),
        ["scan.pdf", "OCR"],
    ),
    "unknown config key": (lambda t: ["train.epoch=3"], ["train.epoch", "did you mean epochs"]),
    "learning rate <= 0": (lambda t: ["train.learning_rate=0"], ["train.learning_rate", "greater than 0"]),
    "lora rank <= 0": (lambda t: ["lora.r=-1"], ["lora.r"]),
    "empty target modules": (lambda t: ["lora.target_modules=[]"], ["lora.target_modules"]),
    "base model not found": (lambda t: ["model=./no/such/model"], ["./no/such/model", "not found"]),
}


@pytest.mark.parametrize("verb", ["prepare", "run"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line_and_exit_2(case, verb, tmp_path, tiny_args, capsys):
    setup, words = CASES[case]
    if verb == "prepare" and case == "base model not found":
        verb = "finetune"
    extra = setup(tmp_path)
    out = tmp_path / "out"
    argv = [verb, *tiny_args(), f"output_dir={out}", *extra]
    code, err = _run_cli(argv, capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w.lower() in err.lower(), (w, err)
    assert "fix:" in err
    # nothing half-written: neither the run folder's stage outputs nor temp folders
    produced = [p for p in out.rglob("*")] if out.exists() else []
    assert not [p for p in produced if p.suffix in (".jsonl", ".safetensors") or "partial" in p.name], produced


def test_existing_run_folder_is_refused_unless_overwrite(tmp_path, tiny_args, capsys):
    args = tiny_args(**{"train.max_steps": "1", "evaluate.show_examples": "0"})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("precious")
    code, err = _run_cli(["run", *args], capsys)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert (run_dir / "keep.txt").read_text() == "precious"
    code, err = _run_cli(["prepare", *args], capsys)
    assert code == 0
    code, err = _run_cli(["prepare", *args], capsys)
    assert code == 2 and "--overwrite" in err
    before = (run_dir / "data" / "manifest.json").read_text()
    assert main(["prepare", *args, "--overwrite"]) == 0
    assert json.loads((run_dir / "data" / "manifest.json").read_text())["stage"] == "prepare"
    assert before  # the earlier manifest existed and was replaced atomically


def test_hub_model_offline_is_a_clear_error(tmp_path, tiny_args, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable when imported (earlier tests did): set its constant too, or the test waits
    # ~20 s on connection retries instead of testing the offline message
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, err = _run_cli(["finetune", *tiny_args(), "model=someone/no-such-model"], capsys)
    assert code == 2 and "someone/no-such-model" in err and "local folder" in err


def test_export_of_an_unfinished_run_says_what_to_run(tmp_path, capsys):
    (tmp_path / "finetune").mkdir()
    code, err = _run_cli(["export", str(tmp_path)], capsys)
    assert code == 2 and "did not complete" in err


def test_generate_on_a_missing_run(tmp_path, capsys):
    code, err = _run_cli(["generate", str(tmp_path / "nope"), "hi"], capsys)
    assert code == 2 and "not found" in err


def test_help_is_fast_and_imports_no_torch():
    import subprocess
    import sys

    code = "import sys; from domain_expert.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize(
    "flag, value, says",
    [("--max-batch", "0", "1 or more"), ("--max-queue", "-1", "0 or more"), ("--port", "70000", "0..65535")],
)
def test_serve_rejects_bad_numbers_before_loading(flag, value, says, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "runs/none", flag, value])
    assert e.value.code == 2 and says in capsys.readouterr().err

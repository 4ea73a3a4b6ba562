"""`domain-expert init`: a user's folder or Q&A table -> a commented starter config that loads and runs."""

from __future__ import annotations

import json

import pytest
import yaml

from domain_expert.errors import DataError
from domain_expert.init import init


def _folder(tmp_path):
    root = tmp_path / "my-domain"
    (root / "notes").mkdir(parents=True)
    for i in range(12):
        (root / "notes" / f"doc{i}.txt").write_text(f"Term {i} is a word for thing {i}. " * 20, encoding="utf-8")
    rows = [{"Question": f"What is term {i}?", "Answer": f"Term {i} is thing {i}.", "source": "glossary"}
            for i in range(40)]  # fmt: skip
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "ignored.bin").write_bytes(b"\x00\x01")
    return root


def test_init_detects_documents_and_a_table_and_guesses_the_columns(tmp_path):
    from domain_expert.config import load_config

    out = init(_folder(tmp_path), tmp_path / "cfg.yaml")
    text = out.read_text()
    assert "12 file(s) (.txt)" in text and "40 rows" in text and "not used: ['source']" in text
    cfg = load_config(str(out))
    kinds = [s.kind for s in cfg.data.sources]
    assert kinds == ["documents", "file"] and cfg.name == "my-domain"
    assert cfg.data.sources[1].columns == {"prompt": "Question", "completion": "Answer"}
    assert cfg.train.max_minutes >= 2.0 and cfg.train.epochs == 2
    assert yaml.safe_load(text)["model"] == "smollm2-135m-instruct"


def test_init_then_run_works_on_a_users_folder(tmp_path, tiny_model_dir):
    from domain_expert import pipeline
    from domain_expert.config import load_config

    out = init(_folder(tmp_path), tmp_path / "cfg.yaml")
    cfg = load_config(str(out), [f"model={tiny_model_dir}", f"output_dir={tmp_path / 'run'}", "train.max_steps=2",
                                 "train.max_minutes=null", "train.dtype=fp32", "export.dtype=fp32",
                                 "evaluate.max_items=3", "evaluate.max_new_tokens=4", "evaluate.general_chunks=2",
                                 "evaluate.bootstrap_resamples=100", "evaluate.show_examples=0",
                                 "data.sources.0.chunk_tokens=64"])  # fmt: skip
    run_dir = pipeline.run(cfg)
    assert (run_dir / "report" / "report.html").exists()
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    assert [s["kind"] for s in manifest["sources"]] == ["documents", "file"]


def test_init_refuses_bad_input(tmp_path):
    with pytest.raises(DataError, match="path not found"):
        init(tmp_path / "nope", tmp_path / "a.yaml")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.bin").write_bytes(b"1")
    with pytest.raises(DataError, match="no readable documents or tables"):
        init(empty, tmp_path / "a.yaml")
    table = tmp_path / "t.csv"
    table.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(DataError, match="no column looks like"):
        init(table, tmp_path / "a.yaml")
    table.write_text("text,id\nsome text,1\n", encoding="utf-8")
    init(table, tmp_path / "a.yaml")
    with pytest.raises(DataError, match="already exists"):
        init(table, tmp_path / "a.yaml")
    init(table, tmp_path / "a.yaml", force=True)
    assert 'columns: {text: "text"}' in (tmp_path / "a.yaml").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        init(bad, tmp_path / "b.yaml")
    assert f"{bad}:2" in str(e.value)
    assert not (tmp_path / "b.yaml").exists()


def test_init_reads_tables_as_prepare_does(tmp_path):
    """init reads through the file source's readers: a .json array of objects (Alpaca style) works as in prepare."""
    from domain_expert.config import load_config

    table = tmp_path / "alpaca.json"
    table.write_text(json.dumps([{"instruction": "Define X.", "output": "X is Y."}] * 3), encoding="utf-8")
    cfg = load_config(str(init(table, tmp_path / "a.yaml")))
    assert cfg.data.sources[0].columns == {"prompt": "instruction", "completion": "output"}
    assert "3 rows" in (tmp_path / "a.yaml").read_text()

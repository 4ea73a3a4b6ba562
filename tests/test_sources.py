"""File, documents and hub sources: happy paths, and bad inputs as DataErrors saying where and how to fix."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from domain_expert.config import DocumentsSource, FileSource, HubSource, load_config
from domain_expert.data.documents import load_documents_source, windows
from domain_expert.data.files import load_file_source
from domain_expert.data.hub import load_hub_source
from domain_expert.errors import DataError

WHERE = "data.sources.0"
QA = {"prompt": "q", "completion": "a"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def load_file(path: Path, columns: dict | None = None, **kw):
    return load_file_source(FileSource(path=str(path), columns=columns or QA, **kw), WHERE)


def pdf_with_text(text: str) -> bytes:
    """A minimal valid one-page PDF (Helvetica text), with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


# --- file source: happy paths -------------------------------------------------------------------------------


def test_jsonl_rows_become_qa_records_and_blank_rows_are_counted(tmp_path):
    path = write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"q": "What is anemia?", "a": "Low hemoglobin."},
            {"q": "  ", "a": "x"},
            {"q": "Q?", "a": None},
            {"q": " What is AML? ", "a": "A leukemia.\n", "extra": 1},
        ],
    )
    path.write_text(path.read_text() + "\n", encoding="utf-8")  # a trailing blank line is fine
    res = load_file(path)
    assert [(r.id, r.group, r.source, r.task) for r in res.records] == [
        ("qa:1", "qa:1", "qa.jsonl", "qa"),
        ("qa:4", "qa:4", "qa.jsonl", "qa"),
    ]
    assert (res.records[1].prompt, res.records[1].completion) == ("What is AML?", "A leukemia.")
    assert res.notes == {"rows": 4, "skipped_empty": 2}
    assert res.kind == "file" and res.license == "user-provided"
    assert res.inputs[0]["path"] == str(path.resolve()) and len(res.inputs[0]["sha256"]) == 64


def test_group_column_keeps_related_rows_together(tmp_path):
    path = write_jsonl(
        tmp_path / "g.jsonl",
        [
            {"q": "a?", "a": "1", "term": "HP:1"},
            {"q": "b?", "a": "2", "term": "HP:1"},
            {"q": "c?", "a": "3", "term": ""},
        ],
    )
    res = load_file(path, {**QA, "group": "term"})
    assert [r.group for r in res.records] == ["HP:1", "HP:1", "g:3"]  # a blank group falls back to the row id


def test_text_column_gives_text_records(tmp_path):
    res = load_file(write_jsonl(tmp_path / "t.jsonl", [{"body": "Leukemia text."}]), {"text": "body"})
    assert res.records[0].task == "text" and res.records[0].text == "Leukemia text."
    assert res.records[0].prompt is None


def test_json_array_file_is_accepted(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"q": "a?", "a": "1"}, {"q": "b?", "a": "2"}], indent=2), encoding="utf-8")
    assert [r.prompt for r in load_file(path).records] == ["a?", "b?"]


def test_json_array_errors_point_into_the_array(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"q": "a?", "a": "1"},\n  {"q": "b?" "a": "2"}\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON") as e:
        load_file(path)
    assert e.value.where == f"{path}:3"
    path.write_text(json.dumps([{"q": "a?", "a": "1"}, {"question": "b?"}]), encoding="utf-8")
    with pytest.raises(DataError, match="'q', 'a' not found") as e:
        load_file(path)
    assert e.value.where == f"{path} (array item 2)"


def test_csv_with_bom_and_multiline_field(tmp_path):
    path = tmp_path / "qa.csv"
    text = '\ufeffq,a\r\n"What is anemia?","Low\r\nhemoglobin."\r\nWhat is AML?,A leukemia.\r\n'
    path.write_bytes(text.encode())
    res = load_file(path)
    assert [r.prompt for r in res.records] == ["What is anemia?", "What is AML?"]
    assert res.records[0].completion == "Low\r\nhemoglobin."
    assert res.notes == {"rows": 2, "skipped_empty": 0}


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"q": ["a?", "b?", None], "a": ["1", "2", "3"], "other": [1, 2, 3]}), path)
    res = load_file(path)
    assert [(r.id, r.prompt, r.completion) for r in res.records] == [("qa:1", "a?", "1"), ("qa:2", "b?", "2")]
    assert res.notes == {"rows": 3, "skipped_empty": 1}


def test_explicit_format_overrides_the_extension(tmp_path):
    path = write_jsonl(tmp_path / "qa.txt", [{"q": "a?", "a": "1"}])
    assert len(load_file(path, format="jsonl").records) == 1


# --- file source: errors ------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as e:
        load_file(tmp_path / "nope.jsonl")
    assert e.value.where == str(tmp_path / "nope.jsonl")
    assert "data.sources.0.path" in e.value.fix


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(DataError, match="folder") as e:
        load_file(tmp_path)
    assert "documents" in e.value.fix


EMPTY_FILES = [("e.jsonl", ""), ("e.jsonl", "\n\n"), ("e.csv", ""), ("e.csv", "q,a\n")]


@pytest.mark.parametrize("name,content", EMPTY_FILES)
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="empty dataset") as e:
        load_file(path)
    assert e.value.where == str(path)


def test_all_rows_blank_is_an_empty_dataset(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [{"q": "", "a": "x"}, {"q": "y", "a": " "}])
    with pytest.raises(DataError, match="empty dataset: all 2 rows are blank") as e:
        load_file(path)
    assert "data.sources.0.columns" in e.value.fix


def test_jsonl_missing_column_names_the_first_line_lacking_it(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl", [{"q": "a?", "a": "1"}, {"q": "b?", "a": "2"}, {"question": "c?", "a": "3"}]
    )
    with pytest.raises(DataError) as e:
        load_file(path)
    assert e.value.where == f"{path}:3"
    assert "'q'" in e.value.what and "'question'" in e.value.what and "'a'" in e.value.what
    assert "data.sources.0.columns" in e.value.fix


def test_csv_missing_column_lists_the_header(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("question,answer\nx,y\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_file(path)
    assert e.value.where == f"{path}:1"
    assert "'q', 'a' not found" in e.value.what and "'question', 'answer'" in e.value.what


def test_parquet_missing_column_lists_the_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"question": ["a?"], "a": ["1"]}), path)
    with pytest.raises(DataError) as e:
        load_file(path)
    assert str(path) in e.value.where and "columns" in e.value.where
    assert "'q'" in e.value.what and "'question', 'a'" in e.value.what


def test_jsonl_line_that_is_not_json(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"q": "a?", "a": "1"}\n{"q": "b?", "a": }\n', encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON") as e:
        load_file(path)
    assert e.value.where == f"{path}:2"
    assert "Expecting value" in e.value.what


@pytest.mark.parametrize("line,kind", [('"just a string"', "str"), ('["a", "b"]', "list")])
def test_jsonl_line_that_is_not_an_object(tmp_path, line, kind):
    path = tmp_path / "bad.jsonl"
    path.write_text(f'{{"q": "a?", "a": "1"}}\n{line}\n', encoding="utf-8")
    with pytest.raises(DataError, match=f"JSON {kind}, not an object") as e:
        load_file(path)
    assert e.value.where == f"{path}:2"


def test_nested_value_is_not_text(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"q": ["a", "b"], "a": "1"}])
    with pytest.raises(DataError, match="column 'q' holds a list") as e:
        load_file(path)
    assert e.value.where == f"{path}:1"


@pytest.mark.parametrize("name", ["latin1.jsonl", "latin1.csv"])
def test_non_utf8_file_says_line_and_byte_offset(tmp_path, name):
    path = tmp_path / name
    first = b'{"q": "a?", "a": "1"}\n' if name.endswith("jsonl") else b"q,a\n"
    second = '{"q": "Anämie?", "a": "2"}\n' if name.endswith("jsonl") else "Anämie?,2\n"
    path.write_bytes(first + second.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8") as e:
        load_file(path)
    assert e.value.where == f"{path}:2"
    assert f"byte offset {len(first) + second.index('ä')}" in e.value.what and "0xe4" in e.value.what
    assert "UTF-8" in e.value.fix


def test_unknown_extension(tmp_path):
    path = tmp_path / "qa.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(DataError, match="'.xlsx'") as e:
        load_file(path)
    assert "data.sources.0.format" in e.value.fix


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file") as e:
        load_file(path)
    assert e.value.where == str(path)


# --- documents source ---------------------------------------------------------------------------------------


def load_docs(path: Path, tokenizer, **kw):
    return load_documents_source(DocumentsSource(path=str(path), **kw), WHERE, tokenizer)


def test_documents_folder_txt_md_html_pdf(tmp_path, tiny_tokenizer):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("Anemia means a low count .\n\n\n\n\nleukemia", encoding="utf-8")
    (tmp_path / "sub" / "a.md").write_text("# Hello\n\nThrombocytopenia is a low count .", encoding="utf-8")
    (tmp_path / "c.html").write_text(
        "<html><head><style>p {color: red}</style><script>var leukemia = 1;</script></head>"
        "<body><p>Hello <b>leukemia</b>\n   is a cancer</p><p>of the blood</p><!-- a comment -->"
        "</body></html>",
        encoding="utf-8",
    )
    (tmp_path / "d.pdf").write_bytes(pdf_with_text("Hello leukemia"))
    (tmp_path / "notes.docx").write_bytes(b"ignored")
    (tmp_path / ".hidden.txt").write_text("never read", encoding="utf-8")
    res = load_docs(tmp_path, tiny_tokenizer)
    # sorted by relative path
    assert [r.group for r in res.records] == ["b.txt", "c.html", "d.pdf", "sub/a.md"]
    assert [r.id for r in res.records] == ["b.txt#0", "c.html#0", "d.pdf#0", "sub/a.md#0"]
    assert all(r.task == "text" and r.source == tmp_path.name for r in res.records)
    assert res.notes["ignored_files"] == 1 and res.notes["documents"] == 4 and res.notes["chunks"] == 4
    assert len(res.inputs) == 4 and all(len(i["sha256"]) == 64 for i in res.inputs)


def test_html_is_rendered_as_text(tmp_path):
    from domain_expert.data.documents import extract_text

    path = tmp_path / "p.html"
    path.write_text(
        "<html><head><title>T</title><script>alert(1)</script><style>p{}</style></head><body>"
        "<h1>Leukemia</h1><p>A <b>cancer</b>\n   of the\nblood.</p><ul><li>one</li><li>two</li></ul>"
        "x<br>y<!-- hidden --></body></html>",
        encoding="utf-8",
    )
    assert extract_text(path) == "T\nLeukemia\nA cancer of the blood.\none\ntwo\nx\ny"


def test_text_whitespace_is_normalised_lightly(tmp_path):
    from domain_expert.data.documents import extract_text

    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffa  b   \r\n\r\n\r\n\r\nc\n".encode())
    assert extract_text(path) == "a  b\n\nc"


def test_pdf_text_is_extracted(tmp_path, tiny_tokenizer):
    (tmp_path / "doc.pdf").write_bytes(pdf_with_text("Hello leukemia"))
    res = load_docs(tmp_path / "doc.pdf", tiny_tokenizer)  # a single file works too
    assert res.records[0].text == "Hello leukemia" and res.records[0].group == "doc.pdf"


def test_chunks_overlap_by_overlap_tokens(tmp_path, tiny_tokenizer):
    words = [f"w{i}" for i in range(100)]
    (tmp_path / "long.txt").write_text(" ".join(words), encoding="utf-8")
    res = load_docs(tmp_path, tiny_tokenizer, chunk_tokens=20, overlap_tokens=5)
    chunks = [r.text.split() for r in res.records]
    assert chunks[0] == words[:20] and chunks[1] == words[15:35]
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert prev[-5:] == nxt[:5]
    assert chunks[-1][-1] == "w99" and [r.meta["tokens"] for r in res.records][-1] == [90, 100]
    assert {r.group for r in res.records} == {"long.txt"}
    assert [r.id for r in res.records] == [f"long.txt#{i}" for i in range(len(chunks))]
    assert res.notes["tokens"] == 100


def test_windows_cover_every_token_once_plus_overlap():
    assert windows(10, 20, 5) == [(0, 10)]
    assert windows(20, 20, 5) == [(0, 20)]
    assert windows(21, 20, 5) == [(0, 20), (15, 21)]
    assert windows(50, 20, 0) == [(0, 20), (20, 40), (40, 50)]


def test_documents_missing_path(tmp_path, tiny_tokenizer):
    with pytest.raises(DataError, match="not found") as e:
        load_docs(tmp_path / "nope", tiny_tokenizer)
    assert e.value.where == str(tmp_path / "nope") and "data.sources.0.path" in e.value.fix


def test_documents_folder_without_supported_files(tmp_path, tiny_tokenizer):
    (tmp_path / "a.docx").write_bytes(b"x")
    with pytest.raises(DataError, match="no supported documents") as e:
        load_docs(tmp_path, tiny_tokenizer)
    assert all(ext in e.value.fix for ext in (".txt", ".md", ".html", ".pdf"))


def test_documents_single_unsupported_file(tmp_path, tiny_tokenizer):
    (tmp_path / "a.docx").write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported document type '.docx'"):
        load_docs(tmp_path / "a.docx", tiny_tokenizer)


def test_documents_non_utf8_text(tmp_path, tiny_tokenizer):
    path = tmp_path / "a.txt"
    path.write_bytes(b"line one\nAn\xe4mie\n")
    with pytest.raises(DataError, match="byte offset 11") as e:
        load_docs(tmp_path, tiny_tokenizer)
    assert e.value.where == f"{path}:2" and "UTF-8" in e.value.fix


def test_scanned_pdf_without_text(tmp_path, tiny_tokenizer):
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    with open(tmp_path / "scan.pdf", "wb") as f:
        writer.write(f)
    with pytest.raises(DataError, match="no extractable text.*scanned") as e:
        load_docs(tmp_path, tiny_tokenizer)
    assert e.value.where == str(tmp_path / "scan.pdf") and "OCR" in e.value.fix


@pytest.mark.parametrize("content", [b"not a pdf at all", b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog"])
def test_corrupt_pdf(tmp_path, tiny_tokenizer, content):
    (tmp_path / "bad.pdf").write_bytes(content)
    with pytest.raises(DataError, match="cannot read PDF") as e:
        load_docs(tmp_path, tiny_tokenizer)
    assert e.value.where == str(tmp_path / "bad.pdf")


def test_empty_documents_are_skipped_and_counted(tmp_path, tiny_tokenizer):
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "full.txt").write_text("leukemia", encoding="utf-8")
    res = load_docs(tmp_path, tiny_tokenizer)
    assert [r.group for r in res.records] == ["full.txt"]
    assert res.notes["empty_documents"] == 1 and res.notes["documents"] == 1


def test_only_empty_documents_is_an_empty_dataset(tmp_path, tiny_tokenizer):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "empty.md").write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty dataset"):
        load_docs(tmp_path, tiny_tokenizer)


# --- hub source ---------------------------------------------------------------------------------------------


@pytest.fixture
def hf_sandbox(tmp_path, monkeypatch):
    """Keep `datasets` caches under tmp_path (never ~/.cache) and make any hub access fail at once."""
    import datasets
    import huggingface_hub.constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Both libraries read these at import time, so the environment alone is too late.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(datasets.config, "HF_MODULES_CACHE", home / "modules")
    downloads = home / "datasets" / "downloads"
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", downloads)
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", downloads / "extracted")
    return home


def load_hub(name, columns=None, **kw):
    return load_hub_source(HubSource(name=str(name), columns=columns or QA, **kw), WHERE)


def test_hub_unreachable_fails_fast_with_a_way_out(hf_sandbox):
    t0 = time.time()
    with pytest.raises(DataError, match="unreachable") as e:
        load_hub("nobody-here/no-such-dataset")
    assert time.time() - t0 < 10
    assert e.value.where == "data.sources.0.name"
    assert "`file` source" in e.value.fix and "local folder" in e.value.fix
    assert "HF_HUB_OFFLINE" in e.value.what


def test_hub_local_data_folder(tmp_path, hf_sandbox):
    folder = tmp_path / "mydata"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"q": "a?", "a": "1", "t": "x"}, {"q": "", "a": "2", "t": "y"}])
    res = load_hub(folder, {**QA, "group": "t"})
    assert [(r.id, r.group, r.prompt, r.completion) for r in res.records] == [("mydata:1", "x", "a?", "1")]
    assert res.notes == {"rows": 2, "skipped_empty": 1}
    assert res.kind == "hub" and res.inputs[0]["path"] == str(folder.resolve())
    assert not (Path.home() / ".cache" / "huggingface" / "datasets" / "mydata").exists()


def test_hub_local_folder_wrong_split(tmp_path, hf_sandbox):
    folder = tmp_path / "mydata"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"q": "a?", "a": "1"}])
    with pytest.raises(DataError, match="validation") as e:
        load_hub(folder, split="validation")
    assert e.value.where == "data.sources.0.split"


def test_hub_saved_dataset_and_dataset_dict(tmp_path, hf_sandbox):
    import datasets

    ds = datasets.Dataset.from_dict({"q": ["a?", "b?"], "a": ["1", "2"]})
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saveddict"))
    assert [r.prompt for r in load_hub(tmp_path / "saved").records] == ["a?", "b?"]
    assert [r.prompt for r in load_hub(tmp_path / "saveddict", split="test").records] == ["a?"]
    with pytest.raises(DataError, match="split 'dev' not found; the dataset has: train, test") as e:
        load_hub(tmp_path / "saveddict", split="dev")
    assert e.value.where == "data.sources.0.split"


def test_hub_missing_column_lists_the_columns(tmp_path, hf_sandbox):
    import datasets

    datasets.Dataset.from_dict({"question": ["a?"], "answer": ["1"]}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError) as e:
        load_hub(tmp_path / "saved")
    assert "'q', 'a' not found" in e.value.what and "'question', 'answer'" in e.value.what
    assert "data.sources.0.columns" in e.value.fix


def test_hub_local_single_file_points_to_file_source(tmp_path, hf_sandbox):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"q": "a?", "a": "1"}])
    with pytest.raises(DataError, match="not a single file") as e:
        load_hub(path)
    assert "kind: file" in e.value.fix


# --- through prepare ----------------------------------------------------------------------------------------


def file_config(path: Path, out: Path):
    return load_config(
        None,
        [
            f"data.sources=[{{kind: file, path: '{path}', columns: {{prompt: q, completion: a}}}}]",
            f"output_dir={out}",
        ],
    )


def test_prepare_with_a_file_source_writes_splits_and_manifest(tmp_path):
    from domain_expert.data import prepare
    from domain_expert.data.records import read_records

    rows = [{"q": f"What is w{i}?", "a": f"w{i} is a word."} for i in range(40)]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    out = tmp_path / "prepared"
    cfg = file_config(path, out)
    assert prepare.run(cfg, out) == out
    assert {p.name for p in out.iterdir()} == {"manifest.json", "test.jsonl", "train.jsonl", "val.jsonl"}
    splits = {s: read_records(out / f"{s}.jsonl") for s in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == 40 and all(splits.values())
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    src = manifest["sources"][0]
    assert (src["name"], src["kind"], src["records"]) == ("qa.jsonl", "file", 40)
    assert (src["rows"], src["skipped_empty"]) == (40, 0)
    assert src["inputs"][0]["path"] == str(path.resolve())


def test_prepare_with_a_failing_source_leaves_no_output(tmp_path):
    from domain_expert.data import prepare

    out = tmp_path / "prepared"
    cfg = file_config(tmp_path / "missing.jsonl", out)
    with pytest.raises(DataError, match="file not found"):
        prepare.run(cfg, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []

"""The evaluation report: built from a synthetic run folder (tests/fixtures_report.py), checked for content that
really comes from the inputs, self-containment, escaping, atomic failure on bad input, and rendering in a real
headless browser."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import domain_expert
from domain_expert import report
from domain_expert.errors import RunFolderError
from domain_expert.report.build import build
from domain_expert.report.html import render_html
from domain_expert.report.markdown import render_md
from fixtures_report import BIG_GAIN_ID, EVIL_BASE, EVIL_TUNED, build_synthetic_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def template_run(tmp_path_factory) -> Path:
    return build_synthetic_run(tmp_path_factory.mktemp("synthetic") / "run")


@pytest.fixture
def run_dir(template_run, tmp_path) -> Path:
    """A fresh copy of the synthetic run, free to corrupt."""
    return Path(shutil.copytree(template_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def built(template_run, tmp_path_factory) -> Path:
    """The synthetic run with its report built once (read-only use)."""
    run = Path(shutil.copytree(template_run, tmp_path_factory.mktemp("built") / "run"))
    out = report.run(run)
    assert out == run / "report"
    return run


def _eval_metrics(run: Path) -> dict:
    return json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))


def _items(run: Path) -> list[dict]:
    lines = (run / "eval" / "items.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def _f3(v: float, signed: bool = False) -> str:
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _fp(p: float) -> str:
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


class Page(HTMLParser):
    """Tags with their attributes, all text, <style> bodies, and the rows of the metric table."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self.metric_rows: list[list[str]] = []
        self._in_style = False
        self._in_metrics = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(source)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "style":
            self._in_style = True
        elif tag == "table" and "metrics" in (a.get("class") or "").split():
            self._in_metrics = True
        elif self._in_metrics and tag == "tr":
            self._row = []
        elif self._row is not None and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False
        elif tag == "table":
            self._in_metrics = False
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.metric_rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def _expected_row(c: dict) -> list[str]:
    return [
        c["label"],
        _f3(c["base_mean"]),
        _f3(c["tuned_mean"]),
        _f3(c["diff"], signed=True),
        f"[{_f3(c['ci_low'], True)}, {_f3(c['ci_high'], True)}]",
        _fp(c["pvalue"]),
        c["test"],
        str(c["n"]),
        c["verdict"],
    ]


def _no_leftovers(run: Path) -> None:
    assert not (run / "report").exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".report")]


# --- outputs --------------------------------------------------------------------------------------------------


def test_report_writes_all_files(built):
    out = built / "report"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["item_diffs.png", "loss.png", "metrics.json", "report.html", "report.md"]
    for png in ("loss.png", "item_diffs.png"):
        assert (out / png).read_bytes().startswith(PNG_MAGIC)


def test_metrics_json_is_a_copy_plus_report_provenance(built):
    original = _eval_metrics(built)
    copy = json.loads((built / "report" / "metrics.json").read_text(encoding="utf-8"))
    prov = copy.pop("report")
    assert copy == original
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", prov["created"])
    inputs = {x["path"]: x["sha256"] for x in prov["inputs"]}
    for rel in ("eval/metrics.json", "eval/items.jsonl", "data/manifest.json", "finetune/metrics.jsonl", "config.yaml"):
        assert inputs[rel] == hashlib.sha256((built / rel).read_bytes()).hexdigest()


def test_html_is_self_contained(built):
    source = (built / "report" / "report.html").read_text(encoding="utf-8")
    page = Page(source)
    tags = {t for t, _ in page.tags}
    assert not tags & {"script", "link", "iframe", "object", "embed", "base", "form", "audio", "video", "source"}
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            v = (value or "").strip().lower()
            assert "http://" not in v and "https://" not in v and not v.startswith("//"), (tag, name, value)
            if tag == "img" and name == "src":
                assert v.startswith("data:image/png;base64,")
    css = "".join(page.styles).lower()
    assert css and "url(" not in css and "@import" not in css and "http" not in css
    # every URL in the file is inside text (a licence, a model answer), never a reference the browser would load
    text = " ".join(page.text)
    for scheme in ("http://", "https://"):
        assert source.count(scheme) == text.count(scheme)
    assert "https://hpo.jax.org" in text


def test_images_are_embedded_pngs(built):
    source = (built / "report" / "report.html").read_text(encoding="utf-8")
    srcs = [a["src"] for t, a in Page(source).tags if t == "img"]
    assert len(srcs) == 2
    for src in srcs:
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_MAGIC)
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - Pillow comes with matplotlib
            continue
        import io

        with Image.open(io.BytesIO(data)) as im:
            im.verify()
            assert im.size[0] > 400 and im.size[1] > 200


def test_metric_table_shows_the_numbers_from_metrics_json(built):
    page = Page((built / "report" / "report.html").read_text(encoding="utf-8"))
    header, *rows = page.metric_rows
    assert header == ["metric", "base mean", "tuned mean", "diff", "95% CI", "p-value", "test", "n", "verdict"]
    comps = _eval_metrics(built)["comparisons"]
    for c in comps:  # the test's formatting rule holds for these values (no tiny numbers in scientific notation)
        assert all(abs(c[k]) >= 0.001 for k in ("base_mean", "tuned_mean", "diff", "ci_low", "ci_high"))
    assert rows == [_expected_row(c) for c in comps]
    assert {c["verdict"] for c in comps} >= {"better", "worse", "n/a"}  # the fixture exercises every colour


def test_verdict_summary_comes_first_with_each_metric(built):
    source = (built / "report" / "report.html").read_text(encoding="utf-8")
    # title, then the not-a-clinician statement, then the verdict summary, then everything else
    assert source.index("<h1>") < source.index("not a clinician") < source.index('id="verdict"')
    assert source.index('id="verdict"') < min(source.index(f'<section id="{s}"') for s in ("metrics", "manifest"))
    text = Page(source).all_text()
    start = text.index("Is the tuned model better? On what? How sure?")
    summary = text[start : text.index("Metric table", start)]
    for c in _eval_metrics(built)["comparisons"]:
        ci = f"[{_f3(c['ci_low'], True)}, {_f3(c['ci_high'], True)}]"
        assert f"{c['label']} {c['verdict']} {_f3(c['diff'], True)} 95% CI {ci}" in summary
        assert f"p = {_fp(c['pvalue'])}" in summary
    assert re.search(r'class="pill v-worse">worse<', source)
    assert re.search(r'class="pill v-better">better<', source)


def test_most_improved_and_regressed_items_come_from_the_data(built):
    items = _items(built)
    base = {r["id"]: r for r in items if r["model"] == "base" and r["kind"] == "generation"}
    tuned = {r["id"]: r for r in items if r["model"] == "tuned" and r["kind"] == "generation"}
    gain = {i: tuned[i]["rougeL"] - base[i]["rougeL"] for i in base}
    best = max(gain, key=gain.get)
    assert best == BIG_GAIN_ID
    expected_up = sorted((i for i in gain if gain[i] > 0), key=lambda i: -gain[i])[:5]
    expected_down = sorted((i for i in gain if gain[i] < 0), key=lambda i: gain[i])[:5]

    source = (built / "report" / "report.html").read_text(encoding="utf-8")
    section = source.split('id="examples"', 1)[1].split("</section>", 1)[0]
    up, down = section.split("<h3>Most regressed</h3>")
    assert re.findall(r"item (gen-\d+)", up) == expected_up
    assert re.findall(r"item (gen-\d+)", down) == expected_down
    first_question = re.search(r'<div class="q">(.*?) <span', up).group(1)
    assert html.unescape(first_question) == base[best]["prompt"]
    first_item = up.split('<div class="item">')[1]
    assert html.unescape(re.search(r'class="answer">(.*?)</p>', first_item, re.S).group(1)) == EVIL_BASE
    assert f"ROUGE-L {_f3(gain[best], True)}" in first_item


def test_model_text_is_escaped(built):
    source = (built / "report" / "report.html").read_text(encoding="utf-8")
    assert "<script" not in source and "<b>blood" not in source
    assert "&lt;script&gt;" in source and "(&lt;150 x 10^9/L) &amp; |" in source
    md = (built / "report" / "report.md").read_text(encoding="utf-8")
    assert "<script" not in md and "&lt;script&gt;" in md
    # in the side-by-side Markdown table, the answer's pipes are escaped: the row keeps exactly 3 columns
    row = next(line for line in md.splitlines() if "A reduced platelet count" in line)
    assert len(re.findall(r"(?<!\\)\|", row)) == 4
    assert EVIL_TUNED not in md


def test_markdown_has_the_same_content_and_its_plots(built):
    out = built / "report"
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "not a clinician" in md
    for png in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / png).read_bytes().startswith(PNG_MAGIC)
    assert "(loss.png)" in md and "(item_diffs.png)" in md
    for c in _eval_metrics(built)["comparisons"]:
        assert "| " + " | ".join(_expected_row(c)) + " |" in md.replace("\\_", "_")
    for heading in ("## Limitations", "### Skipped metrics", "## Forgetting guard", "## Multiple-choice"):
        assert heading in md
    assert "not a raw-text run" in md and "HP:0001871" in md


def _md_text(s: str) -> str:
    """Escaped Markdown back to the text it shows."""
    return html.unescape(re.sub(r"\\(.)", r"\1", s.strip()).replace("<br>", "\n"))


def _md_cells(line: str) -> list[str]:
    return [_md_text(c) for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _html_verdicts(source: str) -> list[tuple[str, ...]]:
    section = source.split('<section id="verdict">', 1)[1].split("</section>", 1)[0]
    pattern = (
        r'<span class="name">(.*?)</span>.*?class="pill v-\w+">(.*?)</span>.*?<strong>(.*?)</strong>'
        r' <span class="ci">95% CI (.*?)</span>.*?p = (\S+) ·\s+n = (\S+) ·'
    )
    return [tuple(html.unescape(x) for x in m) for m in re.findall(pattern, section, re.S)]


def _md_verdicts(md: str) -> list[tuple[str, ...]]:
    pattern = r"^- \*\*(.*)\*\*: \*\*(.*?)\*\* — (\S+) \(95% CI (.*?)\), p = (\S+), n = (\S+) · "
    return [tuple(_md_text(x) for x in m) for m in re.findall(pattern, md, re.M)]


def test_markdown_and_html_show_the_rows_of_one_view_model(template_run):
    """Both renderers lay out the view model `build` returns: a row changed there shows, the same, in both."""
    r = build(report.load_inputs(template_run))
    r.pop("panels")
    lines = r["pairs"][0]["lines"]
    sentinel = "Sentinel | <b>score</b> *x* _y_ [z]"
    lines[0].update(label=sentinel, verdict="worse", cls="worse", diff="+9.999", p="0.042", n="7")
    images: dict[str, bytes | None] = {"loss": None, "item_diffs": None}
    source, md = render_html(r, images), render_md(r, images)

    keys = ("label", "a_mean", "b_mean", "diff", "ci", "p", "test", "n", "verdict")
    expected_rows = [[x[k] for k in keys] for x in lines]
    md_table = md.split("\n## Metric table\n", 1)[1].split("\n## ", 1)[0]
    md_rows = [_md_cells(x) for x in md_table.splitlines() if x.startswith("| ")][1:]
    assert Page(source).metric_rows[1:] == md_rows == expected_rows
    assert md_rows[0][0] == sentinel and md_rows[0][8] == "worse"

    expected_verdicts = [tuple(x[k] for k in ("label", "verdict", "diff", "ci", "p", "n")) for x in lines]
    assert _html_verdicts(source) == _md_verdicts(md) == expected_verdicts
    assert expected_verdicts[0][:3] == (sentinel, "worse", "+9.999")


def test_report_loads_no_model_code(built, tmp_path):
    """A report builds from files alone: building one imports neither torch, transformers nor the model loaders."""
    code = (
        "import sys\n"
        "from domain_expert import report\n"
        "report.run(sys.argv[1], sys.argv[2])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')"
        " or m == 'domain_expert.models' or m.startswith('domain_expert.models.')))\n"
    )
    src = str(Path(domain_expert.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    res = subprocess.run(
        [sys.executable, "-c", code, str(built), str(tmp_path / "rep")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"
    assert (tmp_path / "rep" / "report.md").is_file()


def test_sections_report_manifest_guard_mc_and_limitations(built):
    text = Page((built / "report" / "report.html").read_text(encoding="utf-8")).all_text()
    m = _eval_metrics(built)
    manifest = json.loads((built / "data" / "manifest.json").read_text(encoding="utf-8"))
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in text and "Apache-2.0" in text
    for name, o in manifest["outputs"].items():
        assert o["sha256"] in text and name in text
    assert f"{m['per_model']['base']['general_ppl']:.3f}" in text
    assert f"{m['per_model']['tuned']['general_ppl']:.3f}" in text
    assert "a sign of forgetting" in text  # the fixture's general-text comparison is "worse"
    mc = next(c for c in m["comparisons"] if c["metric"] == "mc_acc")
    assert f"Discordant pairs: {mc['b01']} items only tuned got right, {mc['b10']} only base got right" in text
    assert f"{100 * m['per_model']['tuned']['stop_rate']:.1f}%" in text
    for phrase in ("one ontology branch", "not clinical correctness", "wide confidence intervals", "greedily"):
        assert phrase in text
    assert "smollm2-135m-instruct, is a small model" in text
    assert "domain_nll" in text and "not a raw-text run" in text


# --- bad and missing input ------------------------------------------------------------------------------------


def test_missing_metrics_says_run_evaluate(run_dir):
    (run_dir / "eval" / "metrics.json").unlink()
    with pytest.raises(RunFolderError) as e:
        report.run(run_dir)
    assert "domain-expert evaluate" in e.value.fix
    _no_leftovers(run_dir)


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ("", "is empty"),
        ("  \n", "is empty"),
        ('{"stage": "evaluate", "models": [', "not valid JSON (line 1"),
        ("[1, 2]", "not an object"),
        (
            '{"stage": "evaluate", "models": [{"label": "base"}], "baseline": "base"}',
            "missing required key(s): comparisons",
        ),
    ],
)
def test_corrupted_metrics_json_names_the_file(run_dir, content, expect):
    path = run_dir / "eval" / "metrics.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(RunFolderError) as e:
        report.run(run_dir)
    assert expect in e.value.what
    assert e.value.where == str(path)
    assert e.value.fix
    _no_leftovers(run_dir)


def test_comparison_missing_a_key_is_named(run_dir):
    path = run_dir / "eval" / "metrics.json"
    m = _eval_metrics(run_dir)
    del m["comparisons"][2]["diff"]
    path.write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(RunFolderError, match=r"comparisons\[2\] is missing key\(s\): diff"):
        report.run(run_dir)
    m["comparisons"][2]["diff"] = "0.1"
    path.write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(RunFolderError, match=r"comparisons\[2\]\.diff must be a number, got '0.1'"):
        report.run(run_dir)
    _no_leftovers(run_dir)


def test_evaluate_metric_names_and_absent_ci_are_accepted(run_dir):
    """evaluate names two metrics after their item fields (stopped, correct) and may omit the CI of a
    descriptive metric: the stop-rate and multiple-choice sections still find them, the table shows '—'."""
    path = run_dir / "eval" / "metrics.json"
    m = _eval_metrics(run_dir)
    renames = {"stop_rate": "stopped", "mc_acc": "correct"}
    for c in m["comparisons"]:
        c["metric"] = renames.get(c["metric"], c["metric"])
        if c["metric"] == "answer_tokens":
            for k in ("ci_low", "ci_high", "pvalue", "test"):
                del c[k]
    path.write_text(json.dumps(m), encoding="utf-8")
    page = Page((report.run(run_dir) / "report.html").read_text(encoding="utf-8"))
    text = page.all_text()
    mc = next(c for c in m["comparisons"] if c["metric"] == "correct")
    assert f"exact McNemar p = {_fp(mc['pvalue'])}" in text
    stop = next(c for c in m["comparisons"] if c["metric"] == "stopped")
    assert f"Stop rate: better diff {_f3(stop['diff'], True)}" in text
    tokens = next(c for c in m["comparisons"] if c["metric"] == "answer_tokens")
    row = next(r for r in page.metric_rows if r[0] == tokens["label"])
    assert row[4:7] == ["—", "—", "—"] and row[8] == "n/a"


def test_metric_names_come_from_metrics_json_labels_else_keys(run_dir):
    """The labels are evaluate's (each comparison's "label"); a comparison without one shows its metric key."""
    path = run_dir / "eval" / "metrics.json"
    m = _eval_metrics(run_dir)
    del m["comparisons"][1]["label"]
    path.write_text(json.dumps(m), encoding="utf-8")
    page = Page((report.run(run_dir) / "report.html").read_text(encoding="utf-8"))
    names = [r[0] for r in page.metric_rows[1:]]
    assert names == [c.get("label", c["metric"]) for c in m["comparisons"]]
    assert names[1] == m["comparisons"][1]["metric"]


@pytest.mark.parametrize(
    ("bad", "expect"),
    [('{"model": "base", "kind": "generation", "id": ', "not valid JSON"), ('{"kind": "mc"}', "missing key(s)")],
)
def test_bad_items_line_is_reported_as_file_and_line(run_dir, bad, expect):
    path = run_dir / "eval" / "items.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[6] = bad
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(RunFolderError) as e:
        report.run(run_dir)
    assert e.value.where == f"{path}:7"
    assert expect in e.value.what
    _no_leftovers(run_dir)


def test_failed_rebuild_keeps_the_previous_report(run_dir):
    report.run(run_dir)
    before = {p.name: p.read_bytes() for p in (run_dir / "report").iterdir()}
    (run_dir / "eval" / "metrics.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RunFolderError):
        report.run(run_dir)
    assert {p.name: p.read_bytes() for p in (run_dir / "report").iterdir()} == before
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".report")]


def test_missing_optional_inputs_say_not_available(run_dir):
    for rel in ("finetune/metrics.jsonl", "data/manifest.json", "finetune/stage.json", "run.json"):
        (run_dir / rel).unlink()
    out = report.run(run_dir)
    assert sorted(p.name for p in out.iterdir()) == ["item_diffs.png", "metrics.json", "report.html", "report.md"]
    text = Page((out / "report.html").read_text(encoding="utf-8")).all_text()
    assert "Loss curves not available (finetune/metrics.jsonl: file not found)" in text
    assert "Data manifest not available (data/manifest.json: file not found)" in text
    assert "Apache-2.0" in text  # the base model still comes from export/stage.json
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "Loss curves not available" in md and "loss.png" not in md


def test_missing_items_still_builds_from_metrics_alone(run_dir):
    (run_dir / "eval" / "items.jsonl").unlink()
    out = report.run(run_dir)
    page = Page((out / "report.html").read_text(encoding="utf-8"))
    assert len(page.metric_rows) == 1 + len(_eval_metrics(run_dir)["comparisons"])
    assert "Per-item scores not available (eval/items.jsonl: file not found)" in page.all_text()
    assert not (out / "item_diffs.png").exists()


def test_rebuild_overwrites_cleanly(run_dir):
    out = report.run(run_dir)
    first = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    (run_dir / "finetune" / "metrics.jsonl").unlink()
    assert report.run(run_dir) == out
    assert sorted(p.name for p in out.iterdir()) == ["item_diffs.png", "metrics.json", "report.html", "report.md"]
    second = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert "finetune/metrics.jsonl" in {x["path"] for x in first["report"]["inputs"]}
    assert "finetune/metrics.jsonl" not in {x["path"] for x in second["report"]["inputs"]}
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".report")]


def test_out_dir_elsewhere_and_refusals(run_dir, tmp_path):
    out = report.run(run_dir, tmp_path / "elsewhere" / "rep")
    assert (out / "report.html").is_file() and not (run_dir / "report").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(RunFolderError, match="not a report"):
        report.run(run_dir, foreign)
    assert (foreign / "notes.txt").read_text(encoding="utf-8") == "keep me"
    with pytest.raises(RunFolderError, match="replace the run folder"):
        report.run(run_dir, run_dir)
    with pytest.raises(RunFolderError, match="run folder not found"):
        report.run(tmp_path / "nope")


# --- a real browser -------------------------------------------------------------------------------------------


def _chromium(user_data: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={user_data}",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=180)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian/Ubuntu: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(built, tmp_path):
    page_file = built / "report" / "report.html"
    uri = page_file.resolve().as_uri()

    dump = _chromium(tmp_path / "profile-dom", "--dump-dom", uri)
    assert dump.returncode == 0, dump.stderr[-2000:]
    dom = Page(dump.stdout)
    comps = _eval_metrics(built)["comparisons"]
    assert dom.metric_rows[1:] == [_expected_row(c) for c in comps]
    source_imgs = [a["src"] for t, a in Page(page_file.read_text(encoding="utf-8")).tags if t == "img"]
    dom_imgs = [a.get("src") for t, a in dom.tags if t == "img"]
    assert dom_imgs == source_imgs and len(dom_imgs) == 2
    assert "not a clinician" in dom.all_text()

    shot = tmp_path / "shot.png"
    res = _chromium(tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000", uri)
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.is_file() and shot.read_bytes().startswith(PNG_MAGIC)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        assert shot.stat().st_size > 50_000
        return
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        rgb = im.convert("RGB")
        colors = rgb.getcolors(maxcolors=1 << 20)
        assert colors is None or len(colors) > 50  # text, pills, plots: far from a blank page
        assert rgb.getextrema() != ((255, 255), (255, 255), (255, 255))
        # the verdict pills are rendered in their colours near the top of the page
        import numpy as np

        top = np.asarray(rgb.crop((0, 0, 1280, 1000))).astype(int)
        r, g, b = top[..., 0], top[..., 1], top[..., 2]
        assert int(((g > 100) & (g > r + 40) & (g > b + 30)).sum()) > 200

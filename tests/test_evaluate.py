"""The evaluate stage on the tiny model: items, resume, model specs, endpoints, tokenizer mismatch, bad input."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from domain_expert import evaluate
from domain_expert.cli import main
from domain_expert.config import EvalConfig
from domain_expert.errors import DomainExpertError
from domain_expert.evaluate.items import build_items
from domain_expert.evaluate.scoring import LocalEngine


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_items_metrics_and_comparisons(tiny_tuned, tmp_path):
    out = evaluate.run(tiny_tuned, out_dir=tmp_path / "e", progress=False)
    m = json.loads((out / "metrics.json").read_text())
    rows = _rows(out / "items.jsonl")
    assert m["baseline"] == "base" and [x["label"] for x in m["models"]] == ["base", "tuned"]
    n_gen = m["n_items"]["generation"]
    defines = [r for r in _rows(tiny_tuned / "data" / "test.jsonl") if r["task"] == "define"]
    assert n_gen == min(6, len(defines)) and sum(r["kind"] == "generation" for r in rows) == 2 * n_gen
    for r in rows:
        if r["kind"] == "generation":
            assert 0 <= r["rougeL"] <= 1 and 0 <= r["chrf"] <= 1 and r["ref_nll"] > 0
        if r["kind"] == "mc":
            assert len(r["options"]) == 4 and r["correct"] == (r["chosen"] == r["answer_index"])
            assert r["chosen"] == max(range(4), key=lambda i: r["logliks"][i])
    # aggregates are the means of the rows, not typed in
    tuned_gen = [r for r in rows if r["kind"] == "generation" and r["model"] == "tuned"]
    assert m["per_model"]["tuned"]["rougeL"] == pytest.approx(sum(r["rougeL"] for r in tuned_gen) / n_gen)
    by_metric = {c["metric"]: c for c in m["comparisons"]}
    assert {"rougeL", "embed_sim", "ref_nll", "correct", "general_nll"} <= set(by_metric)
    assert by_metric["correct"]["test"] == "mcnemar" and by_metric["rougeL"]["test"] == "wilcoxon"
    assert by_metric["answer_tokens"]["verdict"] == "n/a"
    assert all(c["verdict"] in ("better", "worse", "no detectable difference", "n/a") for c in m["comparisons"])


def test_interrupted_evaluation_resumes_without_duplicates(tiny_tuned, tmp_path):
    out = evaluate.run(tiny_tuned, out_dir=tmp_path / "e", progress=False)
    full = _rows(out / "items.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())
    # simulate a kill: metrics.json never written, half the rows, and a torn last line
    lines = (out / "items.jsonl").read_text().splitlines()
    (out / "items.jsonl").write_text("\n".join(lines[: len(lines) // 2]) + "\n" + lines[len(lines) // 2][:20])
    (out / "metrics.json").unlink()
    evaluate.run(tiny_tuned, out_dir=tmp_path / "e", progress=False)
    again = _rows(out / "items.jsonl")
    keys = [(r["model"], r["kind"], r["id"]) for r in again]
    assert len(keys) == len(set(keys)) == len(full)
    assert json.loads((out / "metrics.json").read_text())["per_model"] == metrics["per_model"]


def test_changed_settings_refuse_to_mix_results(tiny_tuned, tmp_path):
    evaluate.run(tiny_tuned, out_dir=tmp_path / "e", progress=False)
    with pytest.raises(DomainExpertError, match="--overwrite"):
        evaluate.run(tiny_tuned, overrides=["max_items=2"], out_dir=tmp_path / "e", progress=False)
    out = evaluate.run(tiny_tuned, overrides=["max_items=2"], out_dir=tmp_path / "e", overwrite=True, progress=False)
    assert json.loads((out / "metrics.json").read_text())["n_items"]["generation"] == 2


def test_mc_distractors_are_ontology_neighbours(tiny_tuned):
    from domain_expert.data.hpo import hpo_obo_path, parse_obo

    items = build_items(tiny_tuned, EvalConfig(max_items=None))
    terms = parse_obo(hpo_obo_path())
    by_name = {t.name: t for t in terms.values()}
    assert items["mc"]
    for it in items["mc"]:
        target = by_name[it["options"][it["answer_index"]]]
        assert target.definition in it["question"]
        grand = {g for p in target.parents for g in terms[p].parents} | set(target.parents)
        for i, o in enumerate(it["options"]):
            if i != it["answer_index"]:
                assert set(by_name[o].parents) & grand, (o, target.name)
    assert items == build_items(tiny_tuned, EvalConfig(max_items=None))  # deterministic


def test_plain_folder_with_other_tokenizer_skips_nll(tiny_tuned, tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    import shutil

    shutil.copytree(tiny_model_dir, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<extra_token>"])
    tok.save_pretrained(other)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(other)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(other)
    out = evaluate.run(tiny_tuned, [f"{tiny_tuned}:base", f"other={other}"], out_dir=tmp_path / "e", progress=False)
    m = json.loads((out / "metrics.json").read_text())
    skipped = {s["metric"] for s in m["skipped"] if s["model"] == "other"}
    assert {"ref_nll", "general_nll"} <= skipped
    assert "correct" in {c["metric"] for c in m["comparisons"]}  # accuracy stays comparable
    assert "ref_nll" not in {c["metric"] for c in m["comparisons"]}


class _FakeOpenAI(BaseHTTPRequestHandler):
    answer = "A reduction in the number of cells."
    status = 200
    calls = 0

    def do_POST(self):  # noqa: N802 - http.server API
        type(self).calls += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["temperature"] == 0 and body["messages"][-1]["role"] == "user"
        if self.status != 200:
            self.send_response(self.status)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "boom"}}')
            return
        payload = {
            "choices": [{"message": {"role": "assistant", "content": self.answer}, "finish_reason": "stop"}],
            "usage": {"completion_tokens": 7},
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_endpoint():
    handler = type("H", (_FakeOpenAI,), {})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_endpoint_is_compared_on_generation_metrics(tiny_tuned, tmp_path, fake_endpoint):
    handler, url = fake_endpoint
    handler.answer = ""  # empty answers are counted, not crashed on
    out = evaluate.run(tiny_tuned, [f"{tiny_tuned}:base", f"{url}#tiny"], out_dir=tmp_path / "e", progress=False)
    m = json.loads((out / "metrics.json").read_text())
    assert m["per_model"]["endpoint"]["empty_answers"] == m["n_items"]["generation"]
    assert m["per_model"]["endpoint"]["rougeL"] == 0.0
    assert {"rougeL", "stopped"} <= {c["metric"] for c in m["comparisons"]}
    assert any(s["model"] == "endpoint" and "log-likelihoods" in s["reason"] for s in m["skipped"])


def test_failing_endpoint_gives_up_after_bounded_retries(tiny_tuned, tmp_path, fake_endpoint, capsys):
    handler, url = fake_endpoint
    handler.status = 503
    code = main(
        ["evaluate", str(tiny_tuned), "endpoint_retries=1", "--model", f"{url}#x", "--out", str(tmp_path / "e")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "after 2 attempt(s)" in err and "HTTP 503" in err
    assert handler.calls == 2


def test_unreachable_endpoint(tiny_tuned, tmp_path, capsys):
    code = main(["evaluate", str(tiny_tuned), "endpoint_retries=0", "--model", "http://127.0.0.1:9/v1#x",
                 "--out", str(tmp_path / "e")])  # fmt: skip
    assert code == 2 and "endpoint failed" in capsys.readouterr().err


def test_run_without_test_split(tiny_model_dir, tmp_path, capsys):
    from conftest import tiny_overrides

    ov = tiny_overrides(tiny_model_dir, tmp_path / "r", **{"train.max_steps": "1", "data.test_fraction": "0"})
    assert main(["prepare", *ov]) == 0 and main(["finetune", *ov]) == 0
    code = main(["evaluate", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "test" in err and "data.test_fraction" in err
    assert not (tmp_path / "r" / "eval" / "metrics.json").exists()


def test_model_specs():
    assert evaluate.parse_model("http://h:1/v1#m").kind == "endpoint"
    assert evaluate.parse_model("http://h:1/v1#m").endpoint_model == "m"
    spec = evaluate.parse_model("runs/x:base")
    assert (spec.kind, spec.label, spec.path) == ("run-base", "base", "runs/x")
    with pytest.raises(DomainExpertError, match="not found"):
        evaluate.parse_model("no/such/folder")


class _FakeJudge(_FakeOpenAI):
    """Grades by whether the answer mentions 'cells': a judge whose verdicts the test can predict."""

    def do_POST(self):  # noqa: N802 - http.server API
        type(self).calls += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        answer = prompt.rsplit("ANSWER:", 1)[1]
        score = 5 if "cells" in answer else 1
        content = f'Sure. {{"correct": {score}, "complete": {score}, "safe": 5}}'
        if "unparseable" in answer:
            content = "I cannot grade this."
        payload = {"choices": [{"message": {"content": content}, "finish_reason": "stop"}]}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_llm_judge_grades_are_kept_raw_and_compared(tiny_tuned, tmp_path):
    judge = type("J", (_FakeJudge,), {})
    server = HTTPServer(("127.0.0.1", 0), judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        out = evaluate.run(tiny_tuned, overrides=[f"judge.url={url}", "judge.max_items=3"], out_dir=tmp_path / "e",
                           progress=False)  # fmt: skip
    finally:
        server.shutdown()
    rows = _rows(out / "items.jsonl")
    judged = [r for r in rows if r["kind"] == "judge"]
    assert len(judged) == 6 and judge.calls == 6  # 3 items x 2 models, one call each
    gen = {(r["model"], r["id"]): r for r in rows if r["kind"] == "generation"}
    for j in judged:
        expected = 5 if "cells" in gen[(j["model"], j["id"])]["answer"] else 1
        assert j["judge_correct"] == expected and "correct" in j["judge_raw"]
    m = json.loads((out / "metrics.json").read_text())
    assert {"judge_correct", "judge_complete", "judge_safe"} <= {c["metric"] for c in m["comparisons"]}


def test_judge_reply_parsing():
    from domain_expert.evaluate.judge import parse_grades

    assert parse_grades('ok {"correct": 4, "complete": 2, "safe": 5} done') == {"correct": 4, "complete": 2, "safe": 5}
    assert parse_grades('{"correct": 9, "complete": 2, "safe": 5}') is None  # out of range
    assert parse_grades("no json here") is None


def test_lm_eval_without_the_harness_says_how_to_get_it(tiny_tuned, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name == "lm_eval":
            raise ImportError("no lm_eval")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    out = evaluate.run(tiny_tuned, overrides=["lm_eval_tasks=[medqa_4options]"], out_dir=tmp_path / "e", progress=False)
    m = json.loads((out / "metrics.json").read_text())
    reasons = [s["reason"] for s in m["skipped"] if s["metric"].startswith("lm_eval")]
    assert reasons and "pip install lm-eval" in reasons[0]
    assert m["lm_eval"] == {}


def test_out_of_memory_halves_the_batch_and_retries():
    seen = []

    def fn(items, bs):
        seen.append(bs)
        if bs > 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [x * 2 for x in items]

    engine = LocalEngine.__new__(LocalEngine)
    engine.batch_size = 16
    assert engine._backoff(fn, [1, 2, 3]) == [2, 4, 6]
    assert seen == [16, 8, 4] and engine.batch_size == 4

    def other_error(items, bs):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        engine._backoff(other_error, [1])


def _ontology_mc_items(defines, cfg):
    """The reference: multiple-choice items as evaluation built them before `prepare` recorded the neighbours,
    reading the ontology at evaluation time."""
    import random

    from domain_expert.data.hpo import hpo_obo_path, parse_obo
    from domain_expert.evaluate.items import subsample

    terms = parse_obo(hpo_obo_path())
    children = {}
    for t in terms.values():
        if t.obsolete or not t.definition:
            continue
        for p in t.parents:
            children.setdefault(p, []).append(t.id)
    out = []
    for r in subsample(defines, cfg.max_items, cfg.seed):
        tid = r.meta["term_id"]
        term = terms[tid]
        own = {s.lower() for s in r.meta.get("surfaces", [])} | {term.name.lower()}
        rng = random.Random(f"{cfg.seed}:{tid}")
        pool = []
        for level in (term.parents, [g for p in term.parents for g in terms[p].parents if p in terms]):
            cands = sorted({c for p in level for c in children.get(p, [])} - {tid} - set(pool))
            rng.shuffle(cands)
            pool += cands
        names = []
        for c in pool:
            name = terms[c].name
            if name.lower() not in own and name not in names:
                names.append(name)
            if len(names) == cfg.mc_choices - 1:
                break
        if len(names) < cfg.mc_choices - 1:
            continue
        options = [term.name, *names]
        rng.shuffle(options)
        question = f"Which medical term is defined as: {r.meta['definition']}"
        out.append({"id": r.id, "question": question, "options": options, "answer_index": options.index(term.name)})
    return out


def test_mc_items_from_prepared_neighbours_match_the_ontology(tmp_path):
    """Same options, same order, same answer for the same seed as when evaluation parsed the ontology itself."""
    from domain_expert.config import load_config
    from domain_expert.data import prepare
    from domain_expert.data.records import read_records
    from domain_expert.evaluate.items import mc_items

    # the whole blood branch (~900 terms), every split: terms at the branch's edge have neighbours outside it
    data = prepare.run(load_config(None, ["data.sources.0.max_terms=null"]), tmp_path / "data")
    defines = [r for s in ("train", "val", "test") for r in read_records(data / f"{s}.jsonl") if r.task == "define"]
    assert len(defines) > 800
    for seed, choices, max_items in ((0, 4, None), (1, 4, None), (0, 6, None), (3, 4, 50)):
        cfg = EvalConfig(seed=seed, mc_choices=choices, max_items=max_items)
        items, reason = mc_items(defines, cfg)
        assert reason is None and items
        assert items == _ontology_mc_items(defines, cfg), (seed, choices, max_items)
    assert len(mc_items(defines, EvalConfig(max_items=None, mc_choices=6))[0]) < len(defines)  # few-neighbour terms


def test_data_prepared_without_neighbours_skips_mc_with_a_reason(tiny_tuned, tmp_path):
    import shutil

    run = tmp_path / "old"
    shutil.copytree(tiny_tuned, run)
    test = run / "data" / "test.jsonl"
    rows = _rows(test)
    for r in rows:
        r["meta"].pop("neighbours", None)
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = evaluate.run(run, overrides=["max_items=2", "general_chunks=0"], out_dir=tmp_path / "e", progress=False)
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_items"]["mc"] == 0 and not any(r["kind"] == "mc" for r in _rows(out / "items.jsonl"))
    reasons = [s["reason"] for s in m["skipped"] if s["metric"] == "correct" and s["model"] == "*"]
    assert reasons and "prepare the data again" in reasons[0]
    assert "correct" not in {c["metric"] for c in m["comparisons"]}
    assert m["n_items"]["generation"] == 2  # everything else is still evaluated

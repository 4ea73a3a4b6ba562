"""One model's pass over the items, one function per item kind; every row is appended as soon as it is scored."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from domain_expert.config import EvalConfig
from domain_expert.evaluate.rows import ModelRows
from domain_expert.evaluate.scoring import LocalEngine

if TYPE_CHECKING:
    from domain_expert.evaluate.endpoints import EndpointEngine
    from domain_expert.evaluate.metrics import Embedder


def score_model(out: ModelRows, engine: LocalEngine | EndpointEngine, items: dict[str, list[dict]], cfg: EvalConfig,
                embedder: Embedder | None, progress: bool) -> None:  # fmt: skip
    """Append the model's missing rows; `embedder` is the shared sentence encoder (None: no questions to answer)."""
    generation_rows(out, engine, items, cfg, embedder, progress)
    probe_short_rows(out, engine, items, cfg, progress)
    if cfg.judge.url:
        judge_rows(out, items, cfg, progress)
    if not isinstance(engine, LocalEngine):
        return  # likelihood-based items need token scores, which chat endpoints do not give
    mc_rows(out, engine, items, cfg, progress)
    probe_choice_rows(out, engine, items, cfg, progress)
    for kind in ("general", "domain_text"):
        text_rows(out, engine, items, kind, cfg, progress)


def _batches(rest: list[dict], size: int, desc: str, progress: bool) -> Iterator[list[dict]]:
    from tqdm.auto import tqdm

    for i in tqdm(range(0, len(rest), size), desc=desc, disable=not progress or not rest):
        yield rest[i : i + size]


def generation_rows(out: ModelRows, engine: LocalEngine | EndpointEngine, items: dict[str, list[dict]],
                    cfg: EvalConfig, embedder: Embedder | None, progress: bool) -> None:  # fmt: skip
    """Greedy answers scored against the reference, plus the reference's NLL where the model gives token scores."""
    from domain_expert.evaluate.metrics import chrf, rouge_l

    rest = out.todo(items, "generation")
    for chunk in _batches(rest, cfg.batch_size, f"answer   [{out.label}]", progress):
        answers = engine.generate([it["prompt"] for it in chunk], cfg.max_new_tokens)
        sims = embedder.similarity([it["reference"] for it in chunk], [a["text"] for a in answers])
        nlls = [None] * len(chunk)
        if isinstance(engine, LocalEngine):
            pairs = [(engine.prompt_ids(it["prompt"]), engine.answer_ids(it["reference"])) for it in chunk]
            nlls = [s / max(1, n) for s, n in engine.nll(pairs)]  # mean per reference token
        for it, a, sim, nll in zip(chunk, answers, sims, nlls, strict=True):
            out.emit({"model": out.label, "kind": "generation", "id": it["id"], "prompt": it["prompt"],
                      "reference": it["reference"], "answer": a["text"], "stopped": a["stopped"],
                      "answer_tokens": a["tokens"], "rougeL": rouge_l(it["reference"], a["text"]),
                      "chrf": chrf(it["reference"], a["text"]), "embed_sim": sim, "ref_nll": nll})  # fmt: skip


def judge_rows(out: ModelRows, items: dict[str, list[dict]], cfg: EvalConfig, progress: bool) -> None:
    """The LLM judge's grades of this model's answers (the first `judge.max_items` questions), raw reply kept."""
    from tqdm.auto import tqdm

    from domain_expert.evaluate.endpoints import Endpoint
    from domain_expert.evaluate.judge import grade

    judge = Endpoint(cfg.judge.url, cfg.judge.model, retries=cfg.endpoint_retries, timeout_s=cfg.endpoint_timeout_s)
    answers = {r["id"]: r for r in out.written("generation")}  # this pass's and an interrupted one's
    ids = [it["id"] for it in items["generation"][: cfg.judge.max_items]]
    todo = [i for i in ids if (out.label, "judge", i) not in out.done and i in answers]
    for i in tqdm(todo, desc=f"judge    [{out.label}]", disable=not progress or not todo):
        r = answers[i]
        grades = grade(judge, r["prompt"], r["reference"], r["answer"])
        out.emit({"model": out.label, "kind": "judge", "id": i, **grades})


def mc_rows(out: ModelRows, engine: LocalEngine, items: dict[str, list[dict]], cfg: EvalConfig,
            progress: bool) -> None:  # fmt: skip
    """Multiple choice by log-likelihood, as lm-evaluation-harness: the option whose tokens the model finds likeliest
    after the question (summed, not per token) is its choice."""
    rest = out.todo(items, "mc")
    for chunk in _batches(rest, cfg.batch_size, f"choose   [{out.label}]", progress):
        contexts = [engine.prompt_ids(it["question"]) for it in chunk]
        scored = engine.choices(contexts, [[engine.answer_ids(o) for o in it["options"]] for it in chunk])
        for it, scores in zip(chunk, scored, strict=True):
            ll = [-s for s, _ in scores]
            chosen = max(range(len(ll)), key=ll.__getitem__)
            out.emit({"model": out.label, "kind": "mc", "id": it["id"], "question": it["question"],
                      "options": it["options"], "answer_index": it["answer_index"], "logliks": ll, "chosen": chosen,
                      "correct": chosen == it["answer_index"]})  # fmt: skip


def text_rows(out: ModelRows, engine: LocalEngine, items: dict[str, list[dict]], kind: str, cfg: EvalConfig,
              progress: bool) -> None:  # fmt: skip
    """Mean token NLL of plain text (`general` English or held-out `domain_text`), the first token as context."""
    rest = out.todo(items, kind)
    for chunk in _batches(rest, cfg.batch_size, f"{kind:8} [{out.label}]", progress):
        pairs = []
        for it in chunk:
            ids = engine.text_ids(it["text"], cfg.general_tokens)
            pairs.append((ids[:1], ids[1:]))
        for it, (s, n) in zip(chunk, engine.nll(pairs), strict=True):
            out.emit({"model": out.label, "kind": kind, "id": it["id"], "nll": s / max(1, n), "tokens": n})


def _probe_row(out: ModelRows, it: dict, **fields) -> None:
    out.emit({"model": out.label, "kind": "probe", "id": it["id"], "fact": it["fact"], "split": it["split"],
              "format": it["format"], "fact_kind": it["kind"], **fields})  # fmt: skip


def probe_short_rows(out: ModelRows, engine: LocalEngine | EndpointEngine, items: dict[str, list[dict]],
                     cfg: EvalConfig, progress: bool) -> None:  # fmt: skip
    """Uptake probes asked as a free question (data/probes.py): right when the greedy answer names the fact."""
    from domain_expert.data.probes import short_answer_correct

    rest = [it for it in out.todo(items, "probe") if it["format"] == "short"]
    for chunk in _batches(rest, cfg.batch_size, f"probe-q  [{out.label}]", progress):
        answers = engine.generate([it["question"] for it in chunk], cfg.probe_new_tokens)
        for it, a in zip(chunk, answers, strict=True):
            _probe_row(out, it, question=it["question"], answer=a["text"], accept=it["accept"],
                       correct=short_answer_correct(a["text"], it["accept"]))  # fmt: skip


def probe_choice_rows(out: ModelRows, engine: LocalEngine, items: dict[str, list[dict]], cfg: EvalConfig,
                      progress: bool) -> None:  # fmt: skip
    """Uptake probes with options (cloze completions and unseen-wording multiple choice): the option with the highest
    log-likelihood per character is the model's choice (lm-evaluation-harness's acc_norm: options such as whole
    definitions differ in length, and a summed log-likelihood would favour the shortest)."""
    rest = [it for it in out.todo(items, "probe") if it["format"] != "short"]
    for chunk in _batches(rest, cfg.batch_size, f"probe-mc [{out.label}]", progress):
        contexts, options = [], []
        for it in chunk:
            if it["format"] == "cloze":
                pairs = [engine.cloze_ids(it["context"], o) for o in it["options"]]
                contexts.append(pairs[0][0])
                options.append([x for _, x in pairs])
            else:
                contexts.append(engine.prompt_ids(it["question"]))
                options.append([engine.answer_ids(o) for o in it["options"]])
        for it, scores in zip(chunk, engine.choices(contexts, options), strict=True):
            n = len(it["options"])
            ll = [-s for s, _ in scores]
            norm = [v / max(1, len(o)) for v, o in zip(ll, it["options"], strict=True)]
            chosen = max(range(n), key=norm.__getitem__)
            _probe_row(out, it, options=it["options"], answer_index=it["answer_index"], logliks=ll, chosen=chosen,
                       correct=chosen == it["answer_index"])  # fmt: skip

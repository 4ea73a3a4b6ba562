"""`domain-expert evaluate`: compare two or more models on the same held-out items, same prompts, greedy decoding.

Per item and model: reference-answer NLL, a greedy answer scored against the reference (ROUGE-L, chrF, embedding
similarity, length, stop), term recognition by multiple choice (log-likelihood, as lm-evaluation-harness), and a
forgetting guard (perplexity on general English). Paired statistics per metric (bootstrap CI, Wilcoxon/McNemar,
verdict). Rows are appended to eval/items.jsonl as they come, so an interrupted evaluation resumes; metrics.json is
written last and marks the evaluation complete. See docs/evaluation-format.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from domain_expert.config import EvalConfig, RunConfig, load_config
from domain_expert.errors import DataError, RunFolderError
from domain_expert.fsutil import read_json, sha256_file, write_json_atomic
from domain_expert.provenance import package_versions

# metric -> (label, group, higher_is_better, kind); higher_is_better None = descriptive only, no verdict
METRICS = {
    "rougeL": ("ROUGE-L", "generation", True, "continuous"),
    "chrf": ("chrF", "generation", True, "continuous"),
    "embed_sim": ("Embedding similarity", "generation", True, "continuous"),
    "stopped": ("Stop rate (EOS before limit)", "generation", True, "binary"),
    "answer_tokens": ("Answer length (tokens)", "generation", None, "continuous"),
    "ref_nll": ("Reference answer NLL", "likelihood", False, "continuous"),
    "correct": ("Term recognition accuracy (MC)", "mc", True, "binary"),
    "general_nll": ("General-English NLL (forgetting guard)", "general", False, "continuous"),
    "domain_nll": ("Held-out domain text NLL", "domain_text", False, "continuous"),
    "judge_correct": ("LLM judge: correct (1-5)", "judge", True, "continuous"),
    "judge_complete": ("LLM judge: complete (1-5)", "judge", True, "continuous"),
    "judge_safe": ("LLM judge: safe (1-5)", "judge", True, "continuous"),
}
NLL_METRICS = {"ref_nll", "general_nll", "domain_nll"}
# the item kind a metric's values come from: its group, except reference NLL, which is scored on generation items
KIND_OF = {m: "generation" if group == "likelihood" else group for m, (_, group, _, _) in METRICS.items()}


@dataclass
class ModelSpec:
    label: str
    spec: str
    kind: str  # run | run-base | folder | endpoint
    path: str  # run folder, model folder, or base URL
    endpoint_model: str | None = None


def parse_model(spec: str) -> ModelSpec:
    """`RUN` (tuned), `RUN:base`, a model folder, or `URL#model` (OpenAI-compatible); `label=SPEC` names it."""
    label = None
    if "=" in spec and not spec.startswith(("http://", "https://")):
        label, spec = spec.split("=", 1)
    if spec.startswith(("http://", "https://")):
        url, _, model = spec.partition("#")
        return ModelSpec(label or "endpoint", spec, "endpoint", url, model or "default")
    if spec.endswith(":base"):
        return ModelSpec(label or "base", spec, "run-base", spec[: -len(":base")])
    p = Path(spec)
    if not p.exists():
        raise RunFolderError("model to evaluate not found", where=spec,
                             fix="give a run folder, RUN:base, a model folder, or URL#model")  # fmt: skip
    from domain_expert.models.reference import is_tuned_run

    is_run = is_tuned_run(p)
    return ModelSpec(label or ("tuned" if is_run else p.name), spec, "run" if is_run else "folder", spec)


# --- items ---------------------------------------------------------------------------------------------------------


def _subsample(items: list, n: int | None, seed: int) -> list:
    if n is None or len(items) <= n:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def build_items(run_dir: Path, cfg: EvalConfig) -> dict[str, list[dict]]:
    from domain_expert.data.records import read_records

    test_path = run_dir / "data" / "test.jsonl"
    if not test_path.exists():
        raise DataError("the run has no test split", where=str(test_path),
                        fix="prepare with data.test_fraction > 0 (e.g. 0.1), then fine-tune again")  # fmt: skip
    records = read_records(test_path)
    if not records:
        raise DataError("the test split is empty", where=str(test_path),
                        fix="raise data.test_fraction or add data, then prepare again")  # fmt: skip
    qa = [r for r in records if r.prompt and r.task in ("define", "qa")] or [r for r in records if r.prompt]
    generation = [{"id": r.id, "prompt": r.prompt, "reference": r.completion} for r in qa]
    generation = _subsample(generation, cfg.max_items, cfg.seed)
    items = {
        "generation": generation,
        "mc": _mc_items([r for r in records if r.task == "define"], cfg),
        "general": _general_items(cfg),
        "domain_text": [
            {"id": r.id, "text": r.text} for r in _subsample([r for r in records if r.is_text], cfg.max_items, cfg.seed)
        ],
    }
    return items


def _mc_items(defines: list, cfg: EvalConfig) -> list[dict]:
    """Definition -> term, options = the term and K-1 ontology neighbours (siblings, then cousins): plausible
    distractors that share the term's vocabulary, so the model must know the definition, not the topic."""
    if not defines or "term_id" not in defines[0].meta:
        return []
    from domain_expert.data.hpo import hpo_obo_path, parse_obo

    terms = parse_obo(hpo_obo_path())
    children: dict[str, list[str]] = {}
    for t in terms.values():
        if t.obsolete or not t.definition:
            continue
        for p in t.parents:
            children.setdefault(p, []).append(t.id)
    out = []
    for r in _subsample(defines, cfg.max_items, cfg.seed):
        tid = r.meta["term_id"]
        term = terms.get(tid)
        if term is None:
            continue
        own = {s.lower() for s in r.meta.get("surfaces", [])} | {term.name.lower()}
        rng = random.Random(f"{cfg.seed}:{tid}")
        pool: list[str] = []
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


def _general_items(cfg: EvalConfig) -> list[dict]:
    """General (non-medical) English that ships with every Python: the language reference topics of pydoc_data."""
    if cfg.general_chunks == 0:
        return []
    from pydoc_data.topics import topics

    keys = sorted(k for k, v in topics.items() if len(v) > 800)
    keys = sorted(random.Random(cfg.seed).sample(keys, min(cfg.general_chunks, len(keys))))
    return [{"id": f"pydoc:{k}", "text": topics[k][:2000]} for k in keys]


# --- engines -------------------------------------------------------------------------------------------------------


class LocalEngine:
    """A model in this process; `base=True` disables the adapter (base and tuned share one copy of the weights)."""

    def __init__(self, lm, base: bool, batch_size: int):
        self.lm, self.base, self.batch_size = lm, base, batch_size
        # with the adapter merged (tuned), nothing must be disabled; for the base, it is switched off per call
        tok = lm.tokenizer
        self.vocab = hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest()[:16]

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[dict]:
        from domain_expert.generate import generate_detailed

        return self._backoff(
            lambda ps, bs: generate_detailed(self.lm, ps, base=self.base, max_new_tokens=max_new_tokens, batch_size=bs),
            prompts,
        )

    def nll(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, int]]:
        """(sum NLL, tokens) of each continuation given its context."""
        return self._backoff(self._nll_batch, pairs)

    def _nll_batch(self, pairs, bs):
        import torch

        from domain_expert.likelihood import Example, collate, sequence_nll
        from domain_expert.models.loader import adapter_off

        out = []
        device = next(self.lm.model.parameters()).device
        for i in range(0, len(pairs), bs):
            exs = [Example(c + x, len(c)) for c, x in pairs[i : i + bs]]
            ids, mask, labels = (t.to(device) for t in collate(exs, self.lm.tokenizer.pad_token_id))
            with torch.no_grad(), adapter_off(self.lm, self.base):
                sums, counts = sequence_nll(self.lm.model, ids, mask, labels)
            out += list(zip(sums, counts, strict=True))
        return out

    def _backoff(self, fn, items):
        """Run fn(items, batch_size); on out-of-memory halve the batch size and retry (down to 1)."""
        import torch

        while True:
            try:
                return fn(items, self.batch_size)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if "out of memory" not in str(e).lower() or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                print(f"[domain-expert] out of memory: evaluation batch size -> {self.batch_size}", flush=True)

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.lm.fmt.encode_prompt(self.lm.tokenizer, prompt)

    def answer_ids(self, text: str) -> list[int]:
        tok = self.lm.tokenizer
        return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def text_ids(self, text: str, limit: int) -> list[int]:
        tok = self.lm.tokenizer
        head = [tok.bos_token_id] if tok.bos_token_id is not None and self.lm.fmt.style == "plain" else []
        return (head + tok(text, add_special_tokens=False)["input_ids"])[:limit]


class EndpointEngine:
    """A model behind an OpenAI-compatible URL: generation only (likelihood metrics are skipped, with a reason)."""

    vocab = None

    def __init__(self, spec: ModelSpec, cfg: EvalConfig, system: str | None):
        from domain_expert.endpoint import Endpoint

        self.ep = Endpoint(spec.path, spec.endpoint_model or "default", retries=cfg.endpoint_retries,
                           timeout_s=cfg.endpoint_timeout_s)  # fmt: skip
        self.system = system

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[dict]:
        return [self.ep.chat(p, system=self.system, max_tokens=max_new_tokens) for p in prompts]


# --- the stage -----------------------------------------------------------------------------------------------------


def run(run_path: str | Path, models: list[str] | None = None, *, overrides: list[str] | None = None,
        out_dir: str | Path | None = None, overwrite: bool = False, progress: bool = True) -> Path:  # fmt: skip
    from domain_expert.runs import find_stage

    run_dir = Path(run_path)
    ft_dir = find_stage(run_dir, "finetune")
    run_dir = ft_dir.parent
    run_cfg: RunConfig = load_config(ft_dir / "config.yaml", [o if o.startswith("evaluate.") else f"evaluate.{o}"
                                                              for o in overrides or []])  # fmt: skip
    cfg = run_cfg.evaluate
    specs = [parse_model(m) for m in (models or [f"{run_dir}:base", str(run_dir)])]
    if len({s.label for s in specs}) != len(specs):
        raise RunFolderError("two models share a label", where="--model",
                             fix="name them: --model base=RUN:base --model mine=RUN")  # fmt: skip
    items = build_items(run_dir, cfg)
    out = Path(out_dir) if out_dir else run_dir / "eval"
    state = {"config": cfg.model_dump(), "models": [asdict(s) for s in specs],
             "test_sha256": sha256_file(run_dir / "data" / "test.jsonl")}  # fmt: skip
    _prepare_out(out, state, overwrite)
    _drop_torn_tail(out / "items.jsonl")
    done = _done_keys(out / "items.jsonl")
    t_all = time.time()
    timings: dict[str, float] = {}
    cache: dict[str, object] = {}
    vocab: dict[str, str | None] = {}  # tokenizer fingerprint per model: NLL compares only within one tokenizer
    embedder = None
    with open(out / "items.jsonl", "a", encoding="utf-8") as sink:
        for spec in specs:
            t0 = time.time()
            engine = _engine(spec, cfg, cache)
            vocab[spec.label] = getattr(engine, "vocab", None)
            if embedder is None and items["generation"]:
                from domain_expert.metrics import Embedder

                embedder = Embedder()
            _eval_model(spec.label, engine, items, cfg, done, sink, embedder, progress, out)
            timings[spec.label] = round(time.time() - t0, 1)
    rows = _read_rows(out / "items.jsonl")
    metrics = aggregate(rows, specs, items, cfg, vocab)
    metrics["lm_eval"] = _lm_eval(specs, cfg, metrics["skipped"]) if cfg.lm_eval_tasks else {}
    versions = package_versions("domain-expert", "torch", "transformers", "peft", "rouge-score", "sacrebleu", "scipy")
    metrics.update({"timings": timings, "seconds": round(time.time() - t_all, 1), "versions": versions,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})  # fmt: skip
    write_json_atomic(out / "metrics.json", metrics)
    return out


def _prepare_out(out: Path, state: dict, overwrite: bool) -> None:
    if overwrite and out.exists():
        shutil.rmtree(out)
    state_path = out / "state.json"
    if state_path.exists():
        old = read_json(state_path)
        if old != json.loads(json.dumps(state)):
            raise RunFolderError(
                "an earlier evaluation with other settings or models is here; results cannot be mixed",
                where=str(out),
                fix="pass --overwrite to start again, or --out for a separate evaluation",
            )
        return  # same settings: resume
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    write_json_atomic(state_path, state)


def _done_keys(path: Path) -> set[tuple[str, str, str]]:
    return {(r["model"], r["kind"], r["id"]) for r in _read_rows(path)} if path.exists() else set()


def _read_rows(path: Path) -> list[dict]:
    rows = []
    if not path.exists():
        return rows
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # a kill mid-write leaves at most a torn last line: it is redone on resume
                continue
            raise DataError("corrupted evaluation row", where=f"{path}:{n}",
                            fix="delete the eval folder or pass --overwrite") from None  # fmt: skip
    return rows


def _drop_torn_tail(path: Path) -> None:
    """Before appending on resume, cut a torn last line so new rows start on a line of their own."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        from domain_expert.fsutil import write_text_atomic

        write_text_atomic(path, text[: text.rfind("\n") + 1])


def _engine(spec: ModelSpec, cfg: EvalConfig, cache: dict):
    if spec.kind == "endpoint":
        return EndpointEngine(spec, cfg, system=None)
    from domain_expert.models.loader import adapter_merged, load_for_inference

    key = str(Path(spec.path).resolve())
    if key not in cache:  # RUN and RUN:base share one loaded model: the base is the adapter switched off
        cache[key] = load_for_inference(spec.path)
    lm = cache[key]
    base = spec.kind == "run-base"
    if lm.has_adapter:
        # Unmerged LoRA slows decoding on CPU (merged is 1.6x faster, batch 16, bench/cpu_levers.py): the tuned model is
        # scored with its adapter merged into the weights in the inference dtype, i.e. the model `export` ships.
        # The base must see unmerged weights; the default order (base first) never needs to unmerge.
        merged = adapter_merged(lm.model)
        if base and merged:
            lm.model.unmerge_adapter()
        elif not base and not merged:
            lm.model.merge_adapter()
    return LocalEngine(lm, base=base, batch_size=cfg.batch_size)


def _eval_model(label, engine, items, cfg: EvalConfig, done, sink, embedder, progress: bool, out: Path) -> None:
    from tqdm.auto import tqdm

    from domain_expert.judge import grade
    from domain_expert.metrics import chrf, rouge_l

    judge = None
    if cfg.judge.url:
        from domain_expert.endpoint import Endpoint

        judge = Endpoint(cfg.judge.url, cfg.judge.model, retries=cfg.endpoint_retries, timeout_s=cfg.endpoint_timeout_s)
        judge_ids = [it["id"] for it in items["generation"][: cfg.judge.max_items]]

    def gen_rows(model_label):
        sink.flush()
        return [r for r in _read_rows(out / "items.jsonl") if r["model"] == model_label and r["kind"] == "generation"]

    def todo(kind):
        rest = [it for it in items[kind] if (label, kind, it["id"]) not in done]
        # batches of similar length waste little on padding (definitions range from 5 to 150+ tokens)
        return sorted(rest, key=lambda it: len(it.get("prompt") or it.get("question") or it.get("text") or ""))

    def emit(row):
        sink.write(json.dumps(row, ensure_ascii=False) + "\n")
        sink.flush()

    bs = cfg.batch_size
    gen = todo("generation")
    for i in tqdm(range(0, len(gen), bs), desc=f"answer   [{label}]", disable=not progress or not gen):
        chunk = gen[i : i + bs]
        answers = engine.generate([it["prompt"] for it in chunk], cfg.max_new_tokens)
        sims = embedder.similarity([it["reference"] for it in chunk], [a["text"] for a in answers])
        nlls = [None] * len(chunk)
        if isinstance(engine, LocalEngine):
            pairs = [(engine.prompt_ids(it["prompt"]), engine.answer_ids(it["reference"])) for it in chunk]
            nlls = [s / max(1, n) for s, n in engine.nll(pairs)]
        for it, a, sim, nll in zip(chunk, answers, sims, nlls, strict=True):
            emit({"model": label, "kind": "generation", "id": it["id"], "prompt": it["prompt"],
                  "reference": it["reference"], "answer": a["text"], "stopped": a["stopped"],
                  "answer_tokens": a["tokens"], "rougeL": rouge_l(it["reference"], a["text"]),
                  "chrf": chrf(it["reference"], a["text"]), "embed_sim": sim, "ref_nll": nll})  # fmt: skip
    if judge is not None:
        answers = {(r["id"]): r for r in gen_rows(label)}
        todo_j = [i for i in judge_ids if (label, "judge", i) not in done and i in answers]
        for i in tqdm(todo_j, desc=f"judge    [{label}]", disable=not progress or not todo_j):
            r = answers[i]
            emit({"model": label, "kind": "judge", "id": i, **grade(judge, r["prompt"], r["reference"], r["answer"])})
    if not isinstance(engine, LocalEngine):
        return  # likelihood-based items need token scores, which chat endpoints do not give
    mc = todo("mc")
    for i in tqdm(range(0, len(mc), bs), desc=f"choose   [{label}]", disable=not progress or not mc):
        chunk = mc[i : i + bs]
        pairs = [(engine.prompt_ids(it["question"]), engine.answer_ids(o)) for it in chunk for o in it["options"]]
        scores = engine.nll(pairs)
        k = 0
        for it in chunk:
            ll = [-s for s, _ in scores[k : k + len(it["options"])]]
            k += len(it["options"])
            chosen = max(range(len(ll)), key=ll.__getitem__)
            emit({"model": label, "kind": "mc", "id": it["id"], "question": it["question"], "options": it["options"],
                  "answer_index": it["answer_index"], "logliks": ll, "chosen": chosen,
                  "correct": chosen == it["answer_index"]})  # fmt: skip
    for kind in ("general", "domain_text"):
        rest = todo(kind)
        for i in tqdm(range(0, len(rest), bs), desc=f"{kind:8} [{label}]", disable=not progress or not rest):
            chunk = rest[i : i + bs]
            pairs = []
            for it in chunk:
                ids = engine.text_ids(it["text"], cfg.general_tokens)
                pairs.append((ids[:1], ids[1:]))
            for it, (s, n) in zip(chunk, engine.nll(pairs), strict=True):
                emit({"model": label, "kind": kind, "id": it["id"], "nll": s / max(1, n), "tokens": n})


def aggregate(rows: list[dict], specs: list[ModelSpec], items: dict, cfg: EvalConfig, vocab: dict) -> dict:
    from domain_expert.stats import compare_metric

    by: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        by.setdefault((r["model"], r["kind"]), {})[r["id"]] = r
    skipped: list[dict] = []

    def values(label: str, metric: str) -> dict[str, float]:
        kind = KIND_OF[metric]
        field = {"general_nll": "nll", "domain_nll": "nll"}.get(metric, metric)
        out = {}
        for i, r in by.get((label, kind), {}).items():
            v = r.get(field)
            if v is not None:
                out[i] = float(v)
        return out

    per_model: dict[str, dict] = {}
    for s in specs:
        m: dict[str, float | int | None] = {}
        for metric in METRICS:
            vals = list(values(s.label, metric).values())
            m[metric] = sum(vals) / len(vals) if vals else None
        gens = by.get((s.label, "generation"), {}).values()
        m["stop_rate"] = m.pop("stopped")
        m["mc_acc"] = m.pop("correct")
        m["empty_answers"] = sum(1 for g in gens if not g["answer"])
        judged = list(by.get((s.label, "judge"), {}).values())
        if judged:
            m["judge_unparsed"] = sum(1 for j in judged if j.get("judge_correct") is None)
        for nll_key, ppl_key in (("ref_nll", "ref_ppl"), ("general_nll", "general_ppl"), ("domain_nll", "domain_ppl")):
            m[ppl_key] = math.exp(m[nll_key]) if m.get(nll_key) is not None else None
        per_model[s.label] = m
        if s.kind == "endpoint":
            for metric in ("ref_nll", "correct", "general_nll", "domain_nll"):
                skipped.append({"metric": metric, "model": s.label,
                                "reason": "chat endpoints return no token log-likelihoods"})  # fmt: skip

    base = specs[0].label
    comparisons = []
    for s in specs[1:]:
        for metric, (label, group, hib, kind) in METRICS.items():
            a, b = values(base, metric), values(s.label, metric)
            if metric in NLL_METRICS and vocab.get(base) != vocab.get(s.label):
                if a and b:
                    skipped.append({"metric": metric, "model": s.label,
                                    "reason": f"tokenizers of {base} and {s.label} differ: per-token NLL is not "
                                              "comparable"})  # fmt: skip
                continue
            ids = sorted(set(a) | set(b))
            if not ids or not a or not b:
                continue
            av = [a.get(i, float("nan")) for i in ids]
            bv = [b.get(i, float("nan")) for i in ids]
            res = compare_metric(metric, av, bv, higher_is_better=hib is not False, kind=kind, seed=cfg.seed,
                                 n_resamples=cfg.bootstrap_resamples)  # fmt: skip
            res.update({"metric": metric, "label": label, "group": group, "a": base, "b": s.label})
            if hib is None:  # descriptive (answer length): CI and p-value, but neither direction is "better"
                res.update({"higher_is_better": None, "verdict": "n/a"})
            res["dropped"] = res.get("n_dropped", 0)
            comparisons.append(res)
    return {
        "stage": "evaluate",
        "seed": cfg.seed,
        "config": cfg.model_dump(),
        "models": [asdict(s) for s in specs],
        "baseline": base,
        "n_items": {k: len(v) for k, v in items.items()},
        "per_model": per_model,
        "comparisons": comparisons,
        "skipped": skipped,
    }


def _lm_eval(specs: list[ModelSpec], cfg: EvalConfig, skipped: list[dict]) -> dict:
    """Standard benchmarks through lm-evaluation-harness, on the base and the exported (merged) model. Its task data
    comes from the Hugging Face hub: offline, each model gets a clear skip reason instead of a crash."""
    name = f"lm_eval:{','.join(cfg.lm_eval_tasks)}"
    try:
        import lm_eval
    except ImportError:
        skipped.append(
            {"metric": name, "model": "*", "reason": "lm-evaluation-harness is not installed (pip install lm-eval)"}
        )
        print(f"[domain-expert] skipped {name}: lm-evaluation-harness is not installed (pip install lm-eval)")
        return {}
    results = {}
    for s in specs:
        if s.kind == "endpoint":
            skipped.append({"metric": name, "model": s.label, "reason": "benchmarks run on local models only"})
            continue
        path = _hf_folder(s)
        try:
            out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={path}", tasks=list(cfg.lm_eval_tasks),
                                          batch_size=cfg.batch_size)  # fmt: skip
            results[s.label] = out.get("results", {})
        except Exception as e:  # noqa: BLE001 - any failure there (mostly: no network for its datasets) is reported
            reason = (f"lm-evaluation-harness could not run ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                      "its task data comes from the Hugging Face hub: run where the hub is reachable")  # fmt: skip
            skipped.append({"metric": name, "model": s.label, "reason": reason})
            print(f"[domain-expert] skipped {name} for {s.label}: {reason}")
    return results


def _hf_folder(spec: ModelSpec) -> str:
    """A plain HF folder for the model: the run's export for tuned, the base model's folder for RUN:base."""
    if spec.kind == "folder":
        return spec.path
    from domain_expert.runs import find_stage

    ft_dir = find_stage(spec.path, "finetune")
    if spec.kind == "run-base":
        return read_json(ft_dir / "stage.json")["base_model"]["path"]
    run = ft_dir.parent
    export = run / "export"
    if not (export / "stage.json").exists():
        raise RunFolderError("benchmarks need the exported model", where=str(run), fix="run `domain-expert export`")
    return str(export)

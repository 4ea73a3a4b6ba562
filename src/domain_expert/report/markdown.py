"""report.md: the report's content in Markdown, with the plots as PNG files next to it.

Model and data text is escaped twice over: HTML entities (Markdown viewers render inline HTML) and Markdown syntax,
and kept on one line so that it cannot break a table row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from domain_expert.report.formatting import fmt_ci, fmt_num, fmt_p, fmt_pct
from domain_expert.report.plots import ITEM_DIFFS_PNG, LOSS_PNG


def _md(text: Any) -> str:
    """Escape model/data text for Markdown: HTML entities, Markdown syntax, one line (table-safe)."""
    s = "" if text is None else str(text)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = re.sub(r"([\\`*_\[\]|#~])", r"\\\1", s)
    return s.replace("\r\n", "\n").replace("\n", "<br>")


class _Raw(str):
    """Markdown that is already escaped: _table passes it through."""


def _table(head: list[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    def cell(c: Any) -> str:
        return c if isinstance(c, _Raw) else _md(c)

    out = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def render_md(r: dict, images: dict[str, bytes | None]) -> str:
    a, b = _md(r["a"]), _md(r["b"])
    L: list[str] = [
        f"# {_md(r['run_name'])}: is {b} better than {a}?",
        "",
        f"Evaluation report for run folder `{r['run_dir']}` · evaluated {_md(r['eval_created'])} · "
        f"report built {r['created']}",
        "",
        "> **Not medical advice.** The model is not a clinician: its answers can be fluent and wrong. This report "
        "measures how close its answers are to reference definitions; it does not check clinical correctness. "
        "Do not use these answers for diagnosis or treatment.",
        "",
        "## Is the tuned model better? On what? How sure?",
        "",
    ]
    for k, pair in enumerate(r["pairs"]):
        if len(r["pairs"]) > 1:
            L += [f"### {_md(pair['b'])} vs {_md(pair['a'])}", ""]
        if k == 0 and r["headline"]:
            L += ["; ".join(f"**{w}** on {_md(', '.join(n))}" for w, n in r["headline"]) + ".", ""]
        for ln in pair["lines"]:
            L.append(
                f"- **{_md(ln['label'])}**: **{ln['verdict']}** — {ln['diff']} (95% CI {ln['ci']}), p = {ln['p']}, "
                f"n = {ln['n']} · {_md(pair['a'])} {ln['a_mean']} → {_md(pair['b'])} {ln['b_mean']} "
                f"({ln['direction']})"
            )
        L.append("")
    L += [
        f"Each line is the mean per-item difference ({b} − {a}) over the same held-out items, with a 95% "
        "paired-bootstrap confidence interval. *better*/*worse* needs both the interval to exclude 0 and the paired "
        "test (Wilcoxon signed-rank, or exact McNemar for yes/no outcomes) to give p < 0.05; otherwise it is "
        "*no detectable difference*. For NLL and perplexity, lower is better.",
        "",
        "## Metric table",
        "",
    ]
    for pair in r["pairs"]:
        if len(r["pairs"]) > 1:
            L += [f"### {_md(pair['b'])} vs {_md(pair['a'])}", ""]
        L += _table(
            ["metric", f"{pair['a']} mean", f"{pair['b']} mean", "diff", "95% CI", "p-value", "test", "n", "verdict"],
            [
                [
                    x["label"],
                    x["a_mean"],
                    x["b_mean"],
                    x["diff"],
                    _Raw(x["ci"]),
                    x["p"],
                    x["test"],
                    x["n"],
                    x["verdict"],
                ]
                for x in pair["lines"]
            ],
        )
    if r["n_items"]:
        L += ["Items evaluated: " + ", ".join(f"{_md(k)} {v}" for k, v in r["n_items"]) + ".", ""]

    L += ["## Per-item differences", ""]
    if images.get("item_diffs"):
        L += [
            f"Each bar is one held-out question: its score under {b} minus under {a}, sorted; the line is the mean "
            "difference and the band its 95% confidence interval.",
            "",
            f"![Per-item differences]({ITEM_DIFFS_PNG})",
            "",
        ]
    else:
        L += [f"Per-item scores {_md(r['na']['items'])}.", ""]

    L += ["## Most improved and most regressed answers (by ROUGE-L)", ""]
    if r["n_gen_pairs"]:
        for title, group, empty in (
            ("Most improved", r["improved"], "No item improved."),
            ("Most regressed", r["regressed"], "No item regressed."),
        ):
            L += [f"### {title}", ""]
            if not group:
                L += [empty, ""]
            for it in group:
                L += [
                    f"#### {_md(it['question'])} (ROUGE-L {it['diff']})",
                    "",
                    f"Reference: {_md(it['reference'])}",
                    "",
                ]

                def cell(s: dict) -> _Raw:
                    return _Raw("*(empty answer)*" if s["empty"] else _md(s["answer"]))

                L += _table(
                    ["", r["a"], r["b"]],
                    [
                        ["answer", cell(it["a"]), cell(it["b"])],
                        ["ROUGE-L", it["a"]["rougeL"], it["b"]["rougeL"]],
                        ["embedding similarity", it["a"]["embed_sim"], it["b"]["embed_sim"]],
                        ["chrF", it["a"]["chrf"], it["b"]["chrf"]],
                        ["answer tokens", it["a"]["tokens"], it["b"]["tokens"]],
                        ["stopped", it["a"]["stopped"], it["b"]["stopped"]],
                    ],
                )
    else:
        L += [f"Generation items {_md(r['na']['items'])}.", ""]

    L += ["## Stopping and empty answers", ""]
    L += _table(
        ["model", "stop rate (ended by itself)", "empty answers", "mean answer tokens", "items"],
        [[s["model"], s["stop_rate"], s["empty"], s["tokens"], s["n"]] for s in r["stop_rows"]],
    )
    sc = r["stop_comp"]
    if sc:
        L += [
            f"Stop rate: **{sc.get('verdict')}**, diff {fmt_num(sc.get('diff'), signed=True)}, 95% CI "
            f"{fmt_ci(sc.get('ci_low'), sc.get('ci_high'))}, p = {fmt_p(sc.get('pvalue'))} "
            f"({sc.get('test') or '—'}).",
            "",
        ]

    L += ["## Forgetting guard: general English text", ""]
    f = r["forget"]
    if f:
        L += _table(["model", "general-text perplexity"], [[r["a"], f["a_ppl"]], [r["b"], f["b_ppl"]]])
        line = f"**{f['verdict']}**: {_md(f['meaning'])}"
        if f["comp"]:
            c = f["comp"]
            line += (
                f" Mean token NLL difference {fmt_num(c.get('diff'), signed=True)} (95% CI "
                f"{fmt_ci(c.get('ci_low'), c.get('ci_high'))}, p = {fmt_p(c.get('pvalue'))}, n = {f['n']} chunks; "
                "lower is better)."
            )
        L += [line, ""]
    else:
        L += ["Not available: the evaluation has no general-text comparison.", ""]

    L += ["## Multiple-choice term recognition", ""]
    mc = r["mc"]
    if mc:
        L += [f"Scored by log-likelihood; chance level {mc['chance']}.", ""]
        L += _table(["model", "accuracy"], [[r["a"], mc["a_acc"]], [r["b"], mc["b_acc"]]])
        if mc["counts"]:
            k = mc["counts"]
            L += _table(
                ["McNemar counts", f"{r['b']} right", f"{r['b']} wrong"],
                [[f"{r['a']} right", k["both"], k["a_only"]], [f"{r['a']} wrong", k["b_only"], k["neither"]]],
            )
        c = mc["comp"]
        if c:
            L += [
                f"**{c.get('verdict')}**: diff {fmt_num(c.get('diff'), signed=True)} (95% CI "
                f"{fmt_ci(c.get('ci_low'), c.get('ci_high'))}), exact McNemar p = {fmt_p(c.get('pvalue'))}.",
                "",
            ]
        if mc["b01"] is not None:
            L += [f"Discordant pairs: {mc['b01']} only {b} got right, {mc['b10']} only {a} got right.", ""]
    else:
        L += ["Not available: the evaluation has no multiple-choice items.", ""]

    L += ["## Training", ""]
    if images.get("loss"):
        L += [f"![Training and validation loss]({LOSS_PNG})", ""]
        if r["loss_skipped"]:
            L += [f"{r['loss_skipped']} unreadable line(s) of finetune/metrics.jsonl skipped.", ""]
    else:
        L += [f"Loss curves {_md(r['na']['loss'])}.", ""]
    if r["training"]:
        L += _table(["", ""], r["training"])
    else:
        L += [f"Training summary {_md(r['na']['training'])}.", ""]
    fid = r["fidelity"]
    if fid:
        L += [
            f"Export fidelity: max |logit diff| {fmt_num(fid.get('max_abs_logit_diff'))} (tolerance "
            f"{fmt_num(fid.get('tolerance'))}), argmax agreement {fmt_pct(fid.get('argmax_agreement'))}.",
            "",
        ]

    L += ["## Run manifest", "", "### Base model", ""]
    bm = r["base_model"]
    if bm:
        L += _table(
            ["", ""],
            [
                ["reference", bm.get("reference") or "—"],
                ["origin", bm.get("origin") or "—"],
                ["licence", bm.get("license") or "not stated"],
            ],
        )
    else:
        L += [_md(r["na"]["base_model"]).capitalize() + ".", ""]
    L += ["### Models evaluated", ""] + _table(["label", "spec", "kind"], r["models"])
    L += ["### Data", ""]
    if r["sources"]:
        for s in r["sources"]:
            rows = [["source", s["name"]]]
            if s["scope"]:
                rows.append(["scope", s["scope"]])
            rows += [["licence", s["license"]], ["records", s["records"]]]
            rows += [[f"input {p}", f"sha256 {h}"] for p, h in s["inputs"]]
            L += _table(["", ""], rows)
        if r["outputs"]:
            L += _table(["split file", "records", "groups", "sha256"], r["outputs"])
        if r["manifest_note"]:
            L += [_md(r["manifest_note"]), ""]
    else:
        L += [f"Data manifest {_md(r['na']['manifest'])}.", ""]
    L += ["### Configuration", ""]
    if r["config_text"] is not None:
        fence = "````" if "```" in r["config_text"] else "```"
        L += ["<details><summary>config.yaml</summary>", "", f"{fence}yaml", r["config_text"].rstrip("\n"), fence, ""]
        L += ["</details>", ""]
    else:
        L += [f"Config {_md(r['na']['config'])}.", ""]
    if r["eval_config"]:
        L += _table(["evaluate setting", "value"], r["eval_config"])
    L += ["### Seeds", ""] + (_table(["seed", "value"], r["seeds"]) if r["seeds"] else ["not available", ""])
    L += ["### Timings", ""] + (_table(["", "time"], r["timings"]) if r["timings"] else [r["na"]["timings"], ""])
    L += ["### Package versions", ""]
    L += _table(["package", "prepare", "evaluate"], r["versions"]) if r["versions"] else ["not available", ""]
    L += ["### Input files", ""] + _table(["file", "sha256"], r["inputs"])

    L += ["## Limitations", ""] + [f"- {_md(x)}" for x in r["limitations"]] + ["", "### Skipped metrics", ""]
    if r["skipped"]:
        L += _table(["metric", "model", "reason"], [[s["metric"], s["model"], s["reason"]] for s in r["skipped"]])
    else:
        L += ["None: every metric was computed.", ""]
    L += ["---", "", "Built by `domain-expert report` from the run folder's files alone. Not medical advice.", ""]
    return "\n".join(L)

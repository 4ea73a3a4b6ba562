"""The view model's provenance sections: how the tuned model was trained, and what the run was built from (base
model, data manifest, configuration, seeds, timings, package versions, input files)."""

from __future__ import annotations

import json

from domain_expert.data.hygiene import describe
from domain_expert.report.formatting import bad, fmt_num, fmt_pct, fmt_seconds
from domain_expert.report.inputs import Inputs, dig


def train_summary(inp: Inputs) -> dict | None:
    ts = inp.train_summary or dig(inp.ft_stage, "summary")
    return ts if isinstance(ts, dict) else None


def base_model(inp: Inputs) -> dict | None:
    bm = dig(inp.ft_stage, "base_model") or dig(inp.export_stage, "base_model")
    return bm if isinstance(bm, dict) else None


def training(inp: Inputs) -> dict:
    ts = train_summary(inp)
    rows = None
    if ts is not None:
        rows = [
            ("steps", f"{fmt_num(ts.get('steps'))} of {fmt_num(ts.get('planned_steps'))} planned"),
            ("stopped by", str(ts.get("stopped_by", "—"))),
            ("epochs seen", fmt_num(ts.get("epochs_seen"))),
            ("training examples", fmt_num(ts.get("train_examples"))),
            ("trained tokens", fmt_num(ts.get("trained_tokens"))),
            ("throughput", "—" if bad(ts.get("tokens_per_s")) else f"{ts['tokens_per_s']:,.1f} tokens/s"),
            ("val loss", f"{fmt_num(ts.get('val_loss_start'))} → {fmt_num(ts.get('val_loss_end'))}"),
            (
                "trainable / total parameters",
                f"{fmt_num(ts.get('trainable_params'))} / {fmt_num(ts.get('total_params'))}",
            ),
        ]
    fid = dig(inp.export_stage, "fidelity")
    fidelity = None
    if isinstance(fid, dict):
        fidelity = {
            "max_abs_logit_diff": fmt_num(fid.get("max_abs_logit_diff")),
            "tolerance": fmt_num(fid.get("tolerance")),
            "argmax_agreement": fmt_pct(fid.get("argmax_agreement")),
        }
    return {"training": rows, "fidelity": fidelity, "loss_skipped": inp.loss_skipped_lines}


def sources(manifest: dict | None) -> list[dict]:
    out = []
    for s in dig(manifest, "sources") or []:
        if isinstance(s, dict):
            out.append(
                {
                    "name": str(s.get("name") or s.get("kind") or "?"),
                    "license": str(s.get("license") or "not stated"),
                    "attribution": str(s.get("attribution") or ""),
                    "records": fmt_num(s.get("records")),
                    "scope": str(s.get("scope") or ""),
                    "inputs": [
                        (str(i.get("path", "?")), str(i.get("sha256", "—")))
                        for i in (s.get("inputs") or [])
                        if isinstance(i, dict)
                    ],
                }
            )
    return out


def _data(manifest: dict | None) -> dict:
    outputs = [
        (name, fmt_num(o.get("records")), fmt_num(o.get("groups")), str(o.get("sha256", "—")))
        for name, o in (dig(manifest, "outputs") or {}).items()
        if isinstance(o, dict)
    ]
    split = dig(manifest, "split")
    return {
        "sources": sources(manifest),
        "outputs": outputs,
        "split_unit": str(split.get("unit") or "—") if isinstance(split, dict) and split else None,
        "hygiene": describe(dig(manifest, "hygiene")),
        "manifest_note": str(dig(manifest, "note") or ""),
    }


def _seeds(inp: Inputs) -> list[tuple[str, str]]:
    split_seed = dig(inp.manifest, "split", "seed")
    candidates = (
        ("data split", dig(inp.config, "data", "seed") if split_seed is None else split_seed),
        ("training", dig(inp.config, "train", "seed")),
        ("evaluation", inp.metrics.get("seed")),
    )
    return [(name, str(v)) for name, v in candidates if v is not None]


def _timings(inp: Inputs) -> list[tuple[str, str]]:
    out = []
    if inp.run_json:
        for stage, s in (dig(inp.run_json, "stage_seconds") or {}).items():
            out.append((f"run: {stage}", fmt_seconds(s)))
        if "seconds" in inp.run_json:
            out.append(("run: total", fmt_seconds(inp.run_json["seconds"])))
    for label, s in (inp.metrics.get("timings") or {}).items():
        out.append((f"evaluate: {label}", fmt_seconds(s) if not isinstance(s, dict) else json.dumps(s)))
    return out


def _versions(inp: Inputs) -> list[tuple[str, str, str]]:
    v_prep, v_eval = dig(inp.manifest, "versions") or {}, inp.metrics.get("versions") or {}
    return [(k, str(v_prep.get(k, "—")), str(v_eval.get(k, "—"))) for k in dict.fromkeys([*v_eval, *v_prep])]


def _base_model_rows(bm: dict | None) -> list[tuple[str, str]] | None:
    if bm is None:
        return None
    return [
        ("reference", str(bm.get("reference") or "—")),
        ("origin", str(bm.get("origin") or "—")),
        ("licence", str(bm.get("license") or "not stated")),
    ]


def provenance(inp: Inputs) -> dict:
    m = inp.metrics
    return {
        "base_model": _base_model_rows(base_model(inp)),
        "models": [(str(x["label"]), str(x.get("spec", "—")), str(x.get("kind", "—"))) for x in m["models"]],
        "eval_config": [
            (str(k), json.dumps(v) if not isinstance(v, str) else v) for k, v in (m.get("config") or {}).items()
        ],
        **_data(inp.manifest),
        "config_text": inp.config_text,
        "seeds": _seeds(inp),
        "timings": _timings(inp),
        "versions": _versions(inp),
        "inputs": sorted(inp.read.items()),
    }

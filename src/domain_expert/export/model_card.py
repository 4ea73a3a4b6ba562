"""The exported folder's README.md (a Hugging Face model card), rendered from templates/model_card.md.j2 with what
the run's folders record: base model, data sources and licences, training summary, prompt format, export fidelity."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config package loads pydantic and YAML: not needed to import this module
    from domain_expert.config import RunConfig

AUTO_CLASS = {"causal": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM"}


def model_card(
    cfg: RunConfig, stage: dict, data_manifest: dict, dtype: str, fidelity: dict, kind: str = "causal"
) -> str:
    import jinja2

    from domain_expert.data.hygiene import describe

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # markdown, not HTML
    )
    env.filters["f3"] = lambda x: f"{x:.3f}" if isinstance(x, int | float) else "?"
    base = stage["base_model"]
    outputs = data_manifest.get("outputs", {})
    return env.get_template("model_card.md.j2").render(
        cfg=cfg,
        stage=stage,
        base=base,
        base_hub=base["origin"].split(" ")[0] if base["source"] == "builtin" else base["reference"],
        summ=stage.get("summary", {}),
        sources=data_manifest.get("sources", []),
        split_seed=data_manifest.get("split", {}).get("seed", "?"),
        split_line=", ".join(
            f"{k.split('.')[0]} {v['records']} records / {v['groups']} groups"
            for k, v in outputs.items()
            if "records" in v  # the splits; probes.jsonl has its own counts
        ),
        hygiene=describe(data_manifest.get("hygiene")),
        note=data_manifest.get("note", "Not medical advice."),
        dtype=dtype,
        fidelity=fidelity,
        auto_class=AUTO_CLASS[kind],
    )

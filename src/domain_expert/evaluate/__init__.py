"""Evaluation: `run` compares models on a run's held-out items and writes eval/ (docs/evaluation-format.md).

Modules: `stage` (the stage), `specs` (which models), `items` (what they are scored on), `scoring` (a model in this
process), `endpoints` (a model behind an OpenAI-compatible URL), `passes` (one model's pass, per item kind), `rows`
(items.jsonl and resuming), `metrics` (text metrics), `judge` (LLM judge), `aggregate` and `stats` (means and paired
comparisons), `benchmarks` (lm-evaluation-harness). Importing this package loads no model code.
"""

from domain_expert.evaluate.aggregate import METRICS, aggregate
from domain_expert.evaluate.specs import ModelSpec, parse_model
from domain_expert.evaluate.stage import run

__all__ = ["METRICS", "ModelSpec", "aggregate", "parse_model", "run"]

"""`domain-expert export`: a run's tuned model as a folder that loads without project code. One public entry,
`run(finetune_path, out_dir, *, dtype, overwrite) -> Path`; today's target is a merged Hugging Face folder (`hf.py`)
with a model card (`model_card.py`)."""

from __future__ import annotations

from domain_expert.export.hf import DEFAULT_TOLERANCE, run

__all__ = ["DEFAULT_TOLERANCE", "run"]

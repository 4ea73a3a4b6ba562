"""`domain-expert export`: a run's tuned model as folders that deploy without project code.

- `run(finetune_path, out_dir, *, dtype, overwrite) -> Path`: the merged Hugging Face folder (`hf.py`) with a model
  card (`model_card.py`) and fidelity checks; every other target is built from it.
- `export_target(run_dir, target, out=None, **opts) -> Path` (`targets.py`): target "hf" (the above), "bedrock"
  (`bedrock.py`: Amazon Bedrock Custom Model Import folder + validation.json), "sagemaker" (`sagemaker.py`:
  model.tar.gz for the image in deploy/sagemaker/), "gguf" (`gguf_export.py`: a GGUF checked against the merged
  folder, plus an Ollama Modelfile). Each writes `<run>/export-<target>` atomically with a stage.json of its checks.
- `validate_bedrock(folder) -> dict`: Bedrock's import rules on any folder, before an upload; raises ExportError
  naming every broken rule.

Targets import their heavy dependencies inside functions: importing this package stays cheap.
"""

from __future__ import annotations

from domain_expert.export.bedrock import validate_bedrock
from domain_expert.export.hf import DEFAULT_TOLERANCE, run
from domain_expert.export.targets import TARGETS, export_target

__all__ = ["DEFAULT_TOLERANCE", "TARGETS", "export_target", "run", "validate_bedrock"]

"""Which models an evaluation compares: `--model` specs parsed into run, run base, model folder or endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from domain_expert.errors import RunFolderError


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

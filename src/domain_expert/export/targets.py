"""Deploy targets built from the merged Hugging Face folder (`hf.py`): each writes its own folder next to export/
(`<run>/export-<target>`), atomically, with a stage.json saying what was checked. The merged folder is the one
source: a target never merges again, so every target ships the weights whose fidelity `hf` already checked.

`export_target(run_dir, target, out=None, **opts) -> Path` is the one entry (the CLI and `domain-expert aws` call it).
`run_dir` is a run folder (its export/ is made first when missing), an export/ folder, or any plain HF model folder.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from domain_expert.errors import ExportError, RunFolderError
from domain_expert.fsutil import read_json
from domain_expert.runs import completed_stage, stage_info

# the one registry of targets built from the merged folder: name -> (module, builder(src, out, **opts) -> Path);
# modules are imported only when their target is asked for (torch, transformers, gguf load inside them)
_BUILDERS = {
    "bedrock": ("domain_expert.export.bedrock", "build_bedrock"),
    "sagemaker": ("domain_expert.export.sagemaker", "build_sagemaker"),
    "gguf": ("domain_expert.export.gguf_export", "build_gguf"),
}
TARGETS = ("hf", *_BUILDERS)


@dataclass(frozen=True)
class Source:
    """The merged model a target is built from, and what is known about the run it came from."""

    folder: Path  # a plain HF folder: config.json, weights, tokenizer (prompt_format.json when exported by us)
    run_dir: Path | None  # the run folder, when known (default output folders go next to its export/)
    stage: dict  # the export's stage.json ({} for a folder we did not write)

    @property
    def name(self) -> str:
        """The served model name: the run folder's name, else the model folder's."""
        return (self.run_dir or self.folder).resolve().name

    def held_out_prompts(self, n: int) -> list[str]:
        """Prompts from the run's held-out split (data/test.jsonl first), as the `hf` fidelity check uses."""
        from domain_expert.export.hf import _fidelity_prompts

        ft = self.stage.get("finetune_dir")
        ft_stage = read_json(Path(ft) / "stage.json") if ft and (Path(ft) / "stage.json").exists() else {}
        return _fidelity_prompts(ft_stage, n)


def write_target_stage(tmp: Path, target: str, src: Source, **fields) -> None:
    """A target's stage.json, written last into its staged folder: which target, when, from which merged folder, and
    what was checked (`fields`)."""
    import time

    from domain_expert.fsutil import write_json_atomic

    record = {
        "stage": f"export-{target}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": str(src.folder.resolve()),
        **fields,
    }
    write_json_atomic(tmp / "stage.json", record)


def export_target(run_dir: str | Path, target: str = "hf", out: str | Path | None = None, **opts) -> Path:
    """Build `target` from `run_dir` into `out` (default `<run>/export-<target>`; `<run>/export` for hf) and return
    the folder. Options by target: hf: dtype, overwrite; bedrock: dtype (bf16 default), overwrite; sagemaker:
    overwrite; gguf: gguf_type (f32|f16|bf16|q8_0), overwrite. A failing check raises a project error and leaves
    nothing behind."""
    if target not in TARGETS:
        raise ExportError(f"unknown export target '{target}'", where="--target", fix=f"use one of {', '.join(TARGETS)}")
    if target == "hf":
        from domain_expert.export.hf import run

        return run(run_dir, out, dtype=opts.get("dtype"), overwrite=opts.get("overwrite", False))
    src = resolve_source(run_dir)
    default_parent = src.run_dir if src.run_dir is not None else src.folder.parent
    default_name = f"export-{target}" if src.run_dir is not None else f"{src.folder.name}-{target}"
    module, builder = _BUILDERS[target]
    build = getattr(importlib.import_module(module), builder)
    return build(src, Path(out) if out else default_parent / default_name, **opts)


def resolve_source(path: str | Path) -> Source:
    """The merged folder for `path`: a run's export/ (exported now with the run's settings when missing), an export
    folder, or a plain HF model folder."""
    path = Path(path)
    if not path.exists():
        raise RunFolderError("run or model folder not found", where=str(path), fix="check the path")
    exp = completed_stage(path, "export")
    if exp is not None:
        run = exp.parent if exp != path or (exp.parent / "finetune").exists() else None
        return Source(exp, run, read_json(exp / "stage.json"))
    ft = completed_stage(path, "finetune")
    if ft is not None:
        from domain_expert.export.hf import run as export_hf

        run_dir = ft.parent
        print(f"[domain-expert] no export/ yet in {run_dir}: exporting the merged folder first", flush=True)
        exp = export_hf(ft, run_dir / "export")
        return Source(exp, run_dir, read_json(exp / "stage.json"))
    if (path / "config.json").exists():
        return Source(path, None, stage_info(path) or {})
    raise RunFolderError(
        "not a run, export or model folder",
        where=str(path),
        fix="pass runs/<name> (after `domain-expert run`), runs/<name>/export, or a Hugging Face model folder",
    )

"""Find stage folders inside a run. A run folder holds data/, finetune/ and export/, each with a stage.json."""

from __future__ import annotations

from pathlib import Path

from domain_expert.errors import RunFolderError
from domain_expert.fsutil import read_json

STAGE_DIRS = {"prepare": "data", "finetune": "finetune", "export": "export"}


def stage_info(folder: Path) -> dict | None:
    p = folder / "stage.json"
    if p.exists():
        return read_json(p)
    if (folder / "manifest.json").exists():
        return read_json(folder / "manifest.json")
    return None


def completed_stage(path: Path, stage: str) -> Path | None:
    """The completed `stage` folder that `path` (a run folder or the stage folder itself) names, or None."""
    for cand in (path, path / STAGE_DIRS[stage]):
        if (stage_info(cand) or {}).get("stage") == stage:
            return cand
    return None


def find_stage(path: str | Path, stage: str) -> Path:
    """`path` is a run folder or the stage folder itself; return the completed stage folder or say what to run."""
    path = Path(path)
    if not path.exists():
        raise RunFolderError("run folder not found", where=str(path), fix="check the path, or run `domain-expert run`")
    found = completed_stage(path, stage)
    if found is not None:
        return found
    if (path / STAGE_DIRS[stage]).exists() or (path / "adapter_config.json").exists():
        raise RunFolderError(
            f"the {stage} stage did not complete (no stage.json)",
            where=str(path),
            fix=f"re-run `domain-expert {stage} ... --overwrite`",
        )
    raise RunFolderError(
        f"no completed {stage} stage here",
        where=str(path),
        fix=f"pass a run folder (runs/<name>) or its {STAGE_DIRS[stage]}/ folder, "
        f"after running `domain-expert {stage}`",
    )

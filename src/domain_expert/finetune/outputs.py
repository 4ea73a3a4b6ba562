"""The finetune folder: claimed before anything is loaded (a fresh run needs it empty, a resumed one a checkpoint
that matches), then filled by rank 0: the resolved config, prompt format and data manifest, and the metrics rows in
metrics.jsonl and TensorBoard."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from domain_expert.config import RunConfig, dump_config
from domain_expert.errors import RunFolderError
from domain_expert.finetune import checkpoint
from domain_expert.fsutil import check_output_dir, write_json_atomic, write_text_atomic
from domain_expert.prompts import PromptFormat


def claim(
    out_dir: Path, *, resume: bool, overwrite: bool, settings: dict, note: Callable[[str], None]
) -> checkpoint.Checkpoint | None:
    """The checkpoint to resume from, or None for a fresh run; every check happens before anything is loaded or
    written, so a refused run changes nothing."""
    if resume:
        return checkpoint.find_resumable(out_dir, settings, note)
    check_fresh(out_dir, overwrite)
    return None


def check_fresh(out_dir: Path, overwrite: bool) -> None:
    """A new run needs an empty folder; an unfinished one is worth pointing at --resume rather than a bare
    'exists'."""
    if not overwrite and not (out_dir / "stage.json").exists():
        complete, _ = checkpoint.scan(out_dir)
        if complete:
            raise RunFolderError(
                f"an unfinished fine-tuning run is here (last checkpoint: {complete[-1].name})",
                where=str(out_dir),
                fix="pass --resume to continue it, --overwrite to start over, or --out for another folder",
            )
    check_output_dir(out_dir, overwrite)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows up to the checkpoint's step (and drop a line torn by the kill): the resumed run logs the
    later steps again, and a curve must not have two values for one step."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


class RunLog:
    """metrics.jsonl (one JSON row per logged step) and the same numbers as TensorBoard scalars. Ranks other than 0
    hold one without files: logging there does nothing."""

    def __init__(self, metrics: IO[str] | None = None, tb: Any = None) -> None:
        self._metrics, self._tb = metrics, tb

    def __call__(self, row: dict) -> None:
        if self._metrics is None or self._tb is None:
            return
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        for k, v in row.items():
            if k != "step" and isinstance(v, int | float):
                self._tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self._metrics is not None and self._tb is not None:
            self._metrics.close()
            self._tb.close()


def open_folder(
    cfg: RunConfig,
    out_dir: Path,
    *,
    fmt: PromptFormat,
    data_manifest: dict,
    overwrite: bool,
    resumed_step: int | None,
    note: Callable[[str], None],
) -> RunLog:
    """Rank 0, once every rank has checked the folder: clear what `overwrite` replaces or what a resumed run redoes
    (`resumed_step`: the checkpoint's step), write the run's inputs, and open the logs for appending."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for stale in ("stage.json", "metrics.jsonl", "checkpoints", "tb"):
            p = out_dir / stale
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if resumed_step is not None:
        for p in checkpoint.remove_leftovers(out_dir):
            note(f"removed {p.name}: a checkpoint write cut short")
        truncate_metrics(out_dir / "metrics.jsonl", resumed_step)  # steps after the checkpoint are trained again
    write_text_atomic(out_dir / "config.yaml", dump_config(cfg))
    fmt.save(out_dir)
    write_json_atomic(out_dir / "data_manifest.json", data_manifest)
    from torch.utils.tensorboard import SummaryWriter

    # purge_step drops the events the interrupted run logged after its checkpoint
    tb = SummaryWriter(str(out_dir / "tb"), purge_step=resumed_step + 1 if resumed_step is not None else None)
    return RunLog(open(out_dir / "metrics.jsonl", "a", encoding="utf-8"), tb)

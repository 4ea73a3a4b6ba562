"""Training checkpoints: everything `finetune --resume` needs to continue a run exactly where it stopped.

A checkpoint is a folder `checkpoints/step-NNNNNN` with the adapter weights, the optimizer state, every process's
random state, and trainer_state.json (step, data position, schedule clock, settings). It is written into a
temporary sibling and renamed into place, and trainer_state.json is written last, with the SHA-256 of every other
file: a folder without it is not a checkpoint (reported, never loaded), and a file that no longer matches its hash
is reported as corrupted instead of being loaded.

Nothing here unpickles arbitrary objects: tensors and plain containers go through torch.load(weights_only=True),
everything else is JSON.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from domain_expert.config import config_differences
from domain_expert.errors import CheckpointError
from domain_expert.fsutil import read_json, sha256_file, staged_dir, write_json_atomic

FORMAT = 1  # bump when trainer_state.json changes meaning; older checkpoints are then refused, not misread
MARKER = "trainer_state.json"  # written last: its presence marks a complete checkpoint
KEEP = 2
COMPARED = ("model", "prompt", "lora", "train")
# Settings that may change between the interrupted run and its resumption: they change speed, memory or logging
# cadence, not the sequence of optimizer steps (max_batch_tokens splits a step into passes, packing lays the same
# examples out in rows: the step is the same).
RESUME_FREE = frozenset(
    {
        "train.eval_every",
        "train.save_every",
        "train.device",
        "train.max_batch_tokens",
        "train.packing",
        "train.pack_row_tokens",
        "train.fuse_lora",
        "train.attn_implementation",
        "train.gradient_checkpointing",
    }
)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    state: dict  # trainer_state.json


def rng_state(device: str) -> dict:
    """This process's random state in tensors and plain numbers (loadable with weights_only=True)."""
    import numpy as np
    import torch

    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.startswith("cuda") else None,
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                  "cached": cached},
    }  # fmt: skip


def set_rng_state(state: dict, device: str) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.startswith("cuda"):
        torch.cuda.set_rng_state(state["cuda"], device)
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def save(out_dir: Path, *, model, opt, rng: list[dict], state: dict) -> Path:
    """Write checkpoints/step-NNNNNN atomically; the oldest beyond KEEP go."""
    import torch

    ckpts = out_dir / "checkpoints"
    final = ckpts / f"step-{state['step']:06d}"
    with staged_dir(final, overwrite=True) as tmp:
        model.save_pretrained(tmp)  # adapter only: the frozen base is never copied
        torch.save(opt.state_dict(), tmp / "optimizer.pt")  # tensors, numbers, tuples: weights_only-loadable
        torch.save({"ranks": rng}, tmp / "rng_state.pt")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json_atomic(tmp / MARKER, {"format": FORMAT, **state, "files": files})
    for old in scan(out_dir)[0][:-KEEP]:  # complete ones only: an incomplete folder never counts as a backup
        shutil.rmtree(old, ignore_errors=True)
    return final


def scan(out_dir: Path) -> tuple[list[Path], list[Path]]:
    """(complete checkpoints oldest first, folders without the completion marker). Temporary `.step-*` folders
    left by a kill during a write are neither: they are leftovers, removed by `remove_leftovers`."""
    folder = out_dir / "checkpoints"
    if not folder.is_dir():
        return [], []
    dirs = sorted(p for p in folder.glob("step-*") if p.is_dir())
    return [p for p in dirs if (p / MARKER).is_file()], [p for p in dirs if not (p / MARKER).is_file()]


def remove_leftovers(out_dir: Path) -> list[Path]:
    """Delete half-written temporary checkpoint folders (a kill during a save); return what was removed."""
    folder = out_dir / "checkpoints"
    gone = sorted(folder.glob(".step-*")) if folder.is_dir() else []
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def find_resumable(out_dir: Path, expected: dict, note: Callable[[str], None]) -> Checkpoint:
    """The newest complete checkpoint in `out_dir`, checked against the current settings and verified on disk.

    `expected` holds what the checkpoint must match: config (model_dump(mode="json")), dtype, and the prepared
    data's manifest hash. Every check happens before anything is loaded or written, so a refused resume changes
    nothing.
    """
    if (out_dir / "stage.json").exists():
        raise CheckpointError(
            "fine-tuning here already finished (stage.json is written last): there is nothing to resume",
            where=str(out_dir),
            fix="use the adapter as it is, or pass --overwrite instead of --resume to train again",
        )
    complete, incomplete = scan(out_dir)
    for p in incomplete:
        note(f"ignoring {p}: no {MARKER}, so it is not a complete checkpoint")
    if not complete:
        raise CheckpointError(
            "no complete checkpoint to resume from"
            + (f" ({len(incomplete)} incomplete folder(s) ignored)" if incomplete else ""),
            where=str(out_dir / "checkpoints"),
            fix="run without --resume to start training (a checkpoint is written every train.save_every steps)",
        )
    path = complete[-1]
    previous = complete[-2] if len(complete) > 1 else None
    drop_it = (
        f"delete {path} to resume from the previous checkpoint ({previous.name})"
        if previous
        else "pass --overwrite instead of --resume to start over"
    )
    state = _read_state(path, drop_it)
    _check_settings(path, state, expected)
    _check_files(path, state, drop_it)
    return Checkpoint(path, state)


def _read_state(path: Path, drop_it: str) -> dict:
    try:
        state = read_json(path / MARKER)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{MARKER} is not valid JSON ({e})", where=str(path), fix=drop_it) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint format {state.get('format') if isinstance(state, dict) else '?'} is not the format this "
            f"version resumes ({FORMAT})",
            where=str(path),
            fix="pass --overwrite instead of --resume to start over",
        )
    return state


def _check_settings(path: Path, state: dict, expected: dict) -> None:
    problems = config_differences(state["config"], expected["config"], sections=COMPARED, ignore=RESUME_FREE)
    if state["dtype"] != expected["dtype"]:
        problems.append(f"training dtype: checkpoint {state['dtype']}, now {expected['dtype']}")
    if state["data_manifest_sha256"] != expected["data_manifest_sha256"]:
        problems.append(
            f"prepared data: checkpoint manifest.json sha256 {state['data_manifest_sha256'][:12]}…, "
            f"now {expected['data_manifest_sha256'][:12]}…"
        )
    if problems:
        raise CheckpointError(
            f"{path.name} was written with other settings: " + "; ".join(problems),
            where=str(path),
            fix="resume with the config, model and --data of the interrupted run, "
            "or pass --overwrite instead of --resume to start over",
        )


def _check_files(path: Path, state: dict, drop_it: str) -> None:
    for name, digest in state["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{name} is missing", where=str(path), fix=drop_it)
        if sha256_file(f) != digest:
            raise CheckpointError(
                f"{name} does not match the hash recorded when it was written (truncated or modified: "
                f"{f.stat().st_size} bytes now)",
                where=str(f),
                fix=drop_it,
            )


def restore(ckpt: Checkpoint, model, opt, device: str) -> list[dict]:
    """Load adapter weights and optimizer state into the freshly built model and optimizer; return the saved
    random states, one per rank of the run that wrote them."""
    import pickle

    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        weights = load_file(str(ckpt.path / "adapter_model.safetensors"), device=device)
        result = set_peft_model_state_dict(model, weights)
        opt.load_state_dict(torch.load(ckpt.path / "optimizer.pt", map_location=device, weights_only=True))
        rng = torch.load(ckpt.path / "rng_state.pt", weights_only=True)["ranks"]
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as e:
        raise CheckpointError(
            f"cannot load the checkpoint: {str(e).splitlines()[0]}",
            where=str(ckpt.path),
            fix="pass --overwrite instead of --resume to start over",
        ) from None
    unexpected = [k for k in result.unexpected_keys if "lora_" in k]
    if unexpected:
        raise CheckpointError(
            f"the checkpoint's adapter does not fit this model ({len(unexpected)} unexpected weights, e.g. "
            f"{unexpected[0]})",
            where=str(ckpt.path),
            fix="resume with the model and LoRA settings of the interrupted run",
        )
    return rng

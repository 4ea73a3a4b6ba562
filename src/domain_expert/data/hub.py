"""`hub` source: a Hugging Face dataset (`datasets.load_dataset`) or a local dataset folder, columns mapped.

The offline switches (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE) are the user's to set; we never change the
environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from domain_expert.config import HubSource
from domain_expert.data.files import ColumnMap, map_rows
from domain_expert.data.records import SourceResult
from domain_expert.errors import DataError

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_NO_HUB_FIX = "download it elsewhere and use a `file` source (JSONL/CSV/Parquet), or pass a local folder as name"


def load_hub_source(cfg: HubSource, where: str) -> SourceResult:
    local = Path(cfg.name).expanduser()
    ds = _load_local(local, cfg, where) if local.exists() else _load_dataset(cfg, where, local=False)
    cmap = ColumnMap(cfg.columns, where)
    cmap.check(ds.column_names, f"{cfg.name} (split {cfg.split})")
    # Only the mapped columns: iterating rows would otherwise decode every image/audio column too.
    ds = ds.select_columns(list(dict.fromkeys(cmap.columns.values())))
    rows = ((f"{cfg.name} (split {cfg.split}, row {i})", row) for i, row in enumerate(ds, 1))
    prefix = local.resolve().name if local.exists() else cfg.name.rsplit("/", 1)[-1]
    records, notes = map_rows(rows, cmap, id_prefix=prefix, source=cfg.name, where=f"{cfg.name} (split {cfg.split})")
    origin = str(local.resolve()) if local.exists() else f"hf:{cfg.name}"
    return SourceResult(
        name=cfg.name,
        kind="hub",
        license=cfg.license,
        attribution=cfg.attribution,
        records=records,
        # The fingerprint identifies the data that was loaded (the hub has no single file to hash).
        inputs=[
            {
                "path": origin,
                "subset": cfg.subset,
                "split": cfg.split,
                "fingerprint": getattr(ds, "_fingerprint", None),
            }
        ],
        notes=notes,
    )


def _load_local(path: Path, cfg: HubSource, where: str):
    import datasets

    if path.is_file():
        raise DataError(
            "a hub source needs a dataset folder, not a single file",
            where=f"{where}.name",
            fix="use `kind: file` for a JSONL/CSV/Parquet file",
        )
    saved_dict = (path / "dataset_dict.json").exists()
    if saved_dict or (path / "state.json").exists() and (path / "dataset_info.json").exists():
        # Written by save_to_disk: load_dataset refuses these folders.
        ds = datasets.load_from_disk(str(path))
        if not saved_dict:
            return ds
        if cfg.split not in ds:
            raise DataError(
                f"split '{cfg.split}' not found; the dataset has: {', '.join(ds)}",
                where=f"{where}.split",
                fix=f"set {where}.split to one of them",
            )
        return ds[cfg.split]
    return _load_dataset(cfg, where, local=True)


def _load_dataset(cfg: HubSource, where: str, *, local: bool):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    try:
        return datasets.load_dataset(cfg.name, cfg.subset, split=cfg.split)
    except DatasetNotFoundError as e:
        raise DataError(
            f"dataset not found on the Hugging Face hub, or it is private/gated ({e})",
            where=f"{where}.name",
            fix=f"check the name; or {_NO_HUB_FIX}",
        ) from None
    except ConnectionError as e:
        offline = [v for v in _OFFLINE_VARS if os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")]
        why = f" (offline mode is on: {', '.join(offline)})" if offline else ""
        raise DataError(
            f"the Hugging Face hub is unreachable{why} and the dataset is not in the local cache ({e})",
            where=f"{where}.name",
            fix=_NO_HUB_FIX,
        ) from None
    except ValueError as e:
        # datasets reports a bad split or subset as ValueError, listing the valid values in the message.
        msg = str(e)
        key = "split" if "split" in msg.lower() else "subset" if "config" in msg.lower() else "name"
        raise DataError(f"cannot load the dataset: {msg}", where=f"{where}.{key}", fix=f"check {where}.{key}") from None
    except OSError as e:
        if local:
            raise DataError(
                f"no loadable data in this folder ({e})",
                where=f"{where}.name",
                fix="put JSONL/CSV/Parquet files in it, or a dataset written by save_to_disk",
            ) from None
        raise DataError(
            f"cannot load the dataset (the hub is unreachable or it does not exist): {e}",
            where=f"{where}.name",
            fix=_NO_HUB_FIX,
        ) from None

"""Folders to and from S3: a run folder (or prepared data) under s3://bucket/prefix/<name>/, with a manifest.

Why a manifest: S3's ETag is not a content hash for multipart uploads, so the keys and a sha256 per file are
written beside the upload (`upload-manifest.json`); a download checks every file against it. Training checkpoints
(optimizer state: several times the adapter's size) stay local unless asked for. Temporary `.partial-` folders and
other dot-files a crashed stage may leave are never uploaded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from domain_expert.aws.session import AwsContext
from domain_expert.errors import AwsError
from domain_expert.fsutil import sha256_file
from domain_expert.runs import STAGE_DIRS, stage_info

MANIFEST = "upload-manifest.json"


def upload_name(folder: Path) -> str:
    """s3 name of a folder: a run folder by its name; a stage folder inside a run as <run>/<stage folder>."""
    folder = folder.resolve()
    info = stage_info(folder) or {}
    if info.get("stage") in STAGE_DIRS:
        return f"{folder.parent.name}/{folder.name}"
    return folder.name


def check_uploadable(folder: Path) -> None:
    if not folder.is_dir():
        raise AwsError("not a folder", where=str(folder), fix="pass a run folder (runs/<name>) or its data/ folder")
    is_stage = (stage_info(folder) or {}).get("stage") in STAGE_DIRS
    has_stage = any(stage_info(folder / d) for d in STAGE_DIRS.values() if (folder / d).is_dir())
    if not (is_stage or has_stage):
        raise AwsError(
            "neither a run folder nor a completed stage folder (no stage.json / manifest.json)", where=str(folder),
            fix="pass runs/<name> after `domain-expert prepare` (or run), or its data/ folder",
        )  # fmt: skip


def files_to_upload(folder: Path, include_checkpoints: bool = False) -> list[Path]:
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if not include_checkpoints and "checkpoints" in rel.parts[:-1]:
            continue
        out.append(path)
    return out


def upload_folder(
    ctx: AwsContext, folder: Path, bucket: str, key_prefix: str, *, include_checkpoints: bool = False
) -> dict[str, Any]:
    """Upload `folder` under key_prefix/ and its manifest last; return the manifest. Objects count as created."""
    files = files_to_upload(folder, include_checkpoints)
    if not files:
        raise AwsError("nothing to upload", where=str(folder), fix="check the folder holds the run's files")
    entries = []
    for path in files:
        key = f"{key_prefix}/{path.relative_to(folder).as_posix()}"
        entries.append({"key": key, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
        ctx.upload(path, bucket, key)
        ctx.made(f"s3://{bucket}/{key}", "s3", "delete_object", Bucket=bucket, Key=key)
    manifest = {"bucket": bucket, "prefix": key_prefix, "source": folder.name, "files": entries}
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / MANIFEST
        local.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        key = f"{key_prefix}/{MANIFEST}"
        ctx.upload(local, bucket, key, what="the keys and sha256 of the files above")
        ctx.made(f"s3://{bucket}/{key}", "s3", "delete_object", Bucket=bucket, Key=key)
    return manifest


def list_keys(ctx: AwsContext, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    token: dict[str, str] = {}
    while True:
        page = ctx.call("s3", "list_objects_v2", Bucket=bucket, Prefix=prefix, **token) or {}
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = {"ContinuationToken": page["NextContinuationToken"]}


def download_folder(ctx: AwsContext, bucket: str, key_prefix: str, dest: Path) -> list[Path]:
    """Every object under key_prefix/ into dest/, checked against the upload manifest when there is one."""
    keys = list_keys(ctx, bucket, key_prefix.rstrip("/") + "/")
    out = []
    for key in keys:
        rel = key[len(key_prefix.rstrip("/")) + 1 :]
        if not rel or rel.endswith("/") or ".." in rel.split("/"):
            continue
        ctx.download(bucket, key, dest / rel)
        out.append(dest / rel)
    manifest_path = dest / MANIFEST
    if not ctx.dry_run and manifest_path.exists():
        verify(dest, json.loads(manifest_path.read_text(encoding="utf-8")))
    return out


def verify(dest: Path, manifest: dict[str, Any]) -> None:
    prefix = manifest["prefix"]
    for entry in manifest["files"]:
        path = dest / entry["key"][len(prefix) + 1 :]
        if not path.exists() or sha256_file(path) != entry["sha256"]:
            raise AwsError("downloaded file does not match the upload manifest (sha256)", where=str(path),
                           fix="download again; if it persists the object was changed after upload")  # fmt: skip

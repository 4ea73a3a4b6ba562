"""The local half of deploy and bedrock-import: the export the cloud service needs, made and checked on disk first.

Why here and not in export/: the export package owns the targets (`export_target(run_dir, target, out=None)`,
`validate_bedrock(folder)`); this module only finds or makes the artefact and turns a failed check into an error
raised before any request, so nothing is uploaded or created for an export the service would reject.
"""

from __future__ import annotations

from pathlib import Path

from domain_expert.errors import AwsError, DomainExpertError

TARBALL = "model.tar.gz"


def _export_target(run: Path, target: str) -> Path:
    from domain_expert import export

    fn = getattr(export, "export_target", None)
    if fn is None:
        raise AwsError(
            f"this install's export package has no '{target}' target", where="domain_expert.export",
            fix=f"update domain-expert, or pass a folder already exported for {target}",
        )  # fmt: skip
    return Path(fn(run, target))


def sagemaker_tarball(path: Path) -> Path:
    """`path` is model.tar.gz, a folder holding one (the sagemaker export), or a run folder to export."""
    if path.is_file() and path.name.endswith(".tar.gz"):
        return path
    if not path.exists():
        raise AwsError("not found", where=str(path), fix="pass a run folder, its sagemaker export, or model.tar.gz")
    found = path / TARBALL if (path / TARBALL).is_file() else None
    if found is None:
        out = _export_target(path, "sagemaker")
        found = out if out.is_file() else out / TARBALL
    if not found.is_file():
        raise AwsError(f"the sagemaker export holds no {TARBALL}", where=str(found.parent),
                       fix="re-run `domain-expert export RUN --target sagemaker`")  # fmt: skip
    return found


def bedrock_folder(path: Path) -> Path:
    """`path` is a bedrock export (a folder with validation.json) or a run folder to export; validated either way."""
    if not path.exists():
        raise AwsError("not found", where=str(path), fix="pass a run folder or its bedrock export folder")
    folder = path if (path / "validation.json").is_file() else _export_target(path, "bedrock")
    from domain_expert import export

    validate = getattr(export, "validate_bedrock", None)
    if validate is None:
        raise AwsError("this install's export package cannot validate a bedrock export", where="domain_expert.export",
                       fix="update domain-expert")  # fmt: skip
    try:
        validate(folder)
    except DomainExpertError as e:
        raise AwsError(f"the export fails Bedrock's checks: {e.what}", where=e.where or str(folder),
                       fix=e.fix or "fix the export before importing (nothing was uploaded)") from None  # fmt: skip
    except Exception as e:  # a validator's own exception type: still a refusal before any upload
        raise AwsError(f"the export fails Bedrock's checks: {e}", where=str(folder),
                       fix="fix the export before importing (nothing was uploaded)") from None  # fmt: skip
    return folder

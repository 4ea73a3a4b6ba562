"""`aws download JOB --to RUN`: a finished training job's model.tar.gz unpacked into a local run folder.

The container writes a run folder into /opt/ml/model (config.yaml, finetune/, export/), so the unpacked tarball is
one: `domain-expert chat RUN`, `evaluate RUN` and `aws deploy RUN` work on it at once. The folder appears whole or
not at all (fsutil.staged_dir); members are extracted with tarfile's `data` filter (no absolute paths, links out of
the folder or device files), and `aws-training-job.json` records where it came from (no credentials).
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from domain_expert.aws.session import AwsContext
from domain_expert.aws.status import KINDS
from domain_expert.errors import AwsError
from domain_expert.fsutil import check_output_dir, staged_dir, write_json_atomic

PROVENANCE = "aws-training-job.json"


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise AwsError(f"'{uri}' is not an s3://bucket/key URI", where="ModelArtifacts")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def download(ctx: AwsContext, job: str, to: Path, *, overwrite: bool = False) -> Path:
    ctx.check_region("sagemaker")
    check_output_dir(to, overwrite)
    ctx.require_credentials()
    name = job.rsplit("/", 1)[-1]
    d = ctx.call("sagemaker", "describe_training_job", missing_ok=True, TrainingJobName=name)
    if d is None:
        raise AwsError(f"no training job '{name}' in {ctx.region}", where="JOB", fix="check the name and --region")
    if ctx.dry_run:
        ctx.echo("[dry-run] then: GetObject of the job's ModelArtifacts.S3ModelArtifacts, unpacked into " + str(to))
        return to
    state = d.get(KINDS[0].status_key)
    if state != "Completed":
        raise AwsError(f"training job '{name}' is {state}, not Completed", where="JOB",
                       fix=f"wait for it: `domain-expert aws status {name} --wait`")  # fmt: skip
    bucket, key = split_s3(d["ModelArtifacts"]["S3ModelArtifacts"])
    with staged_dir(to, overwrite=overwrite) as tmp:
        tarball = tmp / ".model.tar.gz"
        ctx.download(bucket, key, tarball)
        _extract(tarball, tmp)
        tarball.unlink()
        write_json_atomic(tmp / PROVENANCE, _provenance(d))
    return to


def _extract(tarball: Path, dest: Path) -> None:
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise AwsError(f"cannot unpack the model artifacts: {e}", where=str(tarball),
                       fix="check the training job's output; download again") from None  # fmt: skip


def _provenance(d: dict[str, Any]) -> dict[str, Any]:
    keep = ("TrainingJobName", "TrainingJobArn", "TrainingJobStatus", "AlgorithmSpecification", "ResourceConfig",
            "StoppingCondition", "EnableManagedSpotTraining", "ModelArtifacts", "TrainingStartTime",
            "TrainingEndTime", "BillableTimeInSeconds", "HyperParameters")  # fmt: skip
    return {k: d[k] for k in keep if k in d}

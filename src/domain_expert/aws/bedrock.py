"""`aws bedrock-import`: Bedrock Custom Model Import of a run's bedrock export (a Hugging Face folder).

Order matters for cost and clutter: the export is validated on disk (`export.validate_bedrock`) before any request,
then the folder is uploaded and CreateModelImportJob points Bedrock at it. A failed job request deletes the upload.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain_expert.aws import checks
from domain_expert.aws.exports import bedrock_folder
from domain_expert.aws.session import AwsContext
from domain_expert.aws.transfer import upload_folder
from domain_expert.errors import AwsError


@dataclass
class ImportSpec:
    bucket: str
    role_arn: str
    prefix: str = "domain-expert"
    model_name: str | None = None
    job_name: str | None = None


def check_model_name(value: str) -> str:
    if len(value) > 63 or not re.fullmatch(r"([0-9a-zA-Z][_-]?)+", value):
        raise AwsError(f"'{value}' is not a valid imported model name", where="--model-name",
                       fix="letters and digits, single '-' or '_' between them, at most 63 characters")  # fmt: skip
    return value


def bedrock_import(ctx: AwsContext, run: Path, spec: ImportSpec) -> dict[str, Any]:
    ctx.check_region("bedrock")
    checks.check_role_arn(spec.role_arn)
    name = run.resolve().name
    model_name = check_model_name(spec.model_name or checks.job_name(name))
    job = checks.check_name(spec.job_name or checks.job_name(f"{name}-import"), "--job-name")
    folder = bedrock_folder(run)  # validated before any upload
    ctx.require_credentials()
    checks.check_bucket(ctx, spec.bucket)
    prefix = checks.check_prefix(spec.prefix)
    key = f"{prefix + '/' if prefix else ''}{name}/bedrock/{job}"
    params = {
        "jobName": job,
        "importedModelName": model_name,
        "roleArn": spec.role_arn,
        "modelDataSource": {"s3DataSource": {"s3Uri": f"s3://{spec.bucket}/{key}/"}},
        "jobTags": [{"key": "domain-expert:run", "value": name}],
    }
    with ctx.undo_on_failure():
        upload_folder(ctx, folder, spec.bucket, key)
        response = ctx.call("bedrock", "create_model_import_job", **params) or {}
    return {**params, "jobArn": response.get("jobArn")}

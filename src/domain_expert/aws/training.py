"""`aws train`: a SageMaker training job that runs our own `finetune` on the same config, in our container.

Why not the sagemaker SDK's Estimator: the job is one CreateTrainingJob request whose every field we choose (image,
channels, spot, stopping condition); the SDK would add a large dependency, its own S3 layout and defaults, and hide
the request that --dry-run must print. The config travels as the `config` channel (YAML, as resolved here, so the
container trains exactly what was validated locally); prepared data, when it exists, as the `data` channel; the
container (`domain_expert.aws.container train`) prepares, fine-tunes and exports into /opt/ml/model, which SageMaker
tars to s3://bucket/prefix/<name>/output/<job>/output/model.tar.gz. With --spot, /opt/ml/checkpoints is synced to
S3 so an interrupted job resumes from its last checkpoint.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain_expert.aws import checks
from domain_expert.aws.session import AwsContext
from domain_expert.aws.transfer import upload_folder
from domain_expert.errors import AwsError

CONFIG_FILE = "config.yaml"


@dataclass
class TrainSpec:
    bucket: str
    role_arn: str
    image_uri: str
    prefix: str = "domain-expert"
    instance_type: str = "ml.g5.2xlarge"
    spot: bool = False
    max_runtime_s: int = 4 * 3600
    max_wait_s: int | None = None
    volume_gb: int = 50
    data_dir: Path | None = None
    job_name: str | None = None


def check_spec(ctx: AwsContext, spec: TrainSpec) -> None:
    """Every offline check, before credentials are even looked up."""
    ctx.check_region("sagemaker")
    checks.check_role_arn(spec.role_arn)
    checks.check_instance_type(ctx, "CreateTrainingJob", spec.instance_type)
    if not spec.image_uri:
        raise AwsError(
            "no training image",
            where="--image-uri",
            fix="build deploy/sagemaker/Dockerfile, push it to ECR and pass its URI (docs/aws.md)",
        )
    if spec.max_wait_s is not None and not spec.spot:
        raise AwsError("--max-wait-s applies to spot training only", where="--max-wait-s", fix="add --spot or drop it")
    if spec.spot and (spec.max_wait_s or 2 * spec.max_runtime_s) < spec.max_runtime_s:
        raise AwsError("with --spot the wait limit must be at least the runtime limit", where="--max-wait-s",
                       fix=f"pass --max-wait-s {spec.max_runtime_s} or more")  # fmt: skip
    if spec.data_dir is not None and not (spec.data_dir / "manifest.json").is_file():
        raise AwsError(
            "not a prepared data folder (no manifest.json)",
            where=str(spec.data_dir),
            fix="run `domain-expert prepare CONFIG` first, or leave --data out to prepare in the job",
        )
    if spec.job_name:
        checks.check_name(spec.job_name, "--job-name")


def request(spec: TrainSpec, job: str, base: str) -> dict[str, Any]:
    """The CreateTrainingJob parameters; `base` is s3://bucket/prefix/<name>."""
    channels = [_channel("config", f"{base}/{job}/config/")]
    if spec.data_dir is not None:
        channels.append(_channel("data", f"{base}/{job}/data/"))
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": spec.max_runtime_s}
    params: dict[str, Any] = {
        "TrainingJobName": job,
        "AlgorithmSpecification": {"TrainingImage": spec.image_uri, "TrainingInputMode": "File"},
        "RoleArn": spec.role_arn,
        "HyperParameters": {"config": CONFIG_FILE},
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": f"{base}/output"},
        "ResourceConfig": {"InstanceType": spec.instance_type, "InstanceCount": 1, "VolumeSizeInGB": spec.volume_gb},
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": spec.spot,
        "Tags": [{"Key": "domain-expert:run", "Value": base.rsplit("/", 1)[-1]}],
    }
    if spec.spot:
        stopping["MaxWaitTimeInSeconds"] = spec.max_wait_s or 2 * spec.max_runtime_s
        params["CheckpointConfig"] = {"S3Uri": f"{base}/{job}/checkpoints/", "LocalPath": "/opt/ml/checkpoints"}
    return params


def _channel(name: str, uri: str) -> dict[str, Any]:
    source = {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
    return {"ChannelName": name, "DataSource": {"S3DataSource": source}, "InputMode": "File"}


def train(ctx: AwsContext, cfg: Any, spec: TrainSpec) -> dict[str, Any]:
    """Upload config (+ data) and create the job. Returns the request's parameters (with the job's name)."""
    from domain_expert.config import dump_config

    check_spec(ctx, spec)
    ctx.require_credentials()
    checks.check_bucket(ctx, spec.bucket)
    prefix = checks.check_prefix(spec.prefix)
    job = spec.job_name or checks.job_name(cfg.name)
    base_key = f"{prefix}/{cfg.name}" if prefix else cfg.name
    base = f"s3://{spec.bucket}/{base_key}"
    params = request(spec, job, base)
    # the container sets its own output_dir; a local path would mean nothing there
    text = dump_config(cfg.model_copy(update={"output_dir": None}))
    with ctx.undo_on_failure(), tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / CONFIG_FILE
        local.write_text(text, encoding="utf-8")
        key = f"{base_key}/{job}/config/{CONFIG_FILE}"
        ctx.upload(local, spec.bucket, key, what="the config as resolved here")
        ctx.made(f"s3://{spec.bucket}/{key}", "s3", "delete_object", Bucket=spec.bucket, Key=key)
        if spec.data_dir is not None:
            upload_folder(ctx, spec.data_dir, spec.bucket, f"{base_key}/{job}/data")
        response = ctx.call("sagemaker", "create_training_job", **params) or {}
    params["TrainingJobArn"] = response.get("TrainingJobArn")
    return params

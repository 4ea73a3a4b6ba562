"""`aws deploy`: a SageMaker real-time endpoint serving a run's sagemaker export (model.tar.gz) in our container.

Three requests after the upload, each resource registered for cleanup: CreateModel (image + model data + role),
CreateEndpointConfig (one variant, one instance), CreateEndpoint. SageMaker then runs `docker run IMAGE serve`, which
starts `domain-expert serve /opt/ml/model` on port 8080 (GET /ping, POST /invocations: serve/routes_sagemaker.py).
The endpoint's name is checked first (DescribeEndpoint): an existing endpoint is refused before anything is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain_expert.aws import checks
from domain_expert.aws.exports import sagemaker_tarball
from domain_expert.aws.session import AwsContext
from domain_expert.errors import AwsError


@dataclass
class DeploySpec:
    bucket: str
    role_arn: str
    image_uri: str
    prefix: str = "domain-expert"
    instance_type: str = "ml.g5.xlarge"
    instance_count: int = 1
    endpoint_name: str | None = None


def deploy(ctx: AwsContext, run: Path, spec: DeploySpec) -> dict[str, str]:
    ctx.check_region("sagemaker")
    checks.check_role_arn(spec.role_arn)
    checks.check_instance_type(ctx, "CreateEndpointConfig", spec.instance_type)
    if not spec.image_uri:
        raise AwsError("no serving image", where="--image-uri", fix="push deploy/sagemaker/Dockerfile's image to ECR")
    name = run.resolve().name if run.is_dir() else run.resolve().parent.name
    endpoint = checks.check_name(spec.endpoint_name or checks.job_name(name), "--endpoint-name")
    tarball = sagemaker_tarball(run)  # local export first: a failed export creates nothing
    ctx.require_credentials()
    checks.check_bucket(ctx, spec.bucket)
    if ctx.call("sagemaker", "describe_endpoint", missing_ok=True, EndpointName=endpoint):
        raise AwsError(f"endpoint '{endpoint}' already exists", where="--endpoint-name",
                       fix="choose another name, or delete it first (`aws sagemaker delete-endpoint`)")  # fmt: skip
    prefix = checks.check_prefix(spec.prefix)
    model = checks.job_name(endpoint)
    key = f"{prefix + '/' if prefix else ''}{name}/sagemaker/{model}/model.tar.gz"
    with ctx.undo_on_failure():
        ctx.upload(tarball, spec.bucket, key)
        ctx.made(f"s3://{spec.bucket}/{key}", "s3", "delete_object", Bucket=spec.bucket, Key=key)
        ctx.call("sagemaker", "create_model", **model_request(model, spec, f"s3://{spec.bucket}/{key}"))
        ctx.made(f"sagemaker model {model}", "sagemaker", "delete_model", ModelName=model)
        ctx.call("sagemaker", "create_endpoint_config", **config_request(model, spec))
        ctx.made(f"sagemaker endpoint config {model}", "sagemaker", "delete_endpoint_config", EndpointConfigName=model)
        ctx.call("sagemaker", "create_endpoint", EndpointName=endpoint, EndpointConfigName=model)
    return {"endpoint": endpoint, "model": model, "endpoint_config": model, "model_data": f"s3://{spec.bucket}/{key}"}


def model_request(model: str, spec: DeploySpec, model_data: str) -> dict[str, Any]:
    container = {"Image": spec.image_uri, "ModelDataUrl": model_data, "Environment": {"DOMAIN_EXPERT_RUN": model}}
    return {"ModelName": model, "PrimaryContainer": container, "ExecutionRoleArn": spec.role_arn}


def config_request(model: str, spec: DeploySpec) -> dict[str, Any]:
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": model,
        "InstanceType": spec.instance_type,
        "InitialInstanceCount": spec.instance_count,
        "InitialVariantWeight": 1.0,
    }
    return {"EndpointConfigName": model, "ProductionVariants": [variant]}

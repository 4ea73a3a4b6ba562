"""Checks that run before any resource is created, so a bad input never leaves half a deployment behind.

Instance types are checked against botocore's service model (the enum of the operation's InstanceType shape):
offline, exact, and as current as the installed botocore, with no hand-kept list to go stale. The bucket is checked
with HeadBucket (the one check that needs a request). Names follow SageMaker's and Bedrock's documented patterns.
"""

from __future__ import annotations

import difflib
import re
from datetime import UTC, datetime

from domain_expert.aws.session import AwsContext
from domain_expert.errors import AwsError

# operation -> the path to its InstanceType member
INSTANCE_SHAPES = {
    "CreateTrainingJob": ("ResourceConfig", "InstanceType"),
    "CreateEndpointConfig": ("ProductionVariants", "InstanceType"),
}
ROLE_ARN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/[\w+=,.@\-/]{1,512}$")
NAME_MAX = 63


def instance_types(ctx: AwsContext, operation: str) -> list[str]:
    model = ctx.session._session.get_service_model("sagemaker")
    shape = model.operation_model(operation).input_shape
    for part in INSTANCE_SHAPES[operation]:
        shape = shape.members[part]
        if shape.type_name == "list":
            shape = shape.member
    return list(shape.enum)


def check_instance_type(ctx: AwsContext, operation: str, value: str, flag: str = "--instance-type") -> None:
    allowed = instance_types(ctx, operation)
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else f"e.g. {', '.join(allowed[:4])}"
        raise AwsError(
            f"'{value}' is not an instance type SageMaker accepts for {operation}", where=flag,
            fix=f"{hint} (the full list: botocore's sagemaker model, {operation} InstanceType)",
        )  # fmt: skip


def check_role_arn(value: str) -> None:
    if not ROLE_ARN.match(value):
        raise AwsError(
            f"'{value}' is not an IAM role ARN", where="--role-arn",
            fix="pass arn:aws:iam::<12-digit account>:role/<name> of a role the service may assume (docs/aws.md)",
        )  # fmt: skip


def check_bucket(ctx: AwsContext, bucket: str) -> None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
        raise AwsError(f"'{bucket}' is not a valid S3 bucket name", where="--bucket",
                       fix="3-63 lowercase letters, digits, dots and hyphens")  # fmt: skip
    if ctx.call("s3", "head_bucket", missing_ok=True, Bucket=bucket) is None:
        raise AwsError(
            f"bucket '{bucket}' does not exist", where="--bucket",
            fix=f"create it (`aws s3 mb s3://{bucket} --region {ctx.region}`) or pass an existing one",
        )  # fmt: skip


def check_name(value: str, flag: str) -> str:
    if len(value) > NAME_MAX or not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*", value):
        raise AwsError(f"'{value}' is not a valid name", where=flag,
                       fix="letters, digits and single hyphens, at most 63 characters")  # fmt: skip
    return value


def job_name(base: str, now: datetime | None = None) -> str:
    """`base` made a valid SageMaker/Bedrock name, with a UTC timestamp so each job is new."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"-+", "-", re.sub(r"[^a-zA-Z0-9]", "-", base)).strip("-") or "domain-expert"
    return f"{slug[: NAME_MAX - len(stamp) - 1].rstrip('-')}-{stamp}"


def check_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    if any(part in {"", ".", ".."} for part in prefix.split("/")) and prefix:
        raise AwsError(f"'{prefix}' is not a usable key prefix", where="--prefix", fix="e.g. domain-expert/runs")
    return prefix

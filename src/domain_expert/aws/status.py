"""`aws status NAME|ARN`: what a training job, endpoint or Bedrock import job is doing, optionally until it is done.

An ARN says its kind (`training-job/`, `endpoint/`, `model-import-job/`); a bare name is looked up as each kind in
turn (a not-found answer moves on), so one command covers everything the other `aws` commands create.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from domain_expert.aws.session import AwsContext
from domain_expert.errors import AwsError


@dataclass(frozen=True)
class Kind:
    label: str
    service: str
    method: str
    param: str
    arn_marker: str
    status_key: str
    done: frozenset[str]
    good: frozenset[str]


KINDS = [
    Kind("training job", "sagemaker", "describe_training_job", "TrainingJobName", ":training-job/",
         "TrainingJobStatus", frozenset({"Completed", "Failed", "Stopped"}), frozenset({"Completed"})),
    Kind("endpoint", "sagemaker", "describe_endpoint", "EndpointName", ":endpoint/", "EndpointStatus",
         frozenset({"InService", "Failed", "OutOfService"}), frozenset({"InService"})),
    Kind("bedrock import job", "bedrock", "get_model_import_job", "jobIdentifier", ":model-import-job/", "status",
         frozenset({"Completed", "Failed"}), frozenset({"Completed"})),
]  # fmt: skip


def _lookup_value(kind: Kind, ref: str) -> str:
    # SageMaker describes by name; Bedrock takes the ARN itself
    if ref.startswith("arn:") and kind.service == "sagemaker":
        return ref.rsplit("/", 1)[-1]
    return ref


def find(ctx: AwsContext, ref: str) -> tuple[Kind, dict[str, Any]]:
    kinds = [k for k in KINDS if k.arn_marker in ref] if ref.startswith("arn:") else KINDS
    if not kinds:
        raise AwsError(
            f"'{ref}' is not the ARN of a training job, endpoint or model import job",
            where="NAME|ARN",
            fix="pass the name or ARN printed by `aws train`, `aws deploy` or `aws bedrock-import`",
        )
    for service in dict.fromkeys(k.service for k in kinds):
        ctx.check_region(service)
    ctx.require_credentials()
    for kind in kinds:
        found = ctx.call(kind.service, kind.method, missing_ok=True, **{kind.param: _lookup_value(kind, ref)})
        if found or ctx.dry_run:
            if ctx.dry_run and kind is not kinds[-1]:
                continue  # print every lookup a real run may make
            return kind, found or {}
    raise AwsError(f"no training job, endpoint or model import job named '{ref}' in {ctx.region}", where="NAME|ARN",
                   fix="check the name and --region")  # fmt: skip


def line(kind: Kind, ref: str, d: dict[str, Any]) -> str:
    status = d.get(kind.status_key, "?")
    extra = [d.get("SecondaryStatus")] if kind.label == "training job" else []
    reason = d.get("FailureReason") or d.get("failureMessage")
    out = f"{kind.label} {ref}: {status}" + (f" ({extra[0]})" if extra and extra[0] else "")
    if reason:
        out += f" — {reason}"
    artifacts = (d.get("ModelArtifacts") or {}).get("S3ModelArtifacts") or d.get("importedModelArn")
    if artifacts and status in kind.good:
        out += f" — {artifacts}"
    return out


def status(
    ctx: AwsContext,
    ref: str,
    *,
    wait: bool = False,
    poll_s: float = 30.0,
    echo: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, bool]:
    """Print the status line (each poll with --wait); return (status, whether it ended well or is still going)."""
    kind, d = find(ctx, ref)
    if ctx.dry_run:
        return "dry-run", True
    t0 = clock()
    while True:
        state = str(d.get(kind.status_key, "?"))
        elapsed = int(clock() - t0)
        echo(line(kind, ref, d) + (f" [{elapsed // 60}m{elapsed % 60:02d}s]" if wait else ""))
        if not wait or state in kind.done:
            return state, state in kind.good or state not in kind.done
        time.sleep(poll_s)
        d = ctx.call(kind.service, kind.method, **{kind.param: _lookup_value(kind, ref)}) or {}

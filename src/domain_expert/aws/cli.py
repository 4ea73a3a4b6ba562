"""`domain-expert aws ...`: the parser and handlers of the AWS verbs (the top-level cli.py holds one entry for it).

Kept light (argparse only) so `domain-expert --help` stays instant: boto3 and every stage are imported by the handler
that needs them. Each subcommand takes --region, --profile, --endpoint-url (e.g. a local moto server; also
DOMAIN_EXPERT_AWS_ENDPOINT_URL) and --dry-run (print every request, in order, and make none).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

IMAGE_ENV = "DOMAIN_EXPERT_IMAGE_URI"


def _context(args: argparse.Namespace):  # -> AwsContext
    from domain_expert.aws.session import AwsContext

    return AwsContext(region=args.region, profile=args.profile, endpoint_url=args.endpoint_url, dry_run=args.dry_run)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small: use 1 or more")
    return value


def cmd_upload(args: argparse.Namespace) -> int:
    from domain_expert.aws import checks, transfer

    ctx = _context(args)
    ctx.check_region("s3")
    transfer.check_uploadable(args.path)
    ctx.require_credentials()
    checks.check_bucket(ctx, args.bucket)
    prefix = checks.check_prefix(args.prefix)
    name = transfer.upload_name(args.path)
    key = f"{prefix}/{name}" if prefix else name
    with ctx.undo_on_failure():
        manifest = transfer.upload_folder(ctx, args.path, args.bucket, key, 
                                          include_checkpoints=args.include_checkpoints)  # fmt: skip
    size = sum(f["bytes"] for f in manifest["files"]) / 1e6
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"[domain-expert] {verb} {len(manifest['files'])} files ({size:.1f} MB) to s3://{args.bucket}/{key}/ "
          f"(manifest: {transfer.MANIFEST})")  # fmt: skip
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from domain_expert.aws.training import TrainSpec, train
    from domain_expert.cli import _split_config
    from domain_expert.config import load_config

    config, overrides = _split_config(args.config)
    cfg = load_config(config or "medical-terms", overrides)
    data = args.data
    if data is None and (cfg.run_dir / "data" / "manifest.json").is_file():
        data = cfg.run_dir / "data"
    spec = TrainSpec(
        bucket=args.bucket, role_arn=args.role_arn, image_uri=args.image_uri or os.environ.get(IMAGE_ENV, ""),
        prefix=args.prefix, instance_type=args.instance_type, spot=args.spot, max_runtime_s=args.max_runtime_s,
        max_wait_s=args.max_wait_s, volume_gb=args.volume_gb, data_dir=data, job_name=args.job_name,
    )  # fmt: skip
    params = train(_context(args), cfg, spec)
    verb = "would create" if args.dry_run else "created"
    print(f"[domain-expert] {verb} training job {params['TrainingJobName']} "
          f"({'spot, ' if args.spot else ''}{args.instance_type}); output: "
          f"{params['OutputDataConfig']['S3OutputPath']}; follow it: domain-expert aws status "
          f"{params['TrainingJobName']} --wait")  # fmt: skip
    if not data:
        print("[domain-expert] no prepared data here: the job prepares it (its sources must be reachable from there)")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from domain_expert.aws.hosting import DeploySpec, deploy

    spec = DeploySpec(
        bucket=args.bucket, role_arn=args.role_arn, image_uri=args.image_uri or os.environ.get(IMAGE_ENV, ""),
        prefix=args.prefix, instance_type=args.instance_type, instance_count=args.instance_count,
        endpoint_name=args.endpoint_name,
    )  # fmt: skip
    out = deploy(_context(args), args.run, spec)
    verb = "would create" if args.dry_run else "creating"
    print(
        f"[domain-expert] {verb} endpoint {out['endpoint']} (model and endpoint config {out['model']}); "
        f"it bills per instance-hour until deleted. Follow it: domain-expert aws status {out['endpoint']} --wait"
    )
    return 0


def cmd_bedrock_import(args: argparse.Namespace) -> int:
    from domain_expert.aws.bedrock import ImportSpec, bedrock_import

    spec = ImportSpec(bucket=args.bucket, role_arn=args.role_arn, prefix=args.prefix, model_name=args.model_name,
                      job_name=args.job_name)  # fmt: skip
    out = bedrock_import(_context(args), args.run, spec)
    verb = "would start" if args.dry_run else "started"
    print(f"[domain-expert] {verb} import job {out['jobName']} -> model {out['importedModelName']}; follow it: "
          f"domain-expert aws status {out.get('jobArn') or out['jobName']} --wait")  # fmt: skip
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from domain_expert.aws.status import status

    _, ok = status(_context(args), args.ref, wait=args.wait, poll_s=args.poll_s)
    return 0 if ok else 1


def cmd_download(args: argparse.Namespace) -> int:
    from domain_expert.aws.artifacts import download

    out = download(_context(args), args.job, args.to, overwrite=args.overwrite)
    if not args.dry_run:
        print(f"[domain-expert] downloaded {args.job}'s model artifacts into {out}")
    return 0


def _common(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--region", help="AWS region (default: AWS_REGION / your profile's)")
    sp.add_argument("--profile", help="named profile from ~/.aws (default: the standard credential chain)")
    sp.add_argument("--endpoint-url", help="send every request here (e.g. a local moto server); "
                    "also DOMAIN_EXPERT_AWS_ENDPOINT_URL")  # fmt: skip
    sp.add_argument("--dry-run", action="store_true", help="print each request (service, operation, JSON "
                    "parameters) in order, and make none")  # fmt: skip


def _bucket(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--bucket", required=True, help="an existing S3 bucket in the region")
    sp.add_argument("--prefix", default="domain-expert", help="key prefix in the bucket (default: domain-expert)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="aws_verb", required=True, metavar="AWS_VERB")

    def add(name: str, help_: str, fn) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(aws_func=fn)
        return sp

    sp = add("upload", "upload a run folder or prepared data to s3://BUCKET/PREFIX/<name>/ with a sha256 manifest",
             cmd_upload)  # fmt: skip
    sp.add_argument("path", type=Path, metavar="RUN|DATA_FOLDER")
    _bucket(sp)
    sp.add_argument("--include-checkpoints", action="store_true", help="also upload finetune/checkpoints/")

    sp = add("train", "run `finetune` on this config as a SageMaker training job (our container)", cmd_train)
    sp.add_argument("config", nargs="+", metavar="CONFIG [key=value ...]", help="a YAML config or shipped name")
    _bucket(sp)
    sp.add_argument("--role-arn", required=True, help="IAM role SageMaker assumes (S3 read/write, ECR pull, logs)")
    sp.add_argument("--image-uri", help=f"the training image in ECR (default: ${IMAGE_ENV})")
    sp.add_argument("--instance-type", default="ml.g5.2xlarge", help="default: ml.g5.2xlarge (1x A10G, 24 GB)")
    sp.add_argument("--spot", action="store_true", help="managed spot training (cheaper, may be interrupted; resumes)")
    sp.add_argument("--max-runtime-s", type=_positive, default=4 * 3600, help="stop after this long (default 4 h)")
    sp.add_argument("--max-wait-s", type=_positive, help="spot only: give up waiting for capacity (default 2x runtime)")
    sp.add_argument("--volume-gb", type=_positive, default=50, help="the instance's disk (default 50)")
    sp.add_argument("--data", type=Path, help="prepared data folder (default: <run>/data when prepared)")
    sp.add_argument("--job-name", help="default: <config name>-<UTC timestamp>")

    sp = add("deploy", "serve a run's sagemaker export (model.tar.gz) on a SageMaker endpoint", cmd_deploy)
    sp.add_argument("run", type=Path, metavar="RUN", help="run folder, its sagemaker export, or a model.tar.gz")
    _bucket(sp)
    sp.add_argument("--role-arn", required=True, help="IAM role the endpoint runs as (S3 read, ECR pull, logs)")
    sp.add_argument("--image-uri", help=f"the serving image in ECR (default: ${IMAGE_ENV})")
    sp.add_argument("--instance-type", default="ml.g5.xlarge", help="default: ml.g5.xlarge")
    sp.add_argument("--instance-count", type=_positive, default=1)
    sp.add_argument("--endpoint-name", help="default: <run name>-<UTC timestamp>")

    sp = add("bedrock-import", "validate, upload and import a run's bedrock export (Custom Model Import)",
             cmd_bedrock_import)  # fmt: skip
    sp.add_argument("run", type=Path, metavar="RUN", help="run folder or its bedrock export folder")
    _bucket(sp)
    sp.add_argument("--role-arn", required=True, help="IAM role Bedrock assumes to read the bucket")
    sp.add_argument("--model-name", help="imported model's name (default: <run name>-<UTC timestamp>)")
    sp.add_argument("--job-name", help="default: <run name>-import-<UTC timestamp>")

    sp = add("status", "state of a training job, endpoint or Bedrock import job (by name or ARN)", cmd_status)
    sp.add_argument("ref", metavar="NAME|ARN")
    sp.add_argument("--wait", action="store_true", help="poll until it finishes, one progress line per poll")
    sp.add_argument("--poll-s", type=float, default=30.0, help="seconds between polls (default 30)")

    sp = add("download", "a finished training job's model artifacts -> a local run folder", cmd_download)
    sp.add_argument("job", metavar="JOB", help="training job name or ARN")
    sp.add_argument("--to", type=Path, required=True, metavar="RUN", help="run folder to create")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing folder")

    for action in sub.choices.values():
        _common(action)

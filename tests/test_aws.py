"""`domain-expert aws ...` against moto's server on 127.0.0.1 (nothing talks to real AWS), plus the container's
`train` on a temporary /opt/ml tree with the tiny model. Moto has no Bedrock CreateModelImportJob /
GetModelImportJob, so those two calls go through botocore's Stubber on the same client; S3 stays on moto."""

from __future__ import annotations

import io
import json
import shutil
import socket
import tarfile
from pathlib import Path

import pytest

from conftest import tiny_overrides

pytest.importorskip("boto3")
pytest.importorskip("moto")

from domain_expert.aws.session import ENDPOINT_ENV, AwsContext  # noqa: E402
from domain_expert.cli import main  # noqa: E402
from domain_expert.errors import AwsError  # noqa: E402
from domain_expert.fsutil import sha256_file  # noqa: E402

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY-SECRET-NOT-REAL"
ROLE = "arn:aws:iam::123456789012:role/DomainExpertRole"
# moto checks CreateEndpointConfig against an older instance list than botocore's (no ml.g5): use one both know
MOTO_ENDPOINT_TYPE = "ml.g4dn.2xlarge"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/domain-expert:test"


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws(monkeypatch, moto_url, tmp_path):
    """Fake credentials (the standard chain reads them from the environment), moto as every client's endpoint."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE1234")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv(ENDPOINT_ENV, moto_url)
    return moto_url


def client(service: str):
    import os

    import boto3

    return boto3.client(service, region_name="us-east-1", endpoint_url=os.environ[ENDPOINT_ENV])


_buckets = iter(range(10_000))


def new_bucket() -> str:
    name = f"de-test-{next(_buckets)}"
    client("s3").create_bucket(Bucket=name)
    return name


def keys(bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client("s3").list_objects_v2(Bucket=bucket).get("Contents", []))


def fake_run(root: Path) -> Path:
    """A run folder's shape (stage markers, a checkpoint, a crashed stage's leftovers), with random bytes."""
    import os

    run = root / "demo-run"
    files = {
        "config.yaml": b"name: demo-run\n",
        "data/manifest.json": json.dumps({"stage": "prepare"}).encode(),
        "data/train.jsonl": b'{"q": "What is anemia?"}\n',
        "finetune/stage.json": json.dumps({"stage": "finetune"}).encode(),
        "finetune/adapter_model.safetensors": os.urandom(3000),
        "finetune/checkpoints/step-000002/optimizer.pt": os.urandom(500),
        ".export.partial-x/half.bin": b"crashed",
    }
    for rel, data in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
    return run


def test_boto3_is_optional(monkeypatch):
    import subprocess
    import sys

    code = "import sys; from domain_expert.cli import build_parser; build_parser(); print('boto3' in sys.modules)"
    env = {"PYTHONPATH": str(Path(__file__).parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout.strip() == (
        "False"
    )
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if not installed
    with pytest.raises(AwsError, match=r"pip install 'domain-expert\[aws\]'"):
        AwsContext(region="us-east-1").session  # noqa: B018


def test_upload_layout_and_round_trip(aws, tmp_path, capsys):
    from domain_expert.aws.transfer import download_folder

    bucket, run = new_bucket(), fake_run(tmp_path)
    assert main(["aws", "upload", str(run), "--bucket", bucket, "--prefix", "team/runs"]) == 0
    assert "uploaded 5 files" in capsys.readouterr().out
    base = "team/runs/demo-run"
    expected = ["config.yaml", "data/manifest.json", "data/train.jsonl", "finetune/adapter_model.safetensors",
                "finetune/stage.json", "upload-manifest.json"]  # fmt: skip
    assert keys(bucket) == [f"{base}/{k}" for k in expected]  # no checkpoints, no half-written folder
    manifest = json.loads(client("s3").get_object(Bucket=bucket, Key=f"{base}/upload-manifest.json")["Body"].read())
    assert {e["key"]: e["sha256"] for e in manifest["files"]} == {
        f"{base}/{k}": sha256_file(run / k) for k in expected[:-1]
    }
    back = tmp_path / "back"
    download_folder(AwsContext(), bucket, base, back)
    for rel in expected[:-1]:
        assert sha256_file(back / rel) == sha256_file(run / rel), rel
    # a prepared data folder alone lands beside it as <run>/data; checkpoints only when asked
    assert main(["aws", "upload", str(run / "data"), "--bucket", bucket, "--prefix", "p"]) == 0
    assert main(["aws", "upload", str(run), "--bucket", bucket, "--prefix", "p", "--include-checkpoints"]) == 0
    got = keys(bucket)
    assert "p/demo-run/data/train.jsonl" in got
    assert "p/demo-run/finetune/checkpoints/step-000002/optimizer.pt" in got


def _train_args(tmp_path: Path, bucket: str, *extra: str) -> list[str]:
    run = tmp_path / "trun"
    (run / "data").mkdir(parents=True, exist_ok=True)
    (run / "data" / "manifest.json").write_text(json.dumps({"stage": "prepare"}))
    (run / "data" / "train.jsonl").write_text('{"q": 1}\n')
    return ["aws", "train", "medical-terms", "name=trun", f"output_dir={run}", "train.max_steps=7",
            "--bucket", bucket, "--role-arn", ROLE, "--image-uri", IMAGE, *extra]  # fmt: skip


def test_train_request_as_moto_recorded_it(aws, tmp_path):
    from domain_expert.config import load_config

    bucket = new_bucket()
    args = _train_args(tmp_path, bucket, "--spot", "--max-runtime-s", "3600", "--max-wait-s", "7200",
                       "--job-name", "trun-job", "--instance-type", "ml.g5.4xlarge")  # fmt: skip
    assert main(args) == 0
    job = client("sagemaker").describe_training_job(TrainingJobName="trun-job")
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert job["RoleArn"] == ROLE
    assert job["HyperParameters"] == {"config": "config.yaml"}
    base = f"s3://{bucket}/domain-expert/trun"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels == {"config": f"{base}/trun-job/config/", "data": f"{base}/trun-job/data/"}
    assert job["OutputDataConfig"]["S3OutputPath"] == f"{base}/output"
    assert job["ResourceConfig"]["InstanceType"] == "ml.g5.4xlarge"
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert job["CheckpointConfig"]["S3Uri"] == f"{base}/trun-job/checkpoints/"
    # the config channel holds the config as validated here, without the local output folder
    got = keys(bucket)
    assert "domain-expert/trun/trun-job/data/train.jsonl" in got
    text = client("s3").get_object(Bucket=bucket, Key="domain-expert/trun/trun-job/config/config.yaml")["Body"].read()
    cfg_path = tmp_path / "uploaded.yaml"
    cfg_path.write_bytes(text)
    cfg = load_config(cfg_path)
    assert (cfg.name, cfg.train.max_steps, cfg.output_dir) == ("trun", 7, None)


def _fake_exports(monkeypatch, *, valid: bool = True) -> dict[str, int]:
    """Stand-ins for export.export_target / validate_bedrock (the export helper's interface)."""
    import domain_expert.export as export

    calls = {"export": 0, "validate": 0}

    def export_target(run_dir, target, out=None, **opts):
        calls["export"] += 1
        out = Path(out or Path(run_dir) / f"export-{target}")
        out.mkdir(parents=True, exist_ok=True)
        if target == "sagemaker":
            with tarfile.open(out / "model.tar.gz", "w:gz") as tar:
                data = b'{"model_type": "llama"}'
                info = tarfile.TarInfo("export/config.json")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        else:
            (out / "config.json").write_text('{"model_type": "llama"}')
            (out / "model.safetensors").write_bytes(b"\0" * 64)
            (out / "validation.json").write_text(json.dumps({"ok": valid}))
        return out

    def validate_bedrock(folder):
        calls["validate"] += 1
        if not json.loads((Path(folder) / "validation.json").read_text())["ok"]:
            raise ValueError("architecture 'gpt_neox' is not supported by Custom Model Import")
        return {"ok": True}

    monkeypatch.setattr(export, "export_target", export_target, raising=False)
    monkeypatch.setattr(export, "validate_bedrock", validate_bedrock, raising=False)
    return calls


def test_deploy_creates_model_config_endpoint(aws, tmp_path, monkeypatch, capsys):
    _fake_exports(monkeypatch)
    bucket, run = new_bucket(), fake_run(tmp_path)
    args = ["aws", "deploy", str(run), "--bucket", bucket, "--role-arn", ROLE, "--image-uri", IMAGE,
            "--instance-type", MOTO_ENDPOINT_TYPE, "--endpoint-name", "demo-ep"]  # fmt: skip
    assert main(args) == 0
    sm = client("sagemaker")
    endpoint = sm.describe_endpoint(EndpointName="demo-ep")
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    variant = config["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == (MOTO_ENDPOINT_TYPE, 1)
    model = sm.describe_model(ModelName=variant["ModelName"])
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["ExecutionRoleArn"] == ROLE
    data_key = model["PrimaryContainer"]["ModelDataUrl"].removeprefix(f"s3://{bucket}/")
    assert data_key in keys(bucket) and data_key.endswith("demo-run/sagemaker/" + variant["ModelName"] +
                                                          "/model.tar.gz")  # fmt: skip
    capsys.readouterr()
    assert main(["aws", "status", "demo-ep", "--wait", "--poll-s", "0"]) == 0
    assert "endpoint demo-ep: InService" in capsys.readouterr().out
    # the same name again is refused before anything is uploaded or created
    before = keys(bucket)
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert keys(bucket) == before


def test_cleanup_after_midway_failure(aws, tmp_path, monkeypatch):
    from botocore.exceptions import ClientError

    from domain_expert.aws.hosting import DeploySpec, deploy

    _fake_exports(monkeypatch)
    bucket, run = new_bucket(), fake_run(tmp_path)
    ctx = AwsContext(region="us-east-1")

    def refuse(**kwargs):
        error = {"Code": "ResourceLimitExceeded", "Message": "account quota for ml.g5.xlarge endpoints is 0"}
        raise ClientError({"Error": error}, "CreateEndpoint")

    ctx.client("sagemaker").meta.events.register("before-call.sagemaker.CreateEndpoint", refuse)
    with pytest.raises(AwsError) as err:
        spec = DeploySpec(bucket, ROLE, IMAGE, instance_type=MOTO_ENDPOINT_TYPE, endpoint_name="doomed-ep")
        deploy(ctx, run, spec)
    msg = err.value.one_line()
    assert "ResourceLimitExceeded" in msg and "cleaned up" in msg
    created = [m for m in client("sagemaker").list_models()["Models"] if m["ModelName"].startswith("doomed-ep")]
    assert created == []
    assert "sagemaker model doomed-ep-" in msg and "sagemaker endpoint config doomed-ep-" in msg
    assert keys(bucket) == []  # the uploaded model.tar.gz is gone too
    assert [c for c in client("sagemaker").list_endpoint_configs()["EndpointConfigs"]
            if c["EndpointConfigName"].startswith("doomed-ep")] == []  # fmt: skip


def test_bedrock_import_validates_then_uploads_then_imports(aws, tmp_path, monkeypatch):
    from botocore.stub import Stubber

    from domain_expert.aws.bedrock import ImportSpec, bedrock_import
    from domain_expert.aws.status import status

    calls = _fake_exports(monkeypatch)
    bucket, run = new_bucket(), fake_run(tmp_path)
    ctx = AwsContext(region="us-east-1")
    arn = "arn:aws:bedrock:us-east-1:123456789012:model-import-job/abc123"
    expected = {
        "jobName": "demo-import",
        "importedModelName": "demo-model",
        "roleArn": ROLE,
        "modelDataSource": {"s3DataSource": {"s3Uri": f"s3://{bucket}/domain-expert/demo-run/bedrock/demo-import/"}},
        "jobTags": [{"key": "domain-expert:run", "value": "demo-run"}],
    }
    with Stubber(ctx.client("bedrock")) as stub:
        stub.add_response("create_model_import_job", {"jobArn": arn}, expected)
        stub.add_response("get_model_import_job", {"jobArn": arn, "jobName": "demo-import", "status": "InProgress"},
                          {"jobIdentifier": arn})  # fmt: skip
        spec = ImportSpec(bucket=bucket, role_arn=ROLE, model_name="demo-model", job_name="demo-import")
        out = bedrock_import(ctx, run, spec)
        lines: list[str] = []
        state, _ = status(ctx, arn, echo=lines.append)
        stub.assert_no_pending_responses()
    assert out["jobArn"] == arn and state == "InProgress" and lines == [f"bedrock import job {arn}: InProgress"]
    assert calls == {"export": 1, "validate": 1}
    assert "domain-expert/demo-run/bedrock/demo-import/config.json" in keys(bucket)


def test_bedrock_invalid_export_uploads_nothing(aws, tmp_path, monkeypatch, capsys):
    _fake_exports(monkeypatch, valid=False)
    bucket, run = new_bucket(), fake_run(tmp_path)
    assert main(["aws", "bedrock-import", str(run), "--bucket", bucket, "--role-arn", ROLE]) == 2
    err = capsys.readouterr().err
    assert "fails Bedrock's checks" in err and "gpt_neox" in err and "nothing was uploaded" in err
    assert keys(bucket) == []


def test_dry_run_prints_requests_and_makes_none(aws, tmp_path, monkeypatch, capsys):
    _fake_exports(monkeypatch)
    bucket, run = new_bucket(), fake_run(tmp_path)
    # no credentials needed: nothing is sent
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    common = ["--bucket", bucket, "--role-arn", ROLE, "--dry-run"]
    runs = {
        "upload": (["aws", "upload", str(run), "--bucket", bucket, "--dry-run"], ["s3 HeadBucket", "s3 PutObject"]),
        "train": (_train_args(tmp_path, bucket, "--dry-run", "--job-name", "dry-job"),
                  ["s3 HeadBucket", "s3 PutObject", "sagemaker CreateTrainingJob", '"TrainingJobName": "dry-job"']),
        "deploy": (["aws", "deploy", str(run), *common, "--image-uri", IMAGE, "--endpoint-name", "dry-ep"],
                   ["sagemaker DescribeEndpoint", "sagemaker CreateModel", "sagemaker CreateEndpointConfig",
                    "sagemaker CreateEndpoint", '"EndpointName": "dry-ep"']),
        "bedrock": (["aws", "bedrock-import", str(run), *common, "--job-name", "dry-import"],
                    ["s3 PutObject", "bedrock CreateModelImportJob", '"jobName": "dry-import"']),
        "status": (["aws", "status", "some-job", "--dry-run"],
                   ["sagemaker DescribeTrainingJob", "sagemaker DescribeEndpoint", "bedrock GetModelImportJob"]),
        "download": (["aws", "download", "some-job", "--to", str(tmp_path / "dl"), "--dry-run"],
                     ["sagemaker DescribeTrainingJob"]),
    }  # fmt: skip
    for name, (args, wanted) in runs.items():
        assert main(args) == 0, name
        out = capsys.readouterr().out
        headers = [ln for ln in out.splitlines() if ln.startswith("[dry-run] request ")]
        assert headers and [int(h.split()[2].rstrip(":")) for h in headers] == list(range(1, len(headers) + 1))
        for w in wanted:
            assert w in out, (name, w)
        # each request's parameters are JSON right under its header
        first = out.split(headers[0], 1)[1].split("[dry-run]", 1)[0].split("\n[domain-expert]", 1)[0]
        assert isinstance(json.loads(first), dict), name
        order = [out.index(w) for w in wanted if " " in w and not w.startswith('"')]
        assert order == sorted(order), name
    assert keys(bucket) == []
    sm = client("sagemaker")
    assert "dry-ep" not in [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]
    assert "dry-job" not in [j["TrainingJobName"] for j in sm.list_training_jobs()["TrainingJobSummaries"]]
    assert not (tmp_path / "dl").exists()


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("no credentials", [], "no AWS credentials found"),
        ("region", ["--region", "us-east-7"], "'us-east-7' is not a region where sagemaker is offered"),
        ("bucket", ["--bucket", "no-such-bucket-here"], "bucket 'no-such-bucket-here' does not exist"),
        ("instance", ["--instance-type", "ml.g5.2xlarg"], "did you mean ml.g5.2xlarge"),
        ("role", ["--role-arn", "DomainExpertRole"], "is not an IAM role ARN"),
        ("spot wait", ["--spot", "--max-runtime-s", "600", "--max-wait-s", "60"], "at least the runtime limit"),
    ],
)
def test_bad_input_is_refused_before_anything_is_created(aws, tmp_path, monkeypatch, capsys, case, extra, message):
    if case == "no credentials":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    bucket = new_bucket()
    args = _train_args(tmp_path, bucket, "--job-name", f"bad-{case.replace(' ', '-')}")
    # argparse keeps the last of a repeated option: the bad value wins
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err, err
    if case == "no credentials":
        assert "aws configure" in err
    assert keys(bucket) == []
    jobs = client("sagemaker").list_training_jobs()["TrainingJobSummaries"]
    assert f"bad-{case.replace(' ', '-')}" not in [j["TrainingJobName"] for j in jobs]


def test_deploy_instance_type_checked_against_endpoint_enum(aws, tmp_path, monkeypatch, capsys):
    calls = _fake_exports(monkeypatch)
    args = ["aws", "deploy", str(fake_run(tmp_path)), "--bucket", new_bucket(), "--role-arn", ROLE,
            "--image-uri", IMAGE, "--instance-type", "ml.g5.xxlarge"]  # fmt: skip
    assert main(args) == 2
    assert "not an instance type SageMaker accepts for CreateEndpointConfig" in capsys.readouterr().err
    assert calls["export"] == 0  # refused before the (slow) local export too


def test_credentials_never_written_or_printed(aws, tmp_path, monkeypatch, capsys):
    _fake_exports(monkeypatch)
    bucket, run = new_bucket(), fake_run(tmp_path)
    assert main(["aws", "upload", str(run), "--bucket", bucket]) == 0
    assert main(_train_args(tmp_path, bucket, "--job-name", "secret-job")) == 0
    assert main(["aws", "deploy", str(run), "--bucket", bucket, "--role-arn", ROLE, "--image-uri", IMAGE,
                 "--instance-type", MOTO_ENDPOINT_TYPE]) == 0  # fmt: skip
    assert main(_train_args(tmp_path, bucket, "--dry-run")) == 0
    assert main(["aws", "train", "medical-terms", "--bucket", "no-such-bucket-x", "--role-arn", ROLE,
                 "--image-uri", IMAGE]) == 2  # fmt: skip
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err and "AKIAFAKEFAKEFAKE1234" not in captured.out + captured.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    s3 = client("s3")
    for key in keys(bucket):
        assert SECRET.encode() not in s3.get_object(Bucket=bucket, Key=key)["Body"].read(), key


def test_container_train_then_download(aws, tmp_path, tiny_model_dir, tiny_data, capsys):
    """The container's `train` on an /opt/ml-like tree, its model folder as a training job's model.tar.gz on moto,
    and `aws download` back into a run folder that is the same, file for file."""
    from domain_expert.aws import container
    from domain_expert.config import dump_config, load_config

    root = tmp_path / "opt-ml"
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "data" / "config").mkdir(parents=True)
    overrides = [o for o in tiny_overrides(tiny_model_dir, tmp_path / "ignored", **{"train.max_steps": "2"})
                 if not o.startswith("output_dir=")]  # fmt: skip
    hp = {"config": "config.yaml", "overrides": json.dumps(overrides)}
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hp))
    (root / "input" / "data" / "config" / "config.yaml").write_text(dump_config(load_config()))
    shutil.copytree(tiny_data, root / "input" / "data" / "data")
    model = container.train(root)
    assert model == root / "model"
    for marker in ("finetune/stage.json", "export/stage.json", "data/manifest.json", "config.yaml"):
        assert (model / marker).is_file(), marker
    assert load_config(model / "config.yaml").train.max_steps == 2
    assert not (root / "output" / "failure").exists()

    bucket = new_bucket()
    assert main(_train_args(tmp_path, bucket, "--job-name", "ct-job")) == 0
    artifacts = client("sagemaker").describe_training_job(TrainingJobName="ct-job")["ModelArtifacts"]
    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:  # what SageMaker does with /opt/ml/model
        for path in sorted(model.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(model)), recursive=False)
    key = artifacts["S3ModelArtifacts"].removeprefix(f"s3://{bucket}/")
    client("s3").upload_file(str(tarball), bucket, key)
    local = tmp_path / "downloaded-run"
    assert main(["aws", "download", "ct-job", "--to", str(local)]) == 0
    originals = {p.relative_to(model): sha256_file(p) for p in model.rglob("*") if p.is_file()}
    got = {p.relative_to(local): sha256_file(p) for p in local.rglob("*") if p.is_file()}
    assert got.pop(Path("aws-training-job.json"))
    assert got == originals
    assert json.loads((local / "aws-training-job.json").read_text())["TrainingJobName"] == "ct-job"
    assert main(["aws", "download", "ct-job", "--to", str(local)]) == 2  # an existing folder is kept
    assert "already exists" in capsys.readouterr().err


def test_container_failure_is_reported_to_sagemaker(tmp_path):
    from domain_expert.aws import container

    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text('{"config": "missing.yaml"}')
    with pytest.raises(AwsError, match="no config in the 'config' channel"):
        container.train(tmp_path)
    assert "missing.yaml" in (tmp_path / "output" / "failure").read_text()
    assert container.main(["bogus"]) == 2


def test_real_exports_of_a_tiny_run_deploy_and_import(aws, tmp_path, tiny_tuned, capsys):
    """No stand-ins: the export package's own sagemaker and bedrock targets, made from a tuned run, go to moto
    (deploy) and to Bedrock's stubbed CreateModelImportJob after validate_bedrock passed."""
    from botocore.stub import ANY, Stubber

    from domain_expert.aws.bedrock import ImportSpec, bedrock_import

    run = tmp_path / "tiny-run"
    shutil.copytree(tiny_tuned, run)
    bucket = new_bucket()
    args = ["aws", "deploy", str(run), "--bucket", bucket, "--role-arn", ROLE, "--image-uri", IMAGE,
            "--instance-type", MOTO_ENDPOINT_TYPE, "--endpoint-name", "tiny-ep"]  # fmt: skip
    assert main(args) == 0
    assert (run / "export-sagemaker" / "model.tar.gz").is_file()  # exported on the way, then uploaded
    model_key = next(k for k in keys(bucket) if k.endswith("/model.tar.gz"))
    body = client("s3").get_object(Bucket=bucket, Key=model_key)["Body"].read()
    assert body == (run / "export-sagemaker" / "model.tar.gz").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert {"config.json", "serving.json", "model.safetensors"} <= set(tar.getnames())

    ctx = AwsContext(region="us-east-1")
    with Stubber(ctx.client("bedrock")) as stub:
        stub.add_response("create_model_import_job", {"jobArn": "arn:aws:bedrock:us-east-1:1:model-import-job/x"},
                          {"jobName": "tiny-import", "importedModelName": "tiny", "roleArn": ROLE,
                           "modelDataSource": ANY, "jobTags": ANY})  # fmt: skip
        bedrock_import(ctx, run, ImportSpec(bucket=bucket, role_arn=ROLE, model_name="tiny", job_name="tiny-import"))
    validation = json.loads((run / "export-bedrock" / "validation.json").read_text())
    assert validation["ok"] is True
    uploaded = {k.rsplit("/", 1)[-1] for k in keys(bucket) if "/bedrock/tiny-import/" in k}
    assert {"config.json", "tokenizer.json", "validation.json"} <= uploaded
    assert any(k.endswith(".safetensors") for k in uploaded)

"""Inside the SageMaker container: `docker run IMAGE train` and `docker run IMAGE serve` land here.

The image's entry point is `python -m domain_expert.aws.container` (deploy/sagemaker/Dockerfile), so SageMaker's
two verbs run our own stages, the same code as on a laptop:

- `train`: reads /opt/ml/input/config/hyperparameters.json (`config`: the YAML's file name in the `config` channel;
  optional `overrides`: a JSON list of key=value; `export`: "false" skips the export) and the channels under
  /opt/ml/input/data/<channel>; prepares the data unless a `data` channel holds prepared data; fine-tunes; exports;
  and leaves a run folder in /opt/ml/model (SageMaker tars it to model.tar.gz). When /opt/ml/checkpoints exists
  (spot training: SageMaker syncs it with S3 and restores it after an interruption) fine-tuning writes there and
  resumes from its newest checkpoint. A failure's message goes to /opt/ml/output/failure, which DescribeTrainingJob
  shows as FailureReason.
- `serve`: `domain-expert serve` on 0.0.0.0:8080 (GET /ping, POST /invocations) over /opt/ml/model's export/ when
  there is one (self-contained merged weights, no hub download at start-up), else the folder itself.

The root (/opt/ml) is `--root` or DOMAIN_EXPERT_SM_ROOT, so tests run `train` on a temporary tree.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from domain_expert.errors import AwsError, DomainExpertError

ROOT_ENV = "DOMAIN_EXPERT_SM_ROOT"
DEFAULT_ROOT = "/opt/ml"


def _root(root: str | Path | None) -> Path:
    return Path(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def hyperparameters(root: Path) -> dict[str, str]:
    path = root / "input" / "config" / "hyperparameters.json"
    if not path.exists():
        return {}
    try:
        hp = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AwsError(f"not valid JSON ({e})", where=str(path), fix="pass HyperParameters as a string map") from None
    return {str(k): str(v) for k, v in hp.items()}


def _overrides(hp: dict[str, str], path: Path) -> list[str]:
    try:
        value = json.loads(hp.get("overrides", "[]"))
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AwsError("hyperparameter 'overrides' must be a JSON list of key=value strings", where=str(path))
    return value


def train(root: str | Path | None = None) -> Path:
    """SageMaker's `train`: prepare if needed, fine-tune, export, into <root>/model. Returns that folder."""
    root = _root(root)
    try:
        return _train(root)
    except BaseException as e:
        msg = e.one_line() if isinstance(e, DomainExpertError) else f"{type(e).__name__}: {e}"
        (root / "output").mkdir(parents=True, exist_ok=True)
        (root / "output" / "failure").write_text(msg[:1000] + "\n", encoding="utf-8")
        raise


def _train(root: Path) -> Path:
    from domain_expert import export, finetune
    from domain_expert.config import dump_config, load_config
    from domain_expert.data import prepare
    from domain_expert.fsutil import write_text_atomic

    hp = hyperparameters(root)
    channels = root / "input" / "data"
    config_path = channels / "config" / hp.get("config", "config.yaml")
    if not config_path.is_file():
        raise AwsError(
            "no config in the 'config' channel",
            where=str(config_path),
            fix="create the job with `domain-expert aws train` (it uploads the config as that channel)",
        )
    run_dir = root / "model"
    cfg = load_config(config_path, [*_overrides(hp, config_path), f"output_dir={run_dir}"])
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
    data_dir = run_dir / "data"
    if (channels / "data" / "manifest.json").is_file():  # prepared locally: train on exactly that data
        shutil.copytree(channels / "data", data_dir, dirs_exist_ok=True)
    else:
        prepare.run(cfg, data_dir, overwrite=True)
    ft_dir = run_dir / "finetune"
    if (root / "checkpoints").is_dir():
        _finetune_resumable(cfg, data_dir, root / "checkpoints" / "finetune", ft_dir)
    else:
        finetune.run(cfg, data_dir, ft_dir, overwrite=True)
    if hp.get("export", "true").lower() != "false":
        export.run(ft_dir, run_dir / "export", overwrite=True)
    return run_dir


def _finetune_resumable(cfg: object, data_dir: Path, work: Path, ft_dir: Path) -> None:
    """Spot: train in the synced checkpoint folder, resuming when it holds a checkpoint; copy the result out
    without the checkpoints (optimizer state does not belong in model.tar.gz)."""
    from domain_expert import finetune
    from domain_expert.finetune import checkpoint

    resume = work.exists() and bool(checkpoint.scan(work)[0])
    finetune.run(cfg, data_dir, work, overwrite=not resume, resume=resume)  # type: ignore[arg-type]
    shutil.copytree(work, ft_dir, ignore=shutil.ignore_patterns("checkpoints"), dirs_exist_ok=True)


def serve(root: str | Path | None = None) -> int:
    """SageMaker's `serve`: our OpenAI-compatible server with /ping and /invocations on port 8080."""
    from domain_expert.cli import main

    model = Path(os.environ.get("SM_MODEL_DIR") or _root(root) / "model")
    # a training job's output is a run folder (serve its export/); `export --target sagemaker` is the merged folder
    # itself with serving.json naming the model
    target = model / "export" if (model / "export" / "stage.json").exists() else model
    port = os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")
    argv = ["serve", str(target), "--host", "0.0.0.0", "--port", port]
    serving = model / "serving.json"
    if serving.is_file():
        try:
            name = json.loads(serving.read_text(encoding="utf-8"))["name"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise AwsError(
                "not a serving.json with a 'name'", where=str(serving), fix="re-export --target sagemaker"
            ) from None
        argv += ["--name", str(name)]
    return main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in {"train", "serve"}:
        print("usage: python -m domain_expert.aws.container train|serve (SageMaker's container verbs)", file=sys.stderr)
        return 2
    if argv[0] == "serve":
        return serve()
    try:
        train()
    except DomainExpertError as e:
        print(f"error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

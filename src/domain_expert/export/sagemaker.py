"""The `sagemaker` target: `model.tar.gz` in the layout a SageMaker endpoint extracts to /opt/ml/model, served by
this project's own server (GET /ping, POST /invocations on port 8080) from the image in deploy/sagemaker/.

The tarball's root is the merged Hugging Face folder (weights, tokenizer, chat template, prompt_format.json, so the
endpoint prompts exactly as training did) plus `serving.json`, which the image's `serve` script reads for the served
model name. The server needs nothing else: no run folder, no network.
"""

from __future__ import annotations

import tarfile
import time
from pathlib import Path

from domain_expert.errors import ExportError
from domain_expert.export.targets import write_target_stage
from domain_expert.fsutil import read_json, staged_dir, write_json_atomic

TARBALL = "model.tar.gz"
SERVING_JSON = "serving.json"
PORT = 8080  # SageMaker sends /ping and /invocations to port 8080 of the container
# the merged folder's files the server reads; README.md and stage.json travel too (provenance for whoever opens it)
REQUIRED = ("config.json", "tokenizer_config.json", "prompt_format.json")


def build_sagemaker(src, out: Path, *, overwrite: bool = False, **_: object) -> Path:
    t0 = time.time()
    missing = [f for f in REQUIRED if not (src.folder / f).exists()]
    if not list(src.folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise ExportError(
            f"the merged folder lacks {', '.join(missing)}, which the server needs",
            where=str(src.folder),
            fix="re-export the run (`domain-expert export RUN --overwrite`) and build this target from it",
        )
    serving = {"name": src.name, "port": PORT, "model_dir": "/opt/ml/model"}
    with staged_dir(out, overwrite=overwrite) as tmp:
        write_json_atomic(tmp / SERVING_JSON, serving)
        with tarfile.open(tmp / TARBALL, "w:gz", compresslevel=1) as tar:  # weights barely compress; level 1 is fast
            for f in sorted(src.folder.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    tar.add(f, arcname=f.name)
            tar.add(tmp / SERVING_JSON, arcname=SERVING_JSON)
        members = check_tarball(tmp / TARBALL)
        write_target_stage(
            tmp,
            "sagemaker",
            src,
            serving=serving,
            tarball_bytes=(tmp / TARBALL).stat().st_size,
            members=members,
            checked="flat layout (extracts to /opt/ml/model), no absolute or parent paths, the server's files",
            image="deploy/sagemaker/Dockerfile (entrypoint `serve`)",
            seconds=round(time.time() - t0, 1),
        )
    size = (out / TARBALL).stat().st_size / 1e6
    print(f"[domain-expert] sagemaker: {out / TARBALL} ({size:.1f} MB), served as '{serving['name']}' on port {PORT}"
          " by the image in deploy/sagemaker/", flush=True)  # fmt: skip
    return out


def check_tarball(path: Path) -> list[str]:
    """Member names, after checking the layout SageMaker expects: files at the root, nothing outside it."""
    with tarfile.open(path, "r:gz") as tar:
        names = tar.getnames()
    bad = [n for n in names if n.startswith("/") or ".." in Path(n).parts or "/" in n]
    missing = [f for f in (*REQUIRED, SERVING_JSON) if f not in names]
    if bad or missing:
        raise ExportError(
            f"bad tarball layout: {'unexpected paths ' + ', '.join(bad) if bad else ''}"
            f"{' missing ' + ', '.join(missing) if missing else ''}",
            where=str(path),
            fix="this is a bug: report it with the folder's file list",
        )
    return names


def served_name(model_dir: str | Path) -> str:
    """The model name recorded in an extracted tarball (what the `serve` script passes to --name)."""
    return str(read_json(Path(model_dir) / SERVING_JSON)["name"])

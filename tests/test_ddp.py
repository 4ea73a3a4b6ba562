"""Data-parallel finetune: two CPU processes (gloo) under torchrun follow the one-process loss curve, because the
global batch (train.batch_size rows x grad_accum) is the same and only dealt out across the ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_overrides
from domain_expert.cli import main
from domain_expert.errors import ConfigError
from domain_expert.finetune.distributed import Dist, check_fits


def _args(model_dir: Path, data: Path, out: Path, **extra: str) -> list[str]:
    settings = {
        "train.max_steps": "6",
        "train.batch_size": "5",  # odd: the ranks get 3 and 2 rows, and the loss must still be the global mean
        "train.grad_accum": "2",
        "train.max_batch_tokens": "200",  # several micro-batches per rank per step
        "train.eval_every": "2",
        "train.save_every": "3",
        **extra,
    }
    return ["finetune", *tiny_overrides(model_dir, out.parent, **settings), "--data", str(data), "--out", str(out)]


def _torchrun(nproc: int, argv: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "domain_expert", *argv]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)


def _curve(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_follow_the_one_process_loss_curve(tiny_model_dir, tiny_data, tmp_path):
    one, two = tmp_path / "one" / "finetune", tmp_path / "two" / "finetune"
    assert main(_args(tiny_model_dir, tiny_data, one)) == 0
    proc = _torchrun(2, _args(tiny_model_dir, tiny_data, two))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 processes" in proc.stdout

    a, b = _curve(one), _curve(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]  # rank 0 alone logs: no duplicated rows
    pairs = [(ra[k], rb[k]) for ra, rb in zip(a, b, strict=True) for k in ("train_loss", "val_loss") if k in ra]
    worst = max(abs(y - x) / abs(x) for x, y in pairs)
    print(f"largest relative loss difference, 2 processes vs 1: {worst:.1e}")
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss", "tokens", "lr"):
            assert (key in ra) == (key in rb)
            if key in ra:  # the same examples per step; only the order of float sums differs
                assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (key, ra["step"])
    summary = json.loads((two / "stage.json").read_text())["summary"]
    assert summary["processes"] == 2 and summary["steps"] == 6
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-000003", "step-000006"]


def test_more_processes_than_a_batch_has_rows_fails_before_training(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "run" / "finetune"
    proc = _torchrun(2, _args(tiny_model_dir, tiny_data, out, **{"train.batch_size": "1", "train.grad_accum": "1"}))
    assert proc.returncode != 0
    assert "error: launcher (--nproc_per_node): 2 processes but each optimizer step has only 1 example" in proc.stderr
    assert "launch at most 1 process" in proc.stderr
    assert not out.exists()  # nothing written


def test_check_fits_names_the_limit():
    check_fits(Dist(world=4), batch_size=4, n_examples=100)
    with pytest.raises(ConfigError, match="3 processes .* only 2 example.*train.batch_size=2"):
        check_fits(Dist(world=3), batch_size=2, n_examples=100)
    with pytest.raises(ConfigError, match="only 2 example.*2 training examples"):
        check_fits(Dist(world=3), batch_size=8, n_examples=2)


@pytest.mark.parametrize("var", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_sharded_accelerate_launch_is_refused(var, monkeypatch):
    from domain_expert.errors import ConfigError
    from domain_expert.finetune import distributed

    monkeypatch.setenv(var, "true")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError) as e:
        distributed.setup("cpu")  # before any process group is joined
    assert var in e.value.one_line() and "ddp.yaml" in e.value.one_line()

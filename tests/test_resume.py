"""finetune --resume: a real training process killed with SIGKILL continues from its last complete checkpoint and
ends where an uninterrupted run ends; a bad resume fails with one clear line and changes nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_overrides
from domain_expert.cli import main
from domain_expert.fsutil import sha256_file

STEPS = 8

# Each optimizer step sleeps, so the killed run is still training when the test sees its step-4 checkpoint; the
# numbers are untouched. A real process, a real SIGKILL: nothing in the package knows it is being tested.
SLOW_STEPS = """
import sys, time, torch
step = torch.optim.AdamW.step
def slow(self, *a, **k):
    time.sleep(0.4)
    return step(self, *a, **k)
torch.optim.AdamW.step = slow
from domain_expert.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _args(model_dir: Path, data: Path, out: Path, **extra: str) -> list[str]:
    settings = {
        "train.max_steps": str(STEPS),
        "train.save_every": "2",
        "train.eval_every": "4",
        "train.warmup_steps": "2",
        "lora.dropout": "0.1",  # dropout draws random numbers: the random state must be restored too
        **extra,
    }
    return ["finetune", *tiny_overrides(model_dir, out.parent, **settings), "--data", str(data), "--out", str(out)]


def _summary(out: Path) -> dict:
    return json.loads((out / "stage.json").read_text())["summary"]


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_model_dir, tiny_data, tmp_path):
    ref = tmp_path / "ref" / "finetune"
    assert main(_args(tiny_model_dir, tiny_data, ref)) == 0

    out = tmp_path / "killed" / "finetune"
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_STEPS, *_args(tiny_model_dir, tiny_data, out)],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    marker = out / "checkpoints" / "step-000004" / "trainer_state.json"
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, "training ended before the kill:\n" + (tmp_path / "killed.log").read_text()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "stage.json").exists()

    assert main([*_args(tiny_model_dir, tiny_data, out), "--resume"]) == 0
    got, want = _summary(out), _summary(ref)
    assert got["resumed_from_step"] >= 4 and got["steps"] == STEPS
    diff = abs(got["val_loss_end"] - want["val_loss_end"]) / want["val_loss_end"]
    print(f"val loss: uninterrupted {want['val_loss_end']:.6f}, killed+resumed {got['val_loss_end']:.6f} "
          f"(relative difference {diff:.2e}, resumed from step {got['resumed_from_step']})")  # fmt: skip
    assert diff < 0.01
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == list(range(1, STEPS + 1))  # each step logged once
    ref_rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "val_loss"):
        curve, ref_curve = ({r["step"]: r[key] for r in rs if key in r} for rs in (rows, ref_rows))
        assert curve == pytest.approx(ref_curve, rel=1e-4), key


@pytest.fixture(scope="module")
def interrupted(tiny_model_dir, tiny_data, tmp_path_factory) -> Path:
    """A finished 4-step run turned back into an interrupted one: checkpoints at steps 2 and 4, no stage.json."""
    out = tmp_path_factory.mktemp("interrupted") / "finetune"
    assert main(_args(tiny_model_dir, tiny_data, out, **{"train.max_steps": "4"})) == 0
    (out / "stage.json").unlink()
    return out


@pytest.fixture
def copy(interrupted, tmp_path) -> Path:
    out = tmp_path / "run" / "finetune"
    shutil.copytree(interrupted, out)
    return out


def _fails(argv: list[str], capsys, out: Path | None = None) -> str:
    before = _tree(out) if out and out.exists() else None
    assert main(argv) == 2
    if before is not None:
        assert _tree(out) == before, "a refused resume must not change the folder"
    return capsys.readouterr().err.strip()


def test_resume_without_checkpoint(tiny_model_dir, tiny_data, tmp_path, capsys):
    out = tmp_path / "run" / "finetune"
    err = _fails([*_args(tiny_model_dir, tiny_data, out), "--resume"], capsys)
    assert "no complete checkpoint to resume from" in err and "run without --resume" in err
    assert not out.exists()


def test_resume_with_other_lora_rank_or_base_model(tiny_model_dir, tiny_data, copy, tmp_path, capsys):
    argv = [*_args(tiny_model_dir, tiny_data, copy, **{"lora.r": "8"}), "--resume"]
    err = _fails(argv, capsys, copy)
    assert "lora.r: checkpoint 16, now 8" in err and "step-000004" in err and "--overwrite" in err

    other = shutil.copytree(tiny_model_dir, tmp_path / "other-model")
    err = _fails([*_args(other, tiny_data, copy), "--resume"], capsys, copy)
    assert f"model: checkpoint {tiny_model_dir}, now {other}" in err


def test_resume_from_corrupted_checkpoint_then_from_the_previous_one(tiny_model_dir, tiny_data, copy, capsys):
    opt = copy / "checkpoints" / "step-000004" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:100])  # a truncated file
    (copy / "checkpoints" / "step-000006").mkdir()  # a folder without the completion marker: ignored, reported
    argv = [*_args(tiny_model_dir, tiny_data, copy, **{"train.max_steps": "4"}), "--resume"]
    err = _fails(argv, capsys, copy)
    assert "optimizer.pt" in err and "truncated" in err
    assert "delete" in err and "previous checkpoint (step-000002)" in err

    shutil.rmtree(opt.parent)  # follow the advice
    assert main(argv) == 0
    assert "ignoring" in capsys.readouterr().out
    assert _summary(copy)["resumed_from_step"] == 2


def test_finished_run_and_unfinished_run_say_what_to_do(tiny_model_dir, tiny_data, copy, capsys):
    argv = _args(tiny_model_dir, tiny_data, copy, **{"train.max_steps": "4"})
    err = _fails(argv, capsys, copy)  # without --resume on an interrupted run
    assert "unfinished fine-tuning run" in err and "--resume" in err
    (copy / "stage.json").write_text("{}")
    err = _fails([*argv, "--resume"], capsys, copy)
    assert "already finished" in err


def test_run_resume_refuses_other_settings(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    err = _fails(["run", *tiny_overrides(tiny_model_dir, run_dir), "--resume"], capsys)
    assert "no interrupted run to resume" in err
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"model: {tiny_model_dir}\noutput_dir: {run_dir}\n")
    err = _fails(["run", *tiny_overrides(tiny_model_dir, run_dir), "--resume"], capsys, run_dir)
    assert "train.max_steps: interrupted run null, now 4" in err


def test_run_resume_continues_finetuning_and_runs_the_later_stages(tiny_model_dir, tmp_path):
    from domain_expert.config import dump_config, load_config

    run_dir = tmp_path / "run"
    ov = tiny_overrides(tiny_model_dir, run_dir)  # 4 steps, a checkpoint every 2
    assert main(["prepare", *ov]) == 0 and main(["finetune", *ov]) == 0
    (run_dir / "config.yaml").write_text(dump_config(load_config("medical-terms", ov)))  # as `run` writes it first
    (run_dir / "finetune" / "stage.json").unlink()  # as if `run` was killed after the step-4 checkpoint
    assert main(["run", *ov, "--resume"]) == 0
    assert _summary(run_dir / "finetune")["resumed_from_step"] == 4
    for f in ("data/manifest.json", "export/stage.json", "eval/metrics.json", "report/report.html", "run.json"):
        assert (run_dir / f).exists(), f
    assert "prepare" not in json.loads((run_dir / "run.json").read_text())["stage_seconds"]  # kept, not redone

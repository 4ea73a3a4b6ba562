"""provenance.stamp: what every benchmark result file records about how it was made, checked against the sources it
claims to come from (git, /proc/cpuinfo, sys.argv); and every bench script that writes a result file stamps it."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from domain_expert import provenance

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"


def _in_git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.returncode == 0


def _proc_cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not _in_git_checkout(), reason="the tests do not run from a git checkout")
def test_commit_is_git_head_and_dirty_is_git_status():
    s = provenance.stamp()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert s["commit"] == head.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", s["commit"])
    status = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert s["dirty"] is bool(status.stdout.strip())


def test_no_commit_outside_a_git_checkout(tmp_path):
    assert provenance.git_commit(tmp_path) == (None, None)


def test_command_is_argv_shell_quoted(monkeypatch):
    assert provenance.stamp()["command"] == shlex.join(sys.argv)
    argv = ["bench/serve_throughput.py", "runs/my run", "--clients", "1", "16"]
    monkeypatch.setattr(sys, "argv", argv)
    command = provenance.stamp()["command"]
    assert command == "bench/serve_throughput.py 'runs/my run' --clients 1 16"
    assert shlex.split(command) == argv
    assert provenance.stamp(["x.py", "--a b"])["command"] == "x.py '--a b'"


def test_cpu_flags_come_from_proc_cpuinfo():
    cpu = provenance.stamp()["cpu"]
    flags = _proc_cpuinfo_flags()
    assert cpu["flags"] == [f for f in provenance.CPU_FLAGS if f in flags]
    assert cpu["avx512_bf16"] == ("avx512_bf16" in flags) and cpu["amx_bf16"] == ("amx_bf16" in flags)
    assert cpu["cpus"] >= 1 and cpu["model_name"]
    if Path("/proc/cpuinfo").exists() and "model name" in Path("/proc/cpuinfo").read_text():
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        assert cpu["model_name"] == names[0]


def test_versions_and_time_are_real():
    import platform

    import torch
    import transformers

    before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    s = provenance.stamp()
    after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    assert s["torch"] == torch.__version__ and s["transformers"] == transformers.__version__
    assert s["python"] == platform.python_version()
    assert before <= s["created"] <= after
    json.dumps(s)  # goes into result files as it is


def test_every_bench_script_that_writes_a_result_stamps_it():
    writers = []
    for path in sorted(BENCH.glob("*.py")):
        text = path.read_text()
        if re.search(r"write_json|json\.dump\(|\.write_text\(", text):
            writers.append(path.name)
            assert "stamp(" in text, f"{path.name} writes a result file without provenance.stamp()"
    assert len(writers) >= 7, writers  # the serving, training and GPU benchmarks


def test_pool_result_file_carries_the_stamp(tmp_path):
    spec = importlib.util.spec_from_file_location("pool", BENCH / "train_throughput_pool.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    side = lambda tps: {"tokens_per_s": tps, "seeds": {"0": {"val_loss": 2.0}}}  # noqa: E731
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"rows": {mod.NAIVE: side(100.0), "domain-expert finetune": side(400.0)}}))
    out = tmp_path / "pooled.json"
    assert mod.main([str(run), "--out", str(out)]) == 0
    s = json.loads(out.read_text())["stamp"]
    assert shlex.split(s["command"])[1:] == [str(run), "--out", str(out)]
    assert s["cpu"]["flags"] == [f for f in provenance.CPU_FLAGS if f in _proc_cpuinfo_flags()]
    if _in_git_checkout():
        assert s["commit"] == provenance.git_commit(REPO)[0]

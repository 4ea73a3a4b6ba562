"""Two commits side by side on one machine: the same fine-tuning (fixed steps, no time budget) and the same
evaluation, alternating A and B so that a busier minute slows both. For changes that must not move results or speed
(a restructuring): validation losses and evaluation metrics should be identical, tokens/s within noise.

    .venv/bin/python bench/ab_commits.py runs/medical-terms --a a7b375f --b HEAD --steps 30 --repeats 2 --evaluate

Each commit is checked out into a temporary git worktree and run with its own `src/` first on PYTHONPATH (the venv's
packages are shared). Writes a stamped JSON (default bench/results/ab_commits.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def _cli(src: Path, args: list[str], log: Path) -> float:
    """Run `python -m domain_expert ARGS` with `src` first on the path; returns wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.time()
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-m", "domain_expert", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                       check=True)  # fmt: skip
    return round(time.time() - t0, 1)


def _finetune(src: Path, run: Path, steps: int, out: Path) -> dict:
    args = ["finetune", str(run / "config.yaml"), f"train.max_steps={steps}", "train.max_minutes=null",
            f"output_dir={out}-run", "--data", str(run / "data"), "--out", str(out)]  # fmt: skip
    _cli(src, args, out.with_suffix(".log"))
    s = json.loads((out / "train_summary.json").read_text())
    return {k: s[k] for k in ("steps", "tokens_per_s", "val_loss_start", "val_loss_end", "seconds")}


def _evaluate(src: Path, run: Path, out: Path) -> dict:
    wall = _cli(src, ["evaluate", str(run), "--out", str(out)], out.with_suffix(".log"))
    m = json.loads((out / "metrics.json").read_text())
    return {"wall_s": wall, "diffs": {c["metric"]: c["diff"] for c in m["comparisons"]},
            "verdicts": {c["metric"]: c["verdict"] for c in m["comparisons"]}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished run folder (after `make run`): its data and finetune/")
    ap.add_argument("--a", required=True, help="baseline commit")
    ap.add_argument("--b", default="HEAD", help="commit to compare (default HEAD)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--evaluate", action="store_true", help="also evaluate the run's finetune/ with each commit")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ab_commits.json")
    args = ap.parse_args()

    from domain_expert.fsutil import write_json_atomic
    from domain_expert.provenance import stamp

    run = args.run.resolve()
    commits = {"a": _git("rev-parse", args.a), "b": _git("rev-parse", args.b)}
    result: dict = {"stamp": stamp(), "commits": commits, "steps": args.steps, "finetune": [], "evaluate": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        trees = {}
        for side, sha in commits.items():
            trees[side] = tmp / f"tree-{side}"
            _git("worktree", "add", "--detach", str(trees[side]), sha)
        try:
            for i in range(args.repeats):
                for side in ("a", "b"):
                    row = _finetune(trees[side] / "src", run, args.steps, tmp / f"ft-{side}-{i}")
                    result["finetune"].append({"side": side, "repeat": i, **row})
                    print(side, i, row, flush=True)
            if args.evaluate:
                for side in ("a", "b"):
                    result["evaluate"][side] = _evaluate(trees[side] / "src", run, tmp / f"eval-{side}")
                    print(side, result["evaluate"][side]["wall_s"], "s", flush=True)
        finally:
            for tree in trees.values():
                _git("worktree", "remove", "--force", str(tree))
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""bench/train_throughput.py end to end on the tiny Llama: both sides train, one scorer, a result file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_throughput.py"


@pytest.mark.slow  # trains both benchmark rows: ~1.5 min
def test_naive_and_finetune_rows_with_shared_val_loss(tiny_tuned, tiny_model_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "bench"
    sets = [f"model={tiny_model_dir}", "train.batch_size=4", "train.warmup_steps=1"]
    argv = [str(tiny_tuned), "--steps", "2", "--out", str(out), "--lever", "train.max_batch_tokens=64"]
    argv += ["--seeds", "0", "1"]
    assert mod.main(argv + [a for s in sets for a in ("--set", s)]) == 0
    res = json.loads((out / "result.json").read_text())
    rows = res["rows"]
    assert list(rows) == [mod.NAIVE, "domain-expert finetune", "finetune train.max_batch_tokens=64"]
    for r in rows.values():
        assert r["steps"] == 2 and r["trained_tokens"] > 0 and r["tokens_per_s"] > 0 and r["peak_rss_mib"] > 0
        assert r["val_loss"] > 0 and r["speedup_vs_naive"] > 0
        assert list(r["seeds"]) == ["0", "1"]  # JSON keys
        each = [v["val_loss"] for v in r["seeds"].values()]
        assert r["val_loss"] == round(sum(each) / 2, 4)  # the row is the mean over seeds
    # the seed reaches both sides: different data order and LoRA init, so different adapters
    assert rows[mod.NAIVE]["seeds"]["0"]["val_loss"] != rows[mod.NAIVE]["seeds"]["1"]["val_loss"]
    assert rows[mod.NAIVE]["dtype"] == "fp32"
    assert res["val_loss_base"] > 0


def test_pooling_runs_pairs_seeds(tmp_path):
    """bench/train_throughput_pool.py: each run's ratio is its own; val losses are paired by seed, a seed trained in
    two runs averaged per side first; a run's finetune row can be named per file (PATH@ROW)."""
    spec = importlib.util.spec_from_file_location("pool", BENCH.with_name("train_throughput_pool.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def run(naive_tps, ours_tps, seeds, row="domain-expert finetune"):
        side = lambda tps, losses: {"tokens_per_s": tps, "seeds": {str(s): {"val_loss": v} for s, v in losses.items()}}  # noqa: E731
        return {"rows": {mod.NAIVE: side(naive_tps, {s: n for s, (n, _) in seeds.items()}),
                         row: side(ours_tps, {s: o for s, (_, o) in seeds.items()})}}  # fmt: skip

    a = tmp_path / "a.json"
    a.write_text(json.dumps(run(100.0, 450.0, {0: (2.0, 2.1), 1: (2.2, 2.0)})))
    b = tmp_path / "b.json"
    b.write_text(json.dumps(run(125.0, 450.0, {0: (2.2, 2.1), 2: (2.0, 1.9)}, row="finetune x=1")))
    out = tmp_path / "pooled.json"
    assert mod.main([str(a), f"{b}@finetune x=1", "--out", str(out)]) == 0
    p = json.loads(out.read_text())
    assert [round(r["ratio"], 3) for r in p["runs"]] == [4.5, 3.6]
    assert p["runs_at_or_above_4x"] == 1 and round(p["ratio_mean"], 3) == 4.05
    # seed 0: naive (2.0 + 2.2) / 2 = 2.1 vs ours 2.1; seed 1: 2.2 vs 2.0; seed 2: 2.0 vs 1.9
    assert {s: round(v["ours"] - v["naive"], 4) for s, v in p["val_loss"].items()} == {"0": 0.0, "1": -0.2, "2": -0.1}
    assert p["seeds_ours_better"] == 2 and round(p["paired_diff_mean"], 4) == -0.1

"""bench/train_throughput.py end to end on the tiny Llama: both sides train, one scorer, a result file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_throughput.py"


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

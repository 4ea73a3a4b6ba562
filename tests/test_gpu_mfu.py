"""bench/gpu_mfu.py runs its tiny preset on CPU and computes every figure (the real run needs a CUDA GPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_mfu.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_mfu", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_preset_on_cpu_reports_positive_figures(tmp_path):
    mod = _load()
    out = tmp_path / "mfu.json"
    args = ["--preset", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--json", str(out)]
    assert mod.main(args) == 0
    res = json.loads(out.read_text())
    for key in ("tokens_per_s", "step_s", "peak_tflops", "mfu", "hfu", "mfu_6n", "params_lora", "params_total"):
        assert res[key] > 0, key
    assert all(v > 0 for v in res["flops_per_token"].values())
    assert all(v > 0 for v in res["achieved_tflops"].values())
    assert res["peak_source"].startswith("matmul probe")  # a CPU is not in the datasheet table
    # LoRA trains no frozen-weight gradients: its count is below the conventional 6N
    assert res["flops_per_token"]["model"] < res["flops_per_token"]["six_n"]
    assert res["hfu"] == res["mfu"]  # no checkpointing, no recomputation


def test_flop_count_and_peak_table():
    mod = _load()
    f = mod.flops_per_token(n_lin=100, n_lora=10, n_params=120, layers=2, hidden=4, seq_len=8, n_layer_lin=80,
                            grad_ckpt=True)  # fmt: skip
    attn = 4 * 2 * 4 * 8
    assert f["model"] == 4 * 100 + 6 * 10 + 3 * attn
    assert f["hardware"] == f["model"] + 2 * 80 + 2 * 10 + attn
    assert f["six_n"] == 6 * 120 + 3 * attn
    assert mod.peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert mod.peak_tflops("NVIDIA H100 PCIe") == 756
    assert mod.peak_tflops("NVIDIA L40S") == 362  # not L4
    assert mod.peak_tflops("NVIDIA A10G") == 125
    assert mod.peak_tflops("Some Future GPU") is None

"""Pick device and dtype by what the machine can do; users can always override in the config."""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU runs bf16 matrix products natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and
    can be slower than fp32, so we only choose it where it pays (matrix products ~2.1x fp32 on an AVX512-BF16
    EPYC: bench/cpu_pass_cost.py, docs/benchmarks.md). DOMAIN_EXPERT_NATIVE_BF16=0 (or 1) overrides the detection:
    with ATEN_CPU_CAPABILITY=avx2 it makes an AVX-512 machine behave as an AVX2-only one (fp32 everywhere)."""
    import os

    forced = os.environ.get("DOMAIN_EXPERT_NATIVE_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    if platform.machine().lower() in ("arm64", "aarch64"):
        flags = cpu_flags()
        return "bf16" in flags or "sve_bf16" in flags
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_flags() -> set[str]:
    """The CPU feature flags (/proc/cpuinfo; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_summary() -> dict:
    """What benchmark results record about the CPU: figures are only comparable between like machines (the serving
    engine's attention choice, for one, flips between a Zen EPYC and a Sapphire Rapids Xeon)."""
    import os

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    return {
        "model_name": name,
        "cpus": os.cpu_count(),
        "native_bf16": cpu_has_native_bf16(),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
    }


def resolve_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(requested: str, device: str):
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if requested != "auto":
        return table[requested]
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32


def dtype_name(dtype) -> str:
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]

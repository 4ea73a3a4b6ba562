"""What every stage records about how it ran: package versions and peak memory; what every benchmark result file
records about how it was made (`stamp`)."""

from __future__ import annotations

from pathlib import Path


def package_versions(*packages: str) -> dict[str, str]:
    """Installed versions of the named distributions; those not installed are left out."""
    import importlib.metadata as md

    out = {}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# CPU features that decide which kernels run (bf16 natively or emulated, AMX tiles, AVX-512 or AVX2 only): figures
# from machines that differ in these are not comparable
CPU_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
    "bf16",
    "sve_bf16",
)


def git_commit(where: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(HEAD's sha, whether tracked files differ from it) of the git checkout holding `where` (default: this
    package's source); (None, None) outside a checkout or without git."""
    import subprocess

    where = Path(where) if where is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if not sha:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return sha, None if status is None else bool(status)


def stamp(argv: list[str] | None = None) -> dict:
    """What every benchmark result file records about how it was made: the commit (and whether the checkout had
    uncommitted changes to tracked files), the CPU and its relevant flags, library versions, the command line
    (`argv`, default sys.argv, shell-quoted) and the UTC time."""
    import importlib
    import platform
    import shlex
    import sys
    import time

    from domain_expert.hardware import cpu_flags, cpu_summary

    commit, dirty = git_commit()
    flags = cpu_flags()
    versions = {}
    for name in ("torch", "transformers"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            versions[name] = None
    return {
        "commit": commit,
        "dirty": dirty,
        "cpu": {**cpu_summary(), "flags": [f for f in CPU_FLAGS if f in flags]},
        **versions,
        "python": platform.python_version(),
        "command": shlex.join(sys.argv if argv is None else argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

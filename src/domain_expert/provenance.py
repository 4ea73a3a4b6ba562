"""What every stage records about how it ran: package versions and peak memory."""

from __future__ import annotations


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

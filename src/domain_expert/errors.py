"""Project errors. Library code raises these; only the CLI turns them into one line and exit code 2."""

from __future__ import annotations


class DomainExpertError(Exception):
    """A user-facing error: what went wrong, where, and how to fix it."""

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [f"{self.where}: {self.what}" if self.where else self.what]
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return " — ".join(parts)


class ConfigError(DomainExpertError):
    """A config file or override is invalid."""


class DataError(DomainExpertError):
    """A data source cannot be read or yields no usable records."""


class ModelNotFoundError(DomainExpertError):
    """A model reference cannot be resolved to weights."""


class RunFolderError(DomainExpertError):
    """A run folder is missing, incomplete, or already exists."""


class FidelityError(DomainExpertError):
    """A merged model does not reproduce adapter+base outputs within tolerance."""


class ExportError(DomainExpertError):
    """An export target cannot be built from this model (architecture, dtype, size, files), or its check failed."""


class CheckpointError(RunFolderError):
    """A training checkpoint is missing, incomplete, corrupted, or was written with other settings."""


class UnsupportedModelError(ModelNotFoundError):
    """A model's architecture is one that no stage of this project can train or serve."""


class AwsError(DomainExpertError):
    """An AWS command cannot run (no credentials, a bad region, bucket or instance type), or a request failed; the
    message lists any resources that were created and then deleted again."""

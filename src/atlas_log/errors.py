"""One root exception for the project; each subclass says where the error entered."""

from __future__ import annotations


class AtlasLogError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(AtlasLogError):
    """A user's configuration is wrong. The CLI prints the message and exits with status 2."""


class AtlasApiError(AtlasLogError):
    """Atlas answered with an error, or with something that is not a valid answer."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        retriable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.retriable = retriable
        self.retry_after_s = retry_after_s


class DestinationError(AtlasLogError):
    """The destination (S3 bucket or local folder) refused or failed an operation."""


class CheckpointError(AtlasLogError):
    """The checkpoint in the destination is missing where expected, corrupted, or was changed by someone else."""


class CheckpointConflict(CheckpointError):
    """The compare-and-swap on the checkpoint lost: another writer committed first."""

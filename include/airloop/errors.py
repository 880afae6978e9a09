"""Domain exceptions: each message says what failed, on which data, and what to do next.

``DataProblem`` marks failures caused by the data itself. Retrying cannot fix them, so the Airflow layer
turns them into non-retryable task failures; everything else may be transient and is retried.
"""

from __future__ import annotations

from typing import Any


class AirloopError(Exception):
    """Base class of every error airloop raises on purpose. ``runbook_kind`` names the runbook of the
    failure (a key of ``airloop.runbooks.RUNBOOKS``) where one kind fits the class."""

    runbook_kind: str | None = None


class ConfigError(AirloopError):
    """A pipeline config file is missing, unreadable or invalid; the message names the file and field."""


class DataProblem(AirloopError):
    """A failure caused by the data; retrying the task will not help."""


class BatchNotFoundError(AirloopError):
    """No batch has landed yet for the interval (may be transient: the upstream feed can be late)."""

    runbook_kind = "batch_late"


class BatchFormatError(DataProblem):
    """The batch could not be read in its declared format."""

    runbook_kind = "batch_unreadable"


class BatchValidationError(DataProblem):
    """The batch failed its expectation suite and was moved to quarantine."""

    runbook_kind = "batch_quarantined"

    def __init__(self, message: str, *, summary: dict[str, Any] | None = None, quarantine_uri: str = ""):
        super().__init__(message)
        self.summary = summary or {}
        self.quarantine_uri = quarantine_uri


class QuarantineError(AirloopError):
    """A quarantine command could not be carried out (unknown batch, already released, ...)."""

"""User-facing errors.

Every problem a user can cause (a missing or malformed file, a bad field, an impossible config) raises a
:class:`FedpitError`. The CLI prints its message as one line and exits with code 2, without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class FedpitError(Exception):
    """A one-line, user-facing error. The CLI exits with :attr:`exit_code`."""

    exit_code = 2


class ConfigError(FedpitError):
    """An unknown key, a value of the wrong type, or an impossible combination of settings."""


class DataError(FedpitError):
    """A data file that is missing, malformed, or has a bad record.

    The message names the file, the record (``line N`` for JSONL, ``record N`` for a JSON array, 1-based) and the
    field, so a user can jump straight to the problem.
    """

    def __init__(self, path: str | Path, message: str, *, record: str | None = None, field: str | None = None):
        self.path = str(path)
        self.record = record
        self.field = field
        self.reason = message
        parts = [self.path]
        if record is not None:
            parts.append(record)
        if field is not None:
            parts.append(f"field '{field}'")
        parts.append(message)
        super().__init__(": ".join(parts))


class TrainingError(FedpitError):
    """A round produced something that must not be committed (a non-finite loss or adapter): the run stops with
    ``progress.json`` status failed and keeps its last committed round."""

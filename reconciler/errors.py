"""Error types and diagnostics.

Every failure a user can cause ends up as one of these, never as a traceback. A `Diagnostic` names
the place (file, line, column, path inside the document) and says what is wrong in a mail admin's
words. Messages never contain a password or a password hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a file, at a place a human can jump to."""

    file: str
    line: int | None  # 1-based
    column: int | None  # 1-based
    path: str  # where in the document, e.g. `accounts.jane@example.org.quota`; "" for the file
    message: str
    severity: Severity = Severity.ERROR

    def format(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        path = f"{self.path}: " if self.path else ""
        return f"{where}: {self.severity.value}: {path}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "severity": self.severity.value,
            "message": self.message,
        }

    def sort_key(self) -> tuple[int, int, str]:
        return (self.line or 0, self.column or 0, self.message)


class ReconcilerError(Exception):
    """Base for every error shown to the user as a message (never as a traceback)."""

    exit_code = 1


class InvalidDesiredState(ReconcilerError):
    """mailserver.yaml failed validation; carries every diagnostic, not just the first."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        errors = [d for d in diagnostics if d.severity is Severity.ERROR]
        super().__init__(f"{len(errors)} error(s) in the desired-state file")


class VolumeError(ReconcilerError):
    """The config volume cannot be read or written safely (symlink, permissions, bad path)."""


class SecretError(ReconcilerError):
    """A password_file or password_env could not be resolved."""


class LockBusy(ReconcilerError):
    """Someone else holds DMS's change-detector lock for longer than we are willing to wait."""


class Refused(ReconcilerError):
    """A safety rule refused the plan (deletion limit, zero accounts, stale saved plan)."""


class StalePlan(Refused):
    """A saved plan no longer matches the volume, the desired file or the secrets."""

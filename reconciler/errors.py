"""Error types and diagnostics.

Every failure a user can cause ends up as one of these, never as a traceback. A `Diagnostic` names
the place (file, line, column, path inside the document) and says what is wrong in a mail admin's
words. Messages never contain a password or a password hash.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from reconciler.addresses import CLEARTEXT_SCHEMES, KNOWN_SCHEMES

# Characters a terminal or a pull-request page would act on or hide: C0/C1 controls (ANSI escape
# sequences), zero-width and bidirectional controls ("Trojan Source"), line separators, and the
# surrogates that stand for bytes that are not UTF-8 (`surrogateescape`).
_INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\udc80-\udcff]"
)
_LONG_RUN = re.compile(r"\S{301,}")


SENSITIVE = "(sensitive)"
# What a password hash looks like wherever it was typed, and nothing else: a regexp alias such as
# `^([a-z]{4})@example\.com$ -> ${1}@elsewhere.example` must stay readable, since a reviewer has
# to see where mail goes. `{SCHEME}` must name a scheme Dovecot knows (addresses.KNOWN_SCHEMES,
# the clear-text ones included) followed by eight or more hash characters; a bare crypt(3) / PHC
# string needs its known id, at least one `$`-separated salt or parameter field and a hash field
# of eight or more characters (`$6$salt$hash`, `$2y$05$<53>`, `$argon2id$v=19$m=..$salt$hash`).
# So a hint such as "like {SHA512-CRYPT}$6$..." in a message stays readable too.
_SCHEMES = "|".join(
    re.escape(name) for name in sorted(KNOWN_SCHEMES | CLEARTEXT_SCHEMES, key=len, reverse=True)
)
_CRYPT_IDS = r"1|2[abxy]?|5|6|7|y|gy|sha1|md5|argon2(?:i|d|id)|pbkdf2(?:-sha\d+)?|scrypt"
_HASH_SHAPE = re.compile(
    rf"\{{(?i:{_SCHEMES})\}}[^\s'\"`;()<>]{{8,}}"
    rf"|\$(?:{_CRYPT_IDS})\$(?:[A-Za-z0-9=,./+-]+\$)+[A-Za-z0-9./+=]{{8,}}"
)


def redact(text: str, known: Iterable[str] = ()) -> str:
    """`text` with every hash-shaped value, and every value in `known` (what was typed in a
    password field), replaced by `(sensitive)`. Every message, log line and plan goes through
    here (via `printable`, `redact_data` and the log formatters): a secret typed into the wrong
    place (an alias target, a key, a password_file path) is never echoed."""
    if "{" in text or "$" in text:
        text = _HASH_SHAPE.sub(SENSITIVE, text)
    for value in known:
        if value and value in text:
            text = text.replace(value, SENSITIVE)
    return text


def redact_data(value: Any) -> Any:
    """`redact` on every string (keys too) of JSON-like data: a plan, a log record's fields."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_data(v) for v in value]
    return value


def printable(text: str) -> str:
    """`text` made safe to show: hash-shaped values redacted, invisible and control characters
    written as escapes (`\\x1b`), and a run of more than 300 characters without a space cut in
    the middle, so a hostile value can neither leak a secret, drive the terminal nor bury the
    message under megabytes."""
    text = redact(text)
    if _INVISIBLE.search(text):
        text = _INVISIBLE.sub(_escape, text)
    if len(text) > 300 and _LONG_RUN.search(text):
        text = _LONG_RUN.sub(
            lambda m: f"{m.group()[:80]}...({len(m.group())} characters)...{m.group()[-20:]}", text
        )
    return text


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


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
        return printable(f"{where}: {self.severity.value}: {path}{self.message}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": printable(self.path),
            "severity": self.severity.value,
            "message": printable(self.message),
        }

    def redacted(self, known: Iterable[str]) -> Diagnostic:
        """This diagnostic with the `known` secret values (password fields) never shown."""
        known = tuple(known)
        message, path = redact(self.message, known), redact(self.path, known)
        if (message, path) == (self.message, self.path):
            return self
        return replace(self, message=message, path=path)

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


def os_error_text(exc: OSError, path: str, *, outcome: str) -> str:
    """Why writing `path` failed, in words, and what that means for the volume (`outcome`)."""
    if exc.errno == errno.ELOOP:
        return f"{path} is a symlink; refusing to follow it"
    reason = {
        errno.ENOSPC: f"the disk is full while writing {path}",
        errno.EDQUOT: f"disk quota exceeded while writing {path}",
        errno.EROFS: f"the config volume is read-only ({path})",
        errno.EACCES: f"no permission to write {path} (run as the volume's owner)",
        errno.EPERM: f"no permission to write {path} (run as the volume's owner)",
    }.get(exc.errno or 0, f"cannot write {path}: {exc.strerror}")
    return f"{reason}; {outcome}"


# A place in the document: keys and list indexes from the top, e.g. ('accounts', 'a@b.c', 'quota').
Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """`('accounts', 'a@b.c', 'quota')` -> `accounts.a@b.c.quota`; list items as `[i]`.

    Control characters in keys are escaped so a hostile key cannot break the message's line.
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            if not text.isprintable():
                text = text.encode("unicode_escape").decode("ascii")
            out += ("." if out else "") + text
    return out

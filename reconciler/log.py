"""Logging for the sidecar: one JSON object a line in a container, readable text on a terminal.

Log aggregators (Loki, CloudWatch, `docker logs | jq`) want one JSON object per line; a person at
a terminal wants text. `setup` picks by whether the stream is a terminal, and
`DMS_RECONCILER_LOG_FORMAT=json|text` overrides it. Structured fields go in
`extra={"fields": {...}}`.

The callers only ever log addresses, file names, counts and diagnostics, and both formatters
pass the message and every field through `errors.redact` too, so a hash typed into the wrong
place of mailserver.yaml (an alias target, a key, a password_file path) never reaches a log
line. An unexpected error is logged by its type only; with DMS_RECONCILER_DEBUG=1,
`safe_traceback` adds where it happened (files, lines, functions, exception types) but never an
exception's message, which may quote a value.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from typing import IO, Any

from reconciler.errors import redact, redact_data

LOGGER_NAME = "dms_reconciler"
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """`{"time": ..., "level": ..., "logger": ..., "message": ..., <fields>}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        out.update(_fields(record))
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`2024-05-01T10:00:00Z info  message  key=value ...` for a human at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        tail = "".join(f"  {k}={_short(v)}" for k, v in fields.items())
        message = redact(record.getMessage())
        return f"{_iso(record.created)} {record.levelname.lower():<7} {message}{tail}"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    out = dict(fields) if isinstance(fields, dict) else {}
    for key, value in vars(record).items():  # plain `extra={...}` keys too
        if key not in _STANDARD and key != "fields":
            out.setdefault(key, value)
    return redact_data(out)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


def _iso(created: float) -> str:
    millis = int(created % 1 * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


def setup(
    stream: IO[str] | None = None, *, level: str | None = None, fmt: str | None = None
) -> logging.Logger:
    """Configure the `dms_reconciler` logger once for a long-running process and return it."""
    stream = stream or sys.stderr
    fmt = (fmt or os.environ.get("DMS_RECONCILER_LOG_FORMAT") or "").lower()
    if fmt not in ("json", "text"):
        fmt = "text" if _isatty(stream) else "json"
    level = (level or os.environ.get("DMS_RECONCILER_LOG_LEVEL") or "INFO").upper()
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level, logging.INFO))
    logger.propagate = False
    return logger


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}")


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def safe_traceback(exc: BaseException) -> str:
    """A traceback for a bug report without any exception's message or argument.

    Messages of internal errors can quote the data being handled (a password, a hash from
    postfix-accounts.cf); the frames (file, line, function, source line of our code) and the
    exception types are enough to find the bug.
    """
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    lines: list[str] = []
    for index, error in enumerate(reversed(chain)):
        if index:
            lines.append("which led to:")
        lines.append("Traceback (most recent call last):")
        for frame in traceback.extract_tb(error.__traceback__):
            lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
            if frame.line:
                lines.append(f"    {frame.line.strip()}")
        kind = type(error)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        lines.append(f"{name} (message not shown: it may quote a secret)")
    return "\n".join(lines)

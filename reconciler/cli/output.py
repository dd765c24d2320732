"""What every command prints the same way: colour, errors and warnings, diagnostics, the machine
form of a failure, and the progress bar. Nothing printed holds a password or a hash."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from reconciler.errors import (
    Diagnostic,
    InvalidDesiredState,
    ReconcilerError,
    Severity,
    printable,
)
from reconciler.plan import FORMAT_VERSION

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

NO_COLOUR_FLAG: list[bool] = []  # set by --no-color on the group or any command


def err(message: str) -> None:
    head = paint("dms-reconciler: error:", err=True, fg="red", bold=True)
    click.echo(f"{head} {printable(message)}", err=True, color=colour(err=True) or None)


def warn(message: str) -> None:
    head = paint("warning:", err=True, fg="yellow", bold=True)
    click.echo(f"{head} {printable(message)}", err=True, color=colour(err=True) or None)


def colour(*, err: bool = False) -> bool:
    """Colour like other command-line tools: never with --no-color or NO_COLOR, always with
    FORCE_COLOR (not 0), otherwise only on a terminal whose TERM is not `dumb`."""
    if NO_COLOUR_FLAG or "NO_COLOR" in os.environ:
        return False
    force = os.environ.get("FORCE_COLOR")
    if force is not None and force.lower() not in ("0", "false", "no"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    return (sys.stderr if err else sys.stdout).isatty()


def paint(text: str, *, err: bool = False, **style: Any) -> str:
    return click.style(text, **style) if colour(err=err) else text


def say(text: str, *, err: bool = False, **style: Any) -> None:
    """One final line (a summary, a verdict), coloured where colour is on."""
    click.echo(paint(text, err=err, **style), err=err, color=colour(err=err) or None)


def diagnostic(d: Diagnostic, *, err: bool = False) -> None:
    """`FILE:LINE:COL: error: ...` with the severity coloured (red errors, yellow warnings)."""
    line = d.format()
    if colour(err=err):
        severity = d.severity.value
        fg = "red" if d.severity is Severity.ERROR else "yellow"
        line = line.replace(f": {severity}: ", f": {click.style(severity, fg=fg, bold=True)}: ", 1)
    click.echo(line, err=err, color=colour(err=err) or None)


def errors_in_format(command: Any) -> Any:
    """With --format json or markdown, a failure is also reported on stdout in that format (CI
    posts stdout); stderr gets the usual text from `main` either way."""

    @functools.wraps(command)
    def run(*args: Any, **params: Any) -> Any:
        fmt, file = params["fmt"], params.get("plan_file") or params["file"]
        try:
            return command(*args, **params)
        except ReconcilerError as exc:
            if fmt in ("json", "markdown"):
                from reconciler import render

                report = error_report(exc, file)
                if fmt == "json":
                    click.echo(json.dumps(report, indent=2))
                else:
                    click.echo(render.markdown_error(report), nl=False)
            raise

    return run


def error_report(exc: ReconcilerError, file: str) -> dict[str, Any]:
    """The machine form of a failure: validate's report (`valid`, `errors`, `warnings`) when
    the desired file is invalid, otherwise the error's message alone (docs/plan-json.md)."""
    diagnostics = exc.diagnostics if isinstance(exc, InvalidDesiredState) else []
    return {
        "format_version": FORMAT_VERSION,
        "error": printable(str(exc)),
        "file": file,
        "valid": not isinstance(exc, InvalidDesiredState),
        "errors": [d.to_dict() for d in diagnostics if d.severity is Severity.ERROR],
        "warnings": [d.to_dict() for d in diagnostics if d.severity is Severity.WARNING],
    }


def progress_on_terminal(fmt: str) -> None:
    """A bar on stderr while many secrets are hashed or verified: only on a terminal and with
    text output (JSON and Markdown stay machine-readable, and a log file gets no bar lines)."""
    if fmt != "text" or not sys.stderr.isatty():
        return
    from contextlib import contextmanager

    from reconciler.passwords import sources as passwords

    @contextmanager
    def bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
        with click.progressbar(length=total, label=label, file=sys.stderr) as shown:
            yield shown.update

    passwords.show_progress(bar)

"""`dms-reconciler validate`: check mailserver.yaml offline, one file or the files pre-commit
passes."""

from __future__ import annotations

import json
from typing import Any

import click

from reconciler.cli import output
from reconciler.cli.options import file_option, format_option, no_colour_option
from reconciler.errors import InvalidDesiredState, Severity


@click.command()
@no_colour_option
@file_option
@format_option("text", "json")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
def validate(file: str, fmt: str, files: tuple[str, ...]) -> int:
    """Check mailserver.yaml (schema and mail rules). Offline; needs no secrets.

    FILES, when given, are checked instead of -f (pre-commit passes the staged files); the exit
    status is 1 when any of them is invalid. With --format json and several files, a JSON list.
    """
    results = [_validate_one(path, fmt) for path in (files or (file,))]
    if fmt == "json":
        reports = [report for _, report in results]
        click.echo(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    return 1 if any(code for code, _ in results) else 0


def _validate_one(file: str, fmt: str) -> tuple[int, dict[str, Any]]:
    """Validate one file: print the text form, return the exit status and the JSON report."""
    try:
        from reconciler.load.desired import load_desired

        loaded = load_desired(file)
    except InvalidDesiredState as exc:
        errors = [d for d in exc.diagnostics if d.severity is Severity.ERROR]
        if fmt != "json":
            for d in exc.diagnostics:
                output.diagnostic(d)
            count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
            output.say(f"{file}: {count}; nothing was changed", fg="red", bold=True)
        return 1, {
            "valid": False,
            "file": file,
            "errors": [d.to_dict() for d in errors],
            "warnings": [d.to_dict() for d in exc.diagnostics if d.severity is Severity.WARNING],
        }
    state = loaded.state
    if fmt != "json":
        for d in loaded.warnings:
            output.diagnostic(d, err=True)
        output.say(f"{file} is valid: {state.summary()}.", fg="green")
    return 0, {
        "valid": True,
        "file": file,
        "errors": [],
        "warnings": [d.to_dict() for d in loaded.warnings],
        "summary": {
            "domains": len(state.domains),
            "accounts": len(state.accounts),
            "aliases": len(state.aliases),
            "catch_all": len(state.catch_all),
            "devnull": len(state.devnull),
            "sa_learn": len(state.sa_learn),
            "quarantine": state.quarantine is not None,
        },
    }

"""The `dms-reconciler` command line: a thin layer over `desired`, `reconcile` and `render`.

Exit status follows Terraform: 0 success, 1 error or refusal, and with `plan --detailed-exitcode`
2 when there are changes. Usage mistakes also exit 1, so 2 always means "changes". Every error is a
message, never a traceback, and nothing printed holds a password or a hash.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from reconciler import __version__
from reconciler.errors import (
    Diagnostic,
    InvalidDesiredState,
    ReconcilerError,
    Severity,
    printable,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from reconciler.cli.baseline import BasePlanned
    from reconciler.gitrev import GitRevision
    from reconciler.reconcile import Target

# Each command imports what it needs (the loader, the planner, the executor, passlib ...) in its
# own body: `--version`, `--help` and `validate` do not pay for what only `apply` uses.

DEFAULT_FILE = "mailserver.yaml"
DEFAULT_CONFIG_DIR = "docker-data/dms/config"
DEFAULT_CRON_FILE = "docker-data/dms/cron/sa-learn"


def _common(func: Any) -> Any:
    """-f, --config-dir and --cron-file, each with an environment variable for the container."""
    func = click.option(
        "--cron-file",
        envvar="DMS_CRON_FILE",
        default=DEFAULT_CRON_FILE,
        show_default=True,
        help="The sa-learn cron file (bind-mounted to /etc/cron.d/sa-learn). Env: DMS_CRON_FILE.",
    )(func)
    func = click.option(
        "--config-dir",
        envvar="DMS_CONFIG_DIR",
        default=DEFAULT_CONFIG_DIR,
        show_default=True,
        help="The DMS config volume. Env: DMS_CONFIG_DIR.",
    )(func)
    return func


def _file_option(func: Any) -> Any:
    return click.option(
        "-f",
        "--file",
        "file",
        envvar="DMS_RECONCILER_FILE",
        default=DEFAULT_FILE,
        show_default=True,
        help="The desired-state file. Env: DMS_RECONCILER_FILE.",
    )(func)


def _dms_target_options(func: Any) -> Any:
    """plan/apply: --container and --container-label, to read the DMS container's release and
    settings (not looked up unless one is given)."""
    func = click.option(
        "--container-label",
        default=None,
        envvar="DMS_CONTAINER_LABEL",
        metavar="KEY=VALUE",
        help="Find the DMS container by this label (e.g. com.docker.compose.service=mailserver) "
        "and plan for its DMS release and settings. Env: DMS_CONTAINER_LABEL.",
    )(func)
    func = click.option(
        "--container",
        default=None,
        envvar="DMS_CONTAINER",
        metavar="NAME",
        help="The DMS container: its release and settings (docker inspect) go into the plan's "
        "`target` and warnings. Env: DMS_CONTAINER.",
    )(func)
    return func


def _dms_facts(container: str | None, label: str | None) -> Callable[[], Any] | None:
    """A reader of the DMS container's facts, asked once per command; None when neither
    --container nor --container-label was given."""
    if not container and not label:
        return None
    from functools import cache

    from reconciler.watch.dms import Dms

    @cache
    def read() -> Any:
        dms = Dms(container=container, label=label)
        try:
            return dms.read_facts()
        finally:
            dms.close()

    return read


def _say_target(planned: Any, fmt: str) -> None:
    target = planned.plan.target
    if fmt == "text" and target is not None:
        if target.get("found"):
            settings = " ".join(f"{k}={v}" for k, v in target["settings"].items())
            click.echo(f"DMS {target['release']} ({target['container']}): {settings}", err=True)
        else:
            click.echo(f"DMS settings unknown: {target['reason']}", err=True)


def _err(message: str) -> None:
    head = _paint("dms-reconciler: error:", err=True, fg="red", bold=True)
    click.echo(f"{head} {printable(message)}", err=True, color=_colour(err=True) or None)


def _warn(message: str) -> None:
    head = _paint("warning:", err=True, fg="yellow", bold=True)
    click.echo(f"{head} {printable(message)}", err=True, color=_colour(err=True) or None)


_NO_COLOUR_FLAG: list[bool] = []  # set by --no-color on the group or any command


def _colour(*, err: bool = False) -> bool:
    """Colour like other command-line tools: never with --no-color or NO_COLOR, always with
    FORCE_COLOR (not 0), otherwise only on a terminal whose TERM is not `dumb`."""
    if _NO_COLOUR_FLAG or "NO_COLOR" in os.environ:
        return False
    force = os.environ.get("FORCE_COLOR")
    if force is not None and force.lower() not in ("0", "false", "no"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    return (sys.stderr if err else sys.stdout).isatty()


def _paint(text: str, *, err: bool = False, **style: Any) -> str:
    return click.style(text, **style) if _colour(err=err) else text


def _say(text: str, *, err: bool = False, **style: Any) -> None:
    """One final line (a summary, a verdict), coloured where colour is on."""
    click.echo(_paint(text, err=err, **style), err=err, color=_colour(err=err) or None)


def _diagnostic(d: Diagnostic, *, err: bool = False) -> None:
    """`FILE:LINE:COL: error: ...` with the severity coloured (red errors, yellow warnings)."""
    line = d.format()
    if _colour(err=err):
        severity = d.severity.value
        fg = "red" if d.severity is Severity.ERROR else "yellow"
        line = line.replace(f": {severity}: ", f": {click.style(severity, fg=fg, bold=True)}: ", 1)
    click.echo(line, err=err, color=_colour(err=err) or None)


def _no_colour_option(func: Any) -> Any:
    def remember(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            _NO_COLOUR_FLAG.append(True)

    return click.option(
        "--no-color",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=remember,
        help="No colour (also: NO_COLOR=1; FORCE_COLOR=1 colours off a terminal).",
    )(func)


def _secrets_dir_option(func: Any) -> Any:
    """--secrets-dir: password_file only from this folder (the sidecar's secret mount)."""

    def confine(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        from reconciler.passwords.sources import SECRETS_DIR_ENV

        if value:
            os.environ[SECRETS_DIR_ENV] = os.path.abspath(value)

    return click.option(
        "--secrets-dir",
        envvar="DMS_RECONCILER_SECRETS_DIR",
        type=click.Path(exists=True, file_okay=False),
        expose_value=False,
        callback=confine,
        help="Read password_file only from inside DIR (symlinks resolved), e.g. /run/secrets; "
        "any other path is refused. Env: DMS_RECONCILER_SECRETS_DIR.",
    )(func)


def _errors_in_format(command: Any) -> Any:
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

                report = _error_report(exc, file)
                if fmt == "json":
                    click.echo(json.dumps(report, indent=2))
                else:
                    click.echo(render.markdown_error(report), nl=False)
            raise

    return run


def _error_report(exc: ReconcilerError, file: str) -> dict[str, Any]:
    """The machine form of a failure: validate's report (`valid`, `errors`, `warnings`) when
    the desired file is invalid, otherwise the error's message alone (docs/plan-json.md)."""
    diagnostics = exc.diagnostics if isinstance(exc, InvalidDesiredState) else []
    return {
        "format_version": "1.0",
        "error": printable(str(exc)),
        "file": file,
        "valid": not isinstance(exc, InvalidDesiredState),
        "errors": [d.to_dict() for d in diagnostics if d.severity is Severity.ERROR],
        "warnings": [d.to_dict() for d in diagnostics if d.severity is Severity.WARNING],
    }


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dms-reconciler")
@_no_colour_option
def cli() -> None:
    """GitOps for docker-mailserver: validate, plan and apply mailserver.yaml to a DMS volume."""


@cli.command()
@_no_colour_option
@_file_option
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
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
                _diagnostic(d)
            count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
            _say(f"{file}: {count}; nothing was changed", fg="red", bold=True)
        return 1, {
            "valid": False,
            "file": file,
            "errors": [d.to_dict() for d in errors],
            "warnings": [d.to_dict() for d in exc.diagnostics if d.severity is Severity.WARNING],
        }
    state = loaded.state
    if fmt != "json":
        for d in loaded.warnings:
            _diagnostic(d, err=True)
        _say(f"{file} is valid: {state.summary()}.", fg="green")
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


@cli.command()
@_no_colour_option
@_file_option
@_common
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
)
@click.option(
    "--out", "out", type=click.Path(dir_okay=False), help="Save the plan for `apply PLAN`."
)
@click.option(
    "--detailed-exitcode", is_flag=True, help="Exit 0 with no changes, 2 with changes, 1 on error."
)
@click.option(
    "--prune",
    is_flag=True,
    envvar="DMS_RECONCILER_PRUNE",
    help="Also delete entries this tool did not write.",
)
@click.option(
    "--offline/--no-offline",
    default=None,
    help="Show unreadable password_file/"
    "password_env secrets as '(sensitive, resolved at apply)' instead of failing (CI). "
    "On by default with --against-ref and --against-dir.",
)
@click.option(
    "--against-ref",
    metavar="REF",
    default=None,
    help="Plan against mailserver.yaml as it is at git REF (e.g. origin/main), rendered "
    "into a throw-away volume: shows what this change does, with no live volume and no "
    "secrets (CI).",
)
@click.option(
    "--against-dir",
    metavar="DIR",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Plan against DIR, a copy of a config volume. Its cron file is --cron-file if "
    "given, else DIR/../cron/sa-learn.",
)
@_dms_target_options
@_secrets_dir_option
@click.pass_context
@_errors_in_format
def plan(
    ctx: click.Context,
    file: str,
    config_dir: str,
    cron_file: str,
    fmt: str,
    out: str | None,
    detailed_exitcode: bool,
    prune: bool,
    offline: bool | None,
    against_ref: str | None,
    against_dir: str | None,
    container: str | None,
    container_label: str | None,
) -> int:
    """Show what apply would change in the config volume. Writes nothing."""
    from reconciler import render
    from reconciler.cli import saved_plan
    from reconciler.reconcile import Target, plan_once

    _progress_on_terminal(fmt)

    headline: str | None = None
    target: Target | None = None
    if against_ref is not None or against_dir is not None:
        based = _plan_against(
            ctx, file, config_dir, cron_file, out, prune, offline, against_ref, against_dir
        )
        planned, headline = based.planned, based.headline()
        data = based.to_dict(_desired_info(planned))
    else:
        target = Target(
            file,
            config_dir,
            cron_file,
            prune=prune,
            offline=bool(offline),
            dms_facts=_dms_facts(container, container_label),
        )
        planned = plan_once(target)
        data = planned.plan.to_dict(desired=_desired_info(planned), volume=_volume_info(target))
        _note_suspension(data, config_dir)
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    elif fmt == "markdown":
        click.echo(render.markdown(data))
    else:
        for warning in planned.loaded.warnings:
            _diagnostic(warning, err=True)
        _say_target(planned, fmt)
        if headline:
            click.echo(headline + "\n")
        click.echo(render.text(data, colour=_colour()), nl=False, color=_colour() or None)
    if out and target is not None:
        saved_plan.save(out, planned, target, data)
        if fmt == "text":
            click.echo(
                f"\nSaved the plan to {out}. Apply exactly it with: dms-reconciler apply {out}"
            )
    if detailed_exitcode and planned.plan.has_changes:
        return 2
    return 0


def _plan_against(
    ctx: click.Context,
    file: str,
    config_dir: str,
    cron_file: str,
    out: str | None,
    prune: bool,
    offline: bool | None,
    against_ref: str | None,
    against_dir: str | None,
) -> BasePlanned:
    """`plan --against-ref` / `--against-dir`: check the options, then plan against the base."""
    from click.core import ParameterSource

    from reconciler.cli import baseline

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) in (
            ParameterSource.COMMANDLINE,
            ParameterSource.ENVIRONMENT,
        )

    option = "--against-ref" if against_ref is not None else "--against-dir"
    if against_ref is not None and against_dir is not None:
        raise click.UsageError("give --against-ref or --against-dir, not both")
    if out:
        raise click.UsageError(
            f"--out cannot be used with {option}: a saved plan is applied to "
            "the volume it was made against, and this one is not the live one"
        )
    if ctx.get_parameter_source("config_dir") is ParameterSource.COMMANDLINE:
        raise click.UsageError(
            f"--config-dir cannot be used with {option}, which plans against another volume"
        )
    if against_ref is not None:
        if offline is False:
            raise click.UsageError(
                "--no-offline cannot be used with --against-ref: the base "
                "version is rendered without secrets"
            )
        return baseline.plan_against_ref(
            file, against_ref, shown_config_dir=config_dir, shown_cron_file=cron_file, prune=prune
        )
    assert against_dir is not None
    return baseline.plan_against_dir(
        file,
        against_dir,
        cron_file=cron_file if given("cron_file") else None,
        offline=offline is not False,
        prune=prune,
    )


@cli.command()
@_no_colour_option
@_file_option
@_common
@click.argument("plan_file", metavar="[PLAN]", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--allow-deletions",
    type=click.IntRange(min=0),
    default=None,
    help="Allow a plan that deletes up to N accounts, and up to N entries of each other file "
    "(masters, relay, regexp, restrict, DKIM tables); overrides policy.max_deletions.",
)
@click.option(
    "--prune",
    is_flag=True,
    envvar="DMS_RECONCILER_PRUNE",
    help="Also delete entries this tool did not write.",
)
@click.option(
    "--lock-timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to wait for DMS's change-detector lock.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@_dms_target_options
@_secrets_dir_option
@click.pass_context
@_errors_in_format
def apply(
    ctx: click.Context,
    file: str,
    config_dir: str,
    cron_file: str,
    plan_file: str | None,
    allow_deletions: int | None,
    prune: bool,
    lock_timeout: float,
    fmt: str,
    container: str | None,
    container_label: str | None,
) -> int:
    """Make the config volume match mailserver.yaml (or apply exactly a saved PLAN)."""
    if plan_file:  # the saved plan fixes all of these: refuse rather than silently ignore them
        ignored = [
            name
            for param, name in (
                ("file", "-f/--file"),
                ("config_dir", "--config-dir"),
                ("cron_file", "--cron-file"),
                ("prune", "--prune"),
            )
            if ctx.get_parameter_source(param) is click.core.ParameterSource.COMMANDLINE
        ]
        if ignored:
            raise click.UsageError(
                f"{', '.join(ignored)} cannot be used with a saved PLAN: it is applied exactly "
                "as planned (file, volume and prune were fixed by `plan --out`); make a new plan "
                "with those options instead"
            )
    from reconciler import render
    from reconciler.cli import saved_plan
    from reconciler.reconcile import Target, apply_once

    _progress_on_terminal(fmt)

    def waiting(message: str) -> None:
        click.echo(message, err=True)

    if plan_file:
        applied, target = saved_plan.apply_saved(
            plan_file, allow_deletions=allow_deletions, lock_timeout=lock_timeout, on_wait=waiting
        )
        git = None
    else:
        from reconciler.gitrev import revision_of

        target = Target(
            file,
            config_dir,
            cron_file,
            prune=prune,
            dms_facts=_dms_facts(container, container_label),
        )
        git = revision_of(file)
        applied = apply_once(
            target,
            allow_deletions=allow_deletions,
            lock_timeout=lock_timeout,
            on_wait=waiting,
            revision=git.revision,
        )
    data = applied.planned.plan.to_dict(
        desired=_desired_info(applied.planned, git), volume=_volume_info(target)
    )
    data["applied"] = {
        "files_written": list(applied.result.written),
        "attempts": applied.attempts,
        "converged": applied.converged,
        "carried_lines": applied.result.carried_lines,
        "state_written": applied.result.state_written,
    }
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
        return 0
    _say_target(applied.planned, fmt)
    if data["changes"]:
        click.echo(render.text(data, colour=_colour()), nl=False, color=_colour() or None)
        click.echo("")
    else:  # no plan to show, but what it warns about still matters (stderr: stdout stays terse)
        for warning in data["warnings"]:
            click.echo(f"Warning: {warning}", err=True)
    s = data["summary"]
    if applied.result.written or data["changes"]:
        files = (
            ", ".join(
                applied.result.paths.get(n, n) if n == "cron" else n for n in applied.result.written
            )
            or "none"
        )
        _say(
            f"Apply complete! Entries: {s['add']} added, {s['change']} changed, "
            f"{s['destroy']} destroyed. Files written: {files}.",
            fg="green",
            bold=True,
        )
    elif applied.result.state_written:  # taking ownership of matching entries is not a change
        _say(
            "No changes. The config volume matches mailserver.yaml; only the record of the "
            "entries dms-reconciler manages was written (dms-reconciler.state.json).",
            fg="green",
        )
    else:
        _say("No changes. The config volume matches mailserver.yaml.", fg="green")
    return 0


@cli.command()
@_no_colour_option
@click.option(
    "--config-dir",
    envvar="DMS_CONFIG_DIR",
    default=DEFAULT_CONFIG_DIR,
    show_default=True,
    help="The DMS config volume. Env: DMS_CONFIG_DIR.",
)
@click.option("--reason", default="", help="Why (shown by apply, the sidecar and notifications).")
@click.option(
    "--lock-timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to wait for an apply in flight to finish.",
)
def suspend(config_dir: str, reason: str, lock_timeout: float) -> int:
    """Stop every write to the config volume (a DMS upgrade, an incident) until `resume`.

    Writes the marker dms-reconciler.suspended into the volume. While it is there, apply
    refuses and the sidecar only plans and reports. When this returns, no apply is writing.
    """
    from reconciler.volume import suspend as suspension

    _require_volume(config_dir)
    found, wrote = suspension.suspend(config_dir, reason=reason, lock_timeout=lock_timeout)
    if found.warning:
        _warn(found.warning)
    if wrote:
        _say(
            f"Suspended: {config_dir} is {found.describe()}. Nothing is written until "
            "`dms-reconciler resume`.",
            fg="yellow",
            bold=True,
        )
    else:
        _say(f"Already {found.describe()}; left as it is.", fg="yellow")
    return 0


@cli.command()
@_no_colour_option
@click.option(
    "--config-dir",
    envvar="DMS_CONFIG_DIR",
    default=DEFAULT_CONFIG_DIR,
    show_default=True,
    help="The DMS config volume. Env: DMS_CONFIG_DIR.",
)
def resume(config_dir: str) -> int:
    """End a suspension: apply and the sidecar write again (the sidecar at its next look)."""
    from reconciler.volume import suspend as suspension

    _require_volume(config_dir)
    ended = suspension.resume(config_dir)
    if ended is None:
        _say(f"{config_dir} is not suspended; nothing to do.")
    else:
        _say(f"Resumed: {config_dir} was {ended.describe()}.", fg="green")
    return 0


def _require_volume(config_dir: str) -> None:
    if not os.path.isdir(config_dir):
        raise ReconcilerError(
            f"{config_dir} is not a folder: give the config volume with --config-dir"
        )


@cli.command()
@_no_colour_option
@_file_option
@_common
@click.option(
    "--interval",
    type=click.FloatRange(min=1.0),
    default=60.0,
    show_default=True,
    envvar="DMS_RECONCILER_INTERVAL",
    help="Seconds between re-checks that repair drift (hand edits). Env: DMS_RECONCILER_INTERVAL.",
)
@click.option(
    "--listen",
    default=None,
    envvar="DMS_RECONCILER_LISTEN",
    metavar="ADDR",
    help="Serve /healthz, /readyz and /metrics on HOST:PORT, e.g. 0.0.0.0:9000. "
    "Env: DMS_RECONCILER_LISTEN.",
)
@click.option(
    "--container",
    default=None,
    envvar="DMS_CONTAINER",
    metavar="NAME",
    help="The DMS container's name (default: found by --container-label through the "
    "Docker socket). Env: DMS_CONTAINER.",
)
@click.option(
    "--container-label",
    default="com.docker.compose.service=mailserver",
    envvar="DMS_CONTAINER_LABEL",
    show_default=True,
    metavar="KEY=VALUE",
    help="Label that finds the DMS container. Env: DMS_CONTAINER_LABEL.",
)
@click.option(
    "--stuck-after",
    type=click.FloatRange(min=1.0),
    default=300.0,
    show_default=True,
    envvar="DMS_RECONCILER_STUCK_AFTER",
    help="Seconds one step of the loop (a reconcile, a look at DMS) may take before /healthz "
    "fails: the loop is wedged. Env: DMS_RECONCILER_STUCK_AFTER.",
)
@click.option(
    "--notify-file",
    default=None,
    envvar="DMS_RECONCILER_NOTIFY_FILE",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Apprise URLs to notify (applied, failed, drift repaired, suspended), one or more a "
    "line; added to those in DMS_RECONCILER_NOTIFY. Keep it out of git (tokens). "
    "Env: DMS_RECONCILER_NOTIFY_FILE.",
)
@click.option(
    "--fast-apply/--no-fast-apply",
    default=True,
    show_default=True,
    envvar="DMS_RECONCILER_FAST_APPLY",
    help="After writing, bring DMS's generated files (userdb, vhost, ...) up to date in the DMS "
    "container while holding DMS's lock: seconds instead of minutes on a big server, and no "
    "outage for existing users. Only for DMS versions whose generators it was proven identical "
    "to (v15.1, v16); otherwise, and on any failure, DMS's change detector applies the change. "
    "Env: DMS_RECONCILER_FAST_APPLY (0 to turn off).",
)
@_secrets_dir_option
def watch(
    file: str,
    config_dir: str,
    cron_file: str,
    interval: float,
    listen: str | None,
    container: str | None,
    container_label: str,
    stuck_after: float,
    notify_file: str | None,
    fast_apply: bool,
) -> int:
    """The sidecar: apply every change of mailserver.yaml, repair drift, confirm DMS applied it."""
    import prometheus_client

    from reconciler import log
    from reconciler.reconcile import Target
    from reconciler.watch.dms import Dms
    from reconciler.watch.health import Metrics
    from reconciler.watch.loop import Watcher, WatchOptions
    from reconciler.watch.notify import Notifier

    log.setup()
    prometheus_client.disable_created_metrics()  # `*_created` series only add noise here
    metrics = Metrics()
    notifier = Notifier.from_config(  # a broken URL stops here, before anything runs
        os.environ,
        notify_file,
        log=log.get("notify"),
        on_result=lambda result: metrics.notifications.labels(result=result).inc(),
    )
    target = Target(file, config_dir, cron_file)
    options = WatchOptions(
        interval=interval, listen=listen, stuck_after=stuck_after, fast_apply=fast_apply
    )
    dms = Dms(container=container, label=container_label)
    return Watcher(target, options, dms=dms, metrics=metrics, notifier=notifier).run()


@cli.command()
@_no_colour_option
@_file_option
@_common
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def dns(file: str, config_dir: str, cron_file: str, fmt: str) -> int:
    """Show the DNS records to publish: each `dkim:` domain's TXT record from the key on the
    volume, with MX, SPF and DMARC suggestions. Reads no secret; shows no private key."""
    from reconciler import dnsrecords
    from reconciler.load.desired import load_desired
    from reconciler.volume.observe import observe

    loaded = load_desired(file)
    found, problems, warnings = dnsrecords.records(loaded.state, observe(config_dir, cron_file))
    if fmt == "json":
        data = {"records": [r.to_dict() for r in found], "problems": problems}
        click.echo(json.dumps({**data, "warnings": warnings}, indent=2))
    else:
        click.echo(dnsrecords.text(found, problems, warnings), nl=False)
    return 1 if problems else 0


@cli.command(name="export")
@_no_colour_option
@_common
@click.option(
    "-o",
    "--output",
    default=DEFAULT_FILE,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to write the exported mailserver.yaml (created mode 0600: it holds hashes); "
    "- for stdout.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--hostname", default=None, help="The DMS container's FQDN, recorded as `hostname`.")
@click.option(
    "--adopt/--no-adopt",
    default=True,
    show_default=True,
    help="Record the exported entries as managed by dms-reconciler (in its state file), so "
    "removing one from the file deletes it at the next apply. --no-adopt leaves them "
    "unmanaged until the first apply.",
)
def export_cmd(
    config_dir: str, cron_file: str, output: str, force: bool, hostname: str | None, adopt: bool
) -> int:
    """Write a mailserver.yaml that adopts an existing config volume (hashes kept)."""
    from reconciler.planner.export import checked_yaml, export_state, shown_warnings
    from reconciler.reconcile import take_ownership
    from reconciler.render import MAX_LISTED
    from reconciler.volume.observe import observe

    observed = observe(config_dir, cron_file)
    exported = export_state(observed, hostname=hostname)
    if exported.state.accounts:  # what we write must validate: the rest is left unmanaged
        exported, text, loaded = checked_yaml(exported, observed, output)
    for warning in shown_warnings(exported.warnings, MAX_LISTED):
        _warn(warning)
    if not exported.state.accounts:
        raise ReconcilerError(
            f"{config_dir} has no account that can be adopted; DMS needs at least one"
        )
    if output == "-":  # stdout, like most tools; the summary goes to stderr
        if sys.stdout.isatty():
            raise ReconcilerError(
                "refusing to print password hashes on a terminal; redirect stdout "
                "(export -o - > FILE, or into a pipe) or give -o FILE"
            )
        click.echo(text, nl=False)
        click.echo(f"Exported: {exported.state.summary()}. It holds password hashes.", err=True)
    else:
        _write_private(output, text, force=force)
        click.echo(
            f"Wrote {output}: {exported.state.summary()}. It holds password hashes (mode 0600)."
        )
    summary = click.echo if output != "-" else functools.partial(click.echo, err=True)
    if not adopt:
        summary(
            "The entries stay unmanaged until the first apply of this file (--no-adopt): "
            "one removed from it before then is kept, not deleted."
        )
        return 0
    try:
        take_ownership(loaded, config_dir, cron_file)
    except ReconcilerError as exc:
        _warn(
            f"ownership was not recorded ({exc}): the entries stay unmanaged until the first "
            "apply of this file, and one removed from it before then is kept, not deleted"
        )
        return 0
    summary(
        "dms-reconciler now manages these entries (dms-reconciler.state.json): removing one "
        "from the file deletes it at the next apply."
    )
    return 0


def _write_private(path: str, text: str, *, force: bool) -> None:
    import stat

    from reconciler.readfile import kind_of

    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:  # O_NONBLOCK: a FIFO with no reader fails at once instead of waiting for one
        fd = os.open(path, flags | (0 if force else os.O_EXCL), 0o600)
    except FileExistsError:
        raise ReconcilerError(
            f"{path} exists; give another -o or --force to overwrite it"
        ) from None
    except OSError as exc:
        raise ReconcilerError(f"cannot write {path}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ReconcilerError(f"cannot write {path}: it is {kind_of(mode)}, not a regular file")
    os.set_blocking(fd, True)
    os.ftruncate(fd, 0)  # only now: truncating before the check would empty a device
    try:
        os.fchmod(fd, 0o600)  # --force onto an existing, readable file: it holds hashes now
    except OSError as exc:
        os.close(fd)
        raise ReconcilerError(f"cannot make {path} private (mode 0600): {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _progress_on_terminal(fmt: str) -> None:
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


def _desired_info(planned: Any, git: GitRevision | None = None) -> dict[str, Any]:
    """`file`, `sha256`, and `revision` (`<commit>` or `<commit>-dirty`) when the file is in a
    git work tree, or `revision_error` when git could not say (warned about on stderr)."""
    from reconciler.gitrev import revision_of

    info = {"file": planned.loaded.filename, "sha256": planned.loaded.sha256}
    git = git or revision_of(planned.loaded.filename)
    if git.revision:
        info["revision"] = git.revision
    if git.problem:
        info["revision_error"] = git.problem
        _warn(f"{git.problem}; the plan shows no revision")
    return info


def _note_suspension(data: dict[str, Any], config_dir: str) -> None:
    """A plan of a suspended volume says so: apply would refuse it."""
    from reconciler.volume import suspend

    found = suspend.read(config_dir)
    if found is None:
        return
    data["suspended"] = found.to_dict()
    data["notes"].append(
        f"the config volume is {found.describe()}: apply refuses until `dms-reconciler resume`"
        + (f" ({found.warning})" if found.warning else "")
    )


def _volume_info(target: Target) -> dict[str, Any]:
    return {"config_dir": target.config_dir, "cron_file": target.cron_path}


class Terminated(BaseException):
    """SIGTERM: unwind like Ctrl-C, so the DMS lock is released and temp files are removed."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every failure into a message and an exit status."""
    # Without this, SIGTERM (docker stop, kill, systemd) would end the process on the spot and
    # leave DMS's lock behind: DMS's change detector would then wait a minute for it to go stale.
    signal.signal(signal.SIGTERM, _raise_terminated)
    _NO_COLOUR_FLAG.clear()
    try:
        code = cli.main(args=argv, prog_name="dms-reconciler", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        exc.show()
        code = 1
    except click.exceptions.Abort:  # click turns Ctrl-C (KeyboardInterrupt) into Abort
        _err("interrupted; the lock was released and no file was left half-written")
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = 1
    except InvalidDesiredState as exc:
        for d in exc.diagnostics:
            _diagnostic(d, err=True)
        _err(f"{exc}; nothing was changed")
        code = 1
    except ReconcilerError as exc:
        _err(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:
        _err("interrupted; the lock was released and no file was left half-written")
        code = 130
    except Terminated:
        _err("terminated (SIGTERM); the lock was released and no file was left half-written")
        code = 143
    except Exception as exc:  # a bug: say so in one line, never a traceback with local data
        _err(
            f"internal error ({type(exc).__name__}); please report it. Set DMS_RECONCILER_DEBUG=1 "
            "for details"
        )
        if os.environ.get("DMS_RECONCILER_DEBUG"):
            from reconciler.log import safe_traceback  # frames and types, never a message

            click.echo(safe_traceback(exc), err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)

"""`dms-reconciler plan` and `apply`: show what would change in the config volume, and make it
so. Both read the same desired file, volume and DMS target, and print the plan's JSON form."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from reconciler.cli import output
from reconciler.cli.options import (
    dms_target_options,
    file_option,
    format_option,
    no_colour_option,
    secrets_dir_option,
    volume_options,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from reconciler.cli.baseline import BasePlanned
    from reconciler.gitrev import GitRevision
    from reconciler.reconcile import Target


def _prune_option(func: Any) -> Any:
    return click.option(
        "--prune",
        is_flag=True,
        envvar="DMS_RECONCILER_PRUNE",
        help="Also delete entries this tool did not write.",
    )(func)


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


@click.command()
@no_colour_option
@file_option
@volume_options
@format_option("text", "json", "markdown")
@click.option(
    "--out", "out", type=click.Path(dir_okay=False), help="Save the plan for `apply PLAN`."
)
@click.option(
    "--detailed-exitcode", is_flag=True, help="Exit 0 with no changes, 2 with changes, 1 on error."
)
@_prune_option
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
@dms_target_options
@secrets_dir_option
@click.pass_context
@output.errors_in_format
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
    from reconciler.reconcile import plan_once

    output.progress_on_terminal(fmt)

    headline: str | None = None
    target: Target | None = None
    if against_ref is not None or against_dir is not None:
        based = _plan_against(
            ctx, file, config_dir, cron_file, out, prune, offline, against_ref, against_dir
        )
        planned, headline = based.planned, based.headline()
        data = based.to_dict(_desired_info(planned))
    else:
        target = _target(
            file, config_dir, cron_file, prune, container, container_label, offline=bool(offline)
        )
        planned = plan_once(target)
        data = planned.plan.to_dict(desired=_desired_info(planned), volume=_volume_info(target))
        _note_suspension(data, target.volume.folder)
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    elif fmt == "markdown":
        click.echo(render.markdown(data))
    else:
        for warning in planned.loaded.warnings:
            output.diagnostic(warning, err=True)
        _say_target(planned, fmt)
        if headline:
            click.echo(headline + "\n")
        click.echo(
            render.text(data, colour=output.colour()), nl=False, color=output.colour() or None
        )
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


@click.command()
@no_colour_option
@file_option
@volume_options
@click.argument("plan_file", metavar="[PLAN]", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--allow-deletions",
    type=click.IntRange(min=0),
    default=None,
    help="Allow a plan that deletes up to N accounts, and up to N entries of each other file "
    "(masters, relay, regexp, restrict, DKIM tables); overrides policy.max_deletions.",
)
@_prune_option
@click.option(
    "--lock-timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to wait for DMS's change-detector lock.",
)
@format_option("text", "json")
@dms_target_options
@secrets_dir_option
@click.pass_context
@output.errors_in_format
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
    from reconciler.reconcile import apply_once

    output.progress_on_terminal(fmt)

    def waiting(message: str) -> None:
        click.echo(message, err=True)

    if plan_file:
        applied, target = saved_plan.apply_saved(
            plan_file, allow_deletions=allow_deletions, lock_timeout=lock_timeout, on_wait=waiting
        )
        git = None
    else:
        from reconciler.gitrev import revision_of

        target = _target(file, config_dir, cron_file, prune, container, container_label)
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
        click.echo(
            render.text(data, colour=output.colour()), nl=False, color=output.colour() or None
        )
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
        output.say(
            f"Apply complete! Entries: {s['add']} added, {s['change']} changed, "
            f"{s['destroy']} destroyed. Files written: {files}.",
            fg="green",
            bold=True,
        )
    elif applied.result.state_written:  # taking ownership of matching entries is not a change
        output.say(
            "No changes. The config volume matches mailserver.yaml; only the record of the "
            "entries dms-reconciler manages was written (dms-reconciler.state.json).",
            fg="green",
        )
    else:
        output.say("No changes. The config volume matches mailserver.yaml.", fg="green")
    return 0


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
        output.warn(f"{git.problem}; the plan shows no revision")
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
    return {"config_dir": target.volume.folder, "cron_file": target.volume.cron_file}


def _target(
    file: str,
    config_dir: str,
    cron_file: str,
    prune: bool,
    container: str | None,
    container_label: str | None,
    *,
    offline: bool = False,
) -> Target:
    """What plan and apply run against, from their common options."""
    from reconciler.configvolume import Volume
    from reconciler.reconcile import Target

    return Target(
        file,
        Volume(config_dir, cron_file),
        prune=prune,
        offline=offline,
        dms_facts=_dms_facts(container, container_label),
    )

"""`dms-reconciler export`: write a mailserver.yaml that adopts an existing config volume."""

from __future__ import annotations

import functools
import os
import sys

import click

from reconciler.cli.options import DEFAULT_FILE, no_colour_option, volume_options
from reconciler.cli.output import warn
from reconciler.errors import ReconcilerError


@click.command(name="export")
@no_colour_option
@volume_options
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
    from reconciler.configvolume import Volume
    from reconciler.planner.export import checked_yaml, export_state, shown_warnings
    from reconciler.reconcile import take_ownership
    from reconciler.render import MAX_LISTED
    from reconciler.volume.observe import observe

    volume = Volume(config_dir, cron_file)
    observed = observe(volume)
    exported = export_state(observed, hostname=hostname)
    if exported.state.accounts:  # what we write must validate: the rest is left unmanaged
        exported, text, loaded = checked_yaml(exported, observed, output)
    for warning in shown_warnings(exported.warnings, MAX_LISTED):
        warn(warning)
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
        take_ownership(loaded, volume)
    except ReconcilerError as exc:
        warn(
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

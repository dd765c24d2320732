"""`dms-reconciler suspend` and `resume`: stop every write to the config volume, and allow them
again."""

from __future__ import annotations

import os

import click

from reconciler.cli import output
from reconciler.cli.options import config_dir_option, no_colour_option
from reconciler.errors import ReconcilerError


@click.command()
@no_colour_option
@config_dir_option
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
        output.warn(found.warning)
    if wrote:
        output.say(
            f"Suspended: {config_dir} is {found.describe()}. Nothing is written until "
            "`dms-reconciler resume`.",
            fg="yellow",
            bold=True,
        )
    else:
        output.say(f"Already {found.describe()}; left as it is.", fg="yellow")
    return 0


@click.command()
@no_colour_option
@config_dir_option
def resume(config_dir: str) -> int:
    """End a suspension: apply and the sidecar write again (the sidecar at its next look)."""
    from reconciler.volume import suspend as suspension

    _require_volume(config_dir)
    ended = suspension.resume(config_dir)
    if ended is None:
        output.say(f"{config_dir} is not suspended; nothing to do.")
    else:
        output.say(f"Resumed: {config_dir} was {ended.describe()}.", fg="green")
    return 0


def _require_volume(config_dir: str) -> None:
    if not os.path.isdir(config_dir):
        raise ReconcilerError(
            f"{config_dir} is not a folder: give the config volume with --config-dir"
        )

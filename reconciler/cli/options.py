"""The options several commands share, each with its environment variable for the container."""

from __future__ import annotations

import os
from typing import Any

import click

from reconciler.cli import output

DEFAULT_FILE = "mailserver.yaml"
DEFAULT_CONFIG_DIR = "docker-data/dms/config"
DEFAULT_CRON_FILE = "docker-data/dms/cron/sa-learn"


def config_dir_option(func: Any) -> Any:
    return click.option(
        "--config-dir",
        envvar="DMS_CONFIG_DIR",
        default=DEFAULT_CONFIG_DIR,
        show_default=True,
        help="The DMS config volume. Env: DMS_CONFIG_DIR.",
    )(func)


def volume_options(func: Any) -> Any:
    """--config-dir and --cron-file, each with an environment variable for the container."""
    func = click.option(
        "--cron-file",
        envvar="DMS_CRON_FILE",
        default=DEFAULT_CRON_FILE,
        show_default=True,
        help="The sa-learn cron file (bind-mounted to /etc/cron.d/sa-learn). Env: DMS_CRON_FILE.",
    )(func)
    return config_dir_option(func)


def file_option(func: Any) -> Any:
    return click.option(
        "-f",
        "--file",
        "file",
        envvar="DMS_RECONCILER_FILE",
        default=DEFAULT_FILE,
        show_default=True,
        help="The desired-state file. Env: DMS_RECONCILER_FILE.",
    )(func)


def format_option(*choices: str) -> Any:
    """--format, as `fmt`, text by default."""
    return click.option(
        "--format", "fmt", type=click.Choice(list(choices)), default="text", show_default=True
    )


def dms_target_options(func: Any) -> Any:
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


def no_colour_option(func: Any) -> Any:
    def remember(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            output.NO_COLOUR_FLAG.append(True)

    return click.option(
        "--no-color",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=remember,
        help="No colour (also: NO_COLOR=1; FORCE_COLOR=1 colours off a terminal).",
    )(func)


def secrets_dir_option(func: Any) -> Any:
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

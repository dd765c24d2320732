"""`dms-reconciler watch`: the sidecar, run from the command line."""

from __future__ import annotations

import os

import click

from reconciler.cli.options import file_option, no_colour_option, secrets_dir_option, volume_options


@click.command()
@no_colour_option
@file_option
@volume_options
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
@secrets_dir_option
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
    from reconciler.configvolume import Volume
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
    target = Target(file, Volume(config_dir, cron_file))
    options = WatchOptions(
        interval=interval, listen=listen, stuck_after=stuck_after, fast_apply=fast_apply
    )
    dms = Dms(container=container, label=container_label)
    return Watcher(target, options, dms=dms, metrics=metrics, notifier=notifier).run()

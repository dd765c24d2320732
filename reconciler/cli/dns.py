"""`dms-reconciler dns`: the DNS records to publish for the hosted domains."""

from __future__ import annotations

import json

import click

from reconciler.cli.options import file_option, format_option, no_colour_option, volume_options


@click.command()
@no_colour_option
@file_option
@volume_options
@format_option("text", "json")
def dns(file: str, config_dir: str, cron_file: str, fmt: str) -> int:
    """Show the DNS records to publish: each `dkim:` domain's TXT record from the key on the
    volume, with MX, SPF and DMARC suggestions. Reads no secret; shows no private key."""
    from reconciler import dnsrecords
    from reconciler.configvolume import Volume
    from reconciler.load.desired import load_desired
    from reconciler.volume.observe import observe

    loaded = load_desired(file)
    found, problems, warnings = dnsrecords.records(
        loaded.state, observe(Volume(config_dir, cron_file))
    )
    if fmt == "json":
        data = {"records": [r.to_dict() for r in found], "problems": problems}
        click.echo(json.dumps({**data, "warnings": warnings}, indent=2))
    else:
        click.echo(dnsrecords.text(found, problems, warnings), nl=False)
    return 1 if problems else 0

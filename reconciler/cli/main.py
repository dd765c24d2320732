"""The `dms-reconciler` command line: a thin layer over `desired`, `reconcile` and `render`.

This module holds the command group and `main`, the entry point; each command lives in its own
module (validate, plan and apply, watch, dns, export, suspend and resume) and is added here. A
command module imports only click, errors and the shared cli.options and cli.output at its top;
each command imports what it needs (the loader, the planner, the executor, passlib ...) in its
own body: `--version`, `--help` and `validate` do not pay for what only `apply` uses.

Exit status follows Terraform: 0 success, 1 error or refusal, and with `plan --detailed-exitcode`
2 when there are changes. Usage mistakes also exit 1, so 2 always means "changes". Every error is a
message, never a traceback, and nothing printed holds a password or a hash.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

import click

from reconciler import __version__
from reconciler.cli import dns, export, output, plan, suspend, validate, watch  # the commands
from reconciler.cli.options import no_colour_option
from reconciler.errors import InvalidDesiredState, ReconcilerError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dms-reconciler")
@no_colour_option
def cli() -> None:
    """GitOps for docker-mailserver: validate, plan and apply mailserver.yaml to a DMS volume."""


cli.add_command(validate.validate)
cli.add_command(plan.plan)
cli.add_command(plan.apply)
cli.add_command(suspend.suspend)
cli.add_command(suspend.resume)
cli.add_command(watch.watch)
cli.add_command(dns.dns)
cli.add_command(export.export_cmd)


class Terminated(BaseException):
    """SIGTERM: unwind like Ctrl-C, so the DMS lock is released and temp files are removed."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every failure into a message and an exit status."""
    # Without this, SIGTERM (docker stop, kill, systemd) would end the process on the spot and
    # leave DMS's lock behind: DMS's change detector would then wait a minute for it to go stale.
    signal.signal(signal.SIGTERM, _raise_terminated)
    output.NO_COLOUR_FLAG.clear()
    try:
        code = cli.main(args=argv, prog_name="dms-reconciler", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        exc.show()
        code = 1
    except click.exceptions.Abort:  # click turns Ctrl-C (KeyboardInterrupt) into Abort
        output.err("interrupted; the lock was released and no file was left half-written")
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = 1
    except InvalidDesiredState as exc:
        for d in exc.diagnostics:
            output.diagnostic(d, err=True)
        output.err(f"{exc}; nothing was changed")
        code = 1
    except ReconcilerError as exc:
        output.err(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:
        output.err("interrupted; the lock was released and no file was left half-written")
        code = 130
    except Terminated:
        output.err("terminated (SIGTERM); the lock was released and no file was left half-written")
        code = 143
    except Exception as exc:  # a bug: say so in one line, never a traceback with local data
        output.err(
            f"internal error ({type(exc).__name__}); please report it. Set DMS_RECONCILER_DEBUG=1 "
            "for details"
        )
        if os.environ.get("DMS_RECONCILER_DEBUG"):
            from reconciler.log import safe_traceback  # frames and types, never a message

            click.echo(safe_traceback(exc), err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)

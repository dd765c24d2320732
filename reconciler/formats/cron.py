"""The sa-learn cron file (bind-mounted to /etc/cron.d/sa-learn in the DMS container).

The whole file is ours once mailserver.yaml declares `sa_learn`. Lines follow the DMS FAQ ("How can
I make SpamAssassin better recognize spam?"): system crontab format with the user field, `root`,
and the Bayes database under /var/mail-state. One line per account for `accounts:` scopes keeps
every line short (cron truncates long lines); `domains:` and "every account" use shell globs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.formats._lines import ParsedFile, parse_lines, render_lines

HEADER = (
    "# Managed by dms-reconciler from sa_learn in mailserver.yaml. The whole file is overwritten."
)
DBPATH = "/var/mail-state/lib-amavis/.spamassassin"
MAIL_ROOT = "/var/mail"
_LINE = re.compile(
    r"(?P<schedule>@\w+|\S+ \S+ \S+ \S+ \S+) root sa-learn --(?P<learn>spam|ham) "
    rf"{MAIL_ROOT}/(?P<domain>[^/\s]+)/(?P<user>[^/\s]+)/(?P<folder>[^/\s]+) "
    rf"--dbpath {re.escape(DBPATH)} > /dev/null\Z"
)


@dataclass(frozen=True)
class CronLine:
    text: str  # whitespace-normalised line

    @property
    def key(self) -> str:
        return self.text


@dataclass(frozen=True)
class SaLearnLine:
    """An sa-learn line we can read back: which mailboxes, which folder, spam or ham."""

    schedule: str
    learn: str
    domain: str  # "*" for every domain
    user: str  # "*" for every user of the domain
    folder: str


def normalise(line: str) -> str:
    return " ".join(line.split())


def _read(line: str) -> tuple[str, CronLine] | tuple[str, CronLine, str]:
    text = normalise(line)
    if line.endswith("\r"):
        # cron keeps the CR as part of the command (`> /dev/null\r`): not formatting, a broken
        # line. A distinct key makes the plan replace it with the clean line.
        return (
            text + "\\r",
            CronLine(text + "\\r"),
            ("CRLF line ending: cron would run the command with a carriage return at its end"),
        )
    return text, CronLine(text)


def parse(text: str) -> ParsedFile[CronLine]:
    return parse_lines(text, _read, what="cron line", header=HEADER, keep_cr=True)


def job_line(schedule: str, learn: str, domain: str, user: str, folder: str) -> str:
    path = f"{MAIL_ROOT}/{domain}/{user}/{folder}"
    return f"{schedule} root sa-learn --{learn} {path} --dbpath {DBPATH} > /dev/null"


def read_job_line(text: str) -> SaLearnLine | None:
    match = _LINE.match(normalise(text))
    if not match:
        return None
    return SaLearnLine(**match.groupdict())


def render(lines: Iterable[CronLine], *, comments: Iterable[str] = ()) -> str:
    return render_lines(lines, lambda line: line.text, comments=comments, header=HEADER)

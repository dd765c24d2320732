"""The sa-learn cron file (bind-mounted to /etc/cron.d/sa-learn in the DMS container).

The whole file is ours once mailserver.yaml declares `sa_learn`. Lines follow the DMS FAQ ("How can
I make SpamAssassin better recognize spam?"): system crontab format with the user field, `root`
(only root can read every maildir). One line per account for `accounts:` scopes keeps every line
short (cron truncates long lines); `domains:` and "every account" use shell globs.

Each line learns into `/var/lib/amavis/.spamassassin`, the Bayes database Amavis itself reads
(the amavis user's home; DMS's mail_state.sh makes /var/lib/amavis a link to
/var/mail-state/lib-amavis when /var/mail-state is mounted, so the path is right with and without
that volume). The DMS FAQ's `/var/mail-state/lib-amavis/.spamassassin` is a folder Amavis never
reads when /var/mail-state is not mounted. Each line
- runs sa-learn only when its folder exists (`ls -d ... || exit 0`: a new mailbox has no .Junk
  yet, and cron would mail root sa-learn's error every night), silently and successfully, and
- gives the database back to amavis (`chown -R`, also after a failed sa-learn, and only when
  the folder exists, so the database does too): sa-learn as root writes root-owned 0600 files
  that Amavis then cannot open ("tie failed: Permission denied").
Lines in the FAQ's old form (`OLD_DBPATH`) are read back as the same jobs, so the plan shows them
as changes to the new form, never as lines someone else wrote.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.formats._lines import ParsedFile, parse_lines, render_lines

HEADER = (
    "# Managed by dms-reconciler from sa_learn in mailserver.yaml. The whole file is overwritten."
)
NAME = "cron"  # the logical name of the sa-learn cron file, which lives outside the config dir
DBPATH = "/var/lib/amavis/.spamassassin"
OLD_DBPATH = "/var/mail-state/lib-amavis/.spamassassin"  # written before 0.1.0's DMS proof
DB_OWNER = "amavis:amavis"
MAIL_ROOT = "/var/mail"
_SCHEDULE = r"(?P<schedule>@\w+|\S+ \S+ \S+ \S+ \S+) root "
_PATH = rf"{MAIL_ROOT}/(?P<domain>[^/\s]+)/(?P<user>[^/\s]+)/(?P<folder>[^/\s]+)"
_LINE = re.compile(
    _SCHEDULE + rf"ls -d (?P<guard>\S+) > /dev/null 2>&1 \|\| exit 0; "
    rf"sa-learn --(?P<learn>spam|ham) {_PATH} --dbpath {re.escape(DBPATH)} > /dev/null; "
    rf"chown -R {DB_OWNER} {re.escape(DBPATH)}\Z"
)
_OLD_LINE = re.compile(
    _SCHEDULE + rf"sa-learn --(?P<learn>spam|ham) {_PATH} "
    rf"--dbpath {re.escape(OLD_DBPATH)} > /dev/null\Z"
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
    old_form: bool = False  # the FAQ's --dbpath under /var/mail-state: rewritten by the plan

    @property
    def job(self) -> tuple[str, str, str, str, str]:
        """What the line does, whatever its form."""
        return (self.schedule, self.learn, self.domain, self.user, self.folder)


def normalise(line: str) -> str:
    return " ".join(line.split())


def _read(line: str) -> tuple[str, CronLine] | tuple[str, CronLine, str]:
    text = normalise(line)
    if "\0" in text:
        # Not a blank to str.split, and where cron would cut the line: a distinct key (as for
        # the CR below), so the plan deletes the line and no rendered line can carry one.
        text = text.replace("\0", "\\0")
        return text, CronLine(text), "NUL byte in the line: cron does not run it as written"
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
    # every line is a line of the whole file we own: none is kept aside as unreadable
    return parse_lines(
        text, _read, what="cron line", header=HEADER, keep_cr=True, check_characters=False
    )


def job_line(schedule: str, learn: str, domain: str, user: str, folder: str) -> str:
    path = f"{MAIL_ROOT}/{domain}/{user}/{folder}"
    return (
        f"{schedule} root ls -d {path} > /dev/null 2>&1 || exit 0; sa-learn --{learn} {path} "
        f"--dbpath {DBPATH} > /dev/null; chown -R {DB_OWNER} {DBPATH}"
    )


def read_job_line(text: str) -> SaLearnLine | None:
    line = normalise(text)
    match = _LINE.match(line)
    old_form = match is None
    match = match or _OLD_LINE.match(line)
    if match is None:
        return None
    path = f"{MAIL_ROOT}/{match['domain']}/{match['user']}/{match['folder']}"
    if not old_form and match["guard"] != path:
        return None
    return SaLearnLine(
        match["schedule"], match["learn"], match["domain"], match["user"], match["folder"], old_form
    )


def render(
    lines: Iterable[CronLine],
    *,
    comments: Iterable[str] = (),
    filename: str = "the sa-learn cron file",
) -> str:
    return render_lines(
        lines,
        lambda line: line.text,
        parse=parse,
        read=_read,
        keep_cr=True,
        check_characters=False,
        filename=filename,
        comments=comments,
        header=HEADER,
    )

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


# rspamd.learn: Rspamd's Bayes (in Redis) learns through its controller on 127.0.0.1:11334, which
# trusts local clients without a password (secure_ip); rspamc walks the folder's cur/ and new/.
RSPAMC = "rspamc -h 127.0.0.1:11334"
_RSPAMC_LINE = re.compile(
    _SCHEDULE + rf"ls -d (?P<guard>\S+) > /dev/null 2>&1 \|\| exit 0; "
    rf"{re.escape(RSPAMC)} learn_(?P<learn>spam|ham) {_PATH} > /dev/null\Z"
)


def rspamc_line(schedule: str, learn: str, domain: str, user: str, folder: str) -> str:
    """An rspamd.learn job's line: silent and successful while the folder does not exist."""
    path = f"{MAIL_ROOT}/{domain}/{user}/{folder}"
    return (
        f"{schedule} root ls -d {path} > /dev/null 2>&1 || exit 0; "
        f"{RSPAMC} learn_{learn} {path} > /dev/null"
    )


def read_rspamc_line(text: str) -> SaLearnLine | None:
    match = _RSPAMC_LINE.match(normalise(text))
    if match is None:
        return None
    path = f"{MAIL_ROOT}/{match['domain']}/{match['user']}/{match['folder']}"
    if match["guard"] != path:
        return None
    return SaLearnLine(
        match["schedule"], match["learn"], match["domain"], match["user"], match["folder"]
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


# --- what a cron line accepts (the rules of sa_learn and rspamd.learn) ---------------------

CRON_MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly", "@reboot"}
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# The five fields as Debian cron (DMS's) reads them: name, range, names it takes.
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
# One element of a field's comma list: `*`, a value or a range, then an optional step. No
# croniter extensions (`L`, `W`, `#`, `?`): Debian cron refuses them and ignores the whole file.
_CRON_ELEMENT = re.compile(r"(\*|[0-9a-z]+(-[0-9a-z]+)?)(/[0-9]+)?\Z")


def check_schedule(schedule: str) -> str | None:
    """Five cron fields (minute hour day month weekday) or a macro such as @daily."""
    text = schedule.strip()
    if any(c in schedule for c in "\n\r\0"):
        return "schedule must be one line"
    if text.startswith("@"):
        if text in CRON_MACROS:
            return None
        return f"unknown cron macro '{text}'; use one of {', '.join(sorted(CRON_MACROS))}"
    fields = text.split()
    if len(fields) != 5:
        return (
            f"schedule '{text}' has {len(fields)} fields; cron needs five "
            '(minute hour day-of-month month day-of-week), like "0 2 * * *"'
        )
    from croniter import croniter  # 15 ms of imports, only for files with sa_learn jobs

    for i, (name, low, high, names) in enumerate(_CRON_FIELDS):
        value = fields[i]
        probe = ["*"] * 5
        probe[i] = value
        if not _cron_field_ok(value.lower(), low, high, names) or not croniter.is_valid(
            " ".join(probe)
        ):
            also = f", or names like {names[0]} or {names[1]}-{names[3]}" if names else ""
            return (
                f"schedule '{text}' is not a valid cron expression: the {name} field "
                f"'{value}' is wrong; {name} takes {low}-{high}{also}, '*', lists (1,15), "
                "ranges (1-5) and steps (*/10)"
            )
    if not croniter.is_valid(text):
        return f"schedule '{text}' is not a valid cron expression (minute hour day month weekday)"
    return None


def _cron_field_ok(value: str, low: int, high: int, names: tuple[str, ...]) -> bool:
    """One cron field as Debian cron reads it: every list element in range, names only where
    the field takes them, steps of 1 or more."""
    for element in value.split(","):
        match = _CRON_ELEMENT.match(element)
        if match is None or (match.group(3) and int(match.group(3)[1:]) < 1):
            return False
        if match.group(1) == "*":
            continue
        for part in match.group(1).split("-"):
            if part.isdigit():
                if not low <= int(part) <= high:
                    return False
            elif part not in names:
                return False
    return True


def check_folder(folder: str) -> str | None:
    """A Maildir++ folder name (`.Junk`, `cur`, `.Archive*`), never a path."""
    if not folder:  # the cron line would name the whole maildir: every folder learned as spam
        return "folder is empty; give a folder name inside the maildir, like .Junk or cur"
    if "/" in folder or "\\" in folder:
        return f"folder '{folder}' is a path; give a folder name inside the maildir, like .Junk"
    if folder in (".", "..") or ".." in folder:
        return f"folder '{folder}' would leave the maildir; use a name like .Junk or cur"
    bad = sorted({c for c in folder if not (c.isascii() and (c.isalnum() or c in "._*-"))})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        return f"folder '{folder}' has {shown}; use letters, digits, '.', '_', '-' and '*'"
    return None

"""postfix-send-access.cf and postfix-receive-access.cf: Postfix access(5) tables.

`setup email restrict add send|receive <address>` appends `<address> \\t\\t REJECT` (an `echo -e`
of `"${USER} \\t\\t REJECT"`); we write the same bytes. DMS does not watch these files: at start-up
it puts `check_sender_access texthash:<file>` in front of `dms_smtpd_sender_restrictions`
(`check_recipient_access` in front of `smtpd_recipient_restrictions`) when the file exists, and
texthash tables are read when a Postfix process starts, so a change needs `postfix reload` (what
the CLI runs). Entries we do not manage may have any action (`OK`, `DISCARD`, `550 text`): their
text is kept as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.formats._lines import ParsedFile, parse_lines, render_lines
from reconciler.formats._table import reader

SEND = "postfix-send-access.cf"
RECEIVE = "postfix-receive-access.cf"
FILENAMES = (SEND, RECEIVE)
REJECT = "REJECT"


@dataclass(frozen=True)
class AccessLine:
    key: str  # as written; Postfix folds case
    action: str  # the right-hand side, whitespace-trimmed

    def normalised(self) -> tuple[str, str]:
        return self.key.lower(), " ".join(self.action.split())


_read = reader(
    AccessLine, empty_value="access line has an address but no action; Postfix ignores it"
)


def parse(text: str) -> ParsedFile[AccessLine]:
    return parse_lines(text, _read, continuation=True, what="access entry")


def line_of(entry: AccessLine) -> str:
    if entry.action == REJECT:
        return f"{entry.key} \t\t {REJECT}"  # byte for byte what `setup email restrict` writes
    return f"{entry.key} {entry.action}"


def render(
    entries: Iterable[AccessLine],
    *,
    comments: Iterable[str] = (),
    invalid: Iterable[str] = (),
    filename: str = f"{SEND} or {RECEIVE}",
) -> str:
    ordered = sorted(entries, key=lambda e: e.key.lower())
    return render_lines(
        ordered,
        line_of,
        parse=parse,
        read=_read,
        filename=filename,
        comments=comments,
        invalid=invalid,
        continuation=True,
    )

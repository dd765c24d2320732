"""dovecot-masters.cf: `name|{SCHEME}hash`, one Dovecot master user per line.

The same form as postfix-accounts.cf, but the name has no `@domain` (`setup dovecot-master add`
only checks it is not empty) and there is no third field: DMS reads it with
`IFS='|' read -r LOGIN PASS`, so anything after a second `|` would end up in the hash. DMS turns
each line into `name:hash` in /etc/dovecot/masterdb; a master logs in as `user@domain*name`
with its own password and then sees that user's mailbox. The file holds password hashes: nothing
here may put one in an error message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.formats._lines import ParsedFile, grep_safe_order, parse_lines, render_lines

FILENAME = "dovecot-masters.cf"


@dataclass(frozen=True)
class MasterLine:
    name: str
    password_hash: str

    def __repr__(self) -> str:  # a repr must never show the hash
        return f"MasterLine({self.name!r}, <sensitive>)"


def _read(line: str) -> tuple[str, MasterLine] | tuple[str, MasterLine, str] | str:
    name, sep, password_hash = line.partition("|")
    if not sep:
        return "line has no '|' between master name and password hash; DMS cannot read it"
    if not name or any(c.isspace() or c in ":*" for c in name):
        return "the text before '|' is not a master user name; DMS cannot read this line"
    entry = MasterLine(name, password_hash)
    if not password_hash:
        return name.lower(), entry, f"master user '{name}' has an empty password hash"
    if "|" in password_hash:
        return (
            name.lower(),
            entry,
            f"master user '{name}' has a third '|' field, which DMS reads as part of the hash",
        )
    return name.lower(), entry


def parse(text: str) -> ParsedFile[MasterLine]:
    return parse_lines(text, _read, what="master user")


def line_of(entry: MasterLine) -> str:
    return f"{entry.name}|{entry.password_hash}"


def render(
    entries: Iterable[MasterLine], *, comments: Iterable[str] = (), invalid: Iterable[str] = ()
) -> str:
    ordered = sorted(entries, key=lambda e: grep_safe_order(e.name.lower()))
    return render_lines(
        ordered,
        line_of,
        parse=parse,
        read=_read,
        filename=FILENAME,
        comments=comments,
        invalid=invalid,
    )

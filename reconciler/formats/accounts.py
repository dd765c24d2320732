"""postfix-accounts.cf: `address|{SCHEME}hash[|dovecot extra fields]`, one account per line.

DMS reads it with `IFS='|' read -r LOGIN PASS USER_ATTRIBUTES` (no trimming), so the third field is
everything after the second `|`. The file holds password hashes: nothing here may put one in an
error message. Lines are ordered shortest address first (see `_lines.grep_safe_order`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.formats._lines import ParsedFile, grep_safe_order, parse_lines, render_lines

FILENAME = "postfix-accounts.cf"
_ADDRESS = re.compile(r"[^\s|:@]+@[^\s|:@]+\Z")


@dataclass(frozen=True)
class AccountLine:
    address: str
    password_hash: str
    extra: str | None = None  # Dovecot extra fields after a second `|`; carried over untouched

    def __repr__(self) -> str:  # a repr must never show the hash
        return f"AccountLine({self.address!r}, <sensitive>, extra={self.extra!r})"


def _read(line: str) -> tuple[str, AccountLine] | tuple[str, AccountLine, str] | str:
    if "|" not in line:
        return "line has no '|' between address and password hash; DMS cannot read it"
    address, _, rest = line.partition("|")
    password_hash, sep, extra = rest.partition("|")
    if not _ADDRESS.match(address):
        return "the text before '|' is not an address; DMS cannot read this line"
    entry = AccountLine(address, password_hash, extra if sep else None)
    if not password_hash:  # `setup email add` on a host where hashing failed writes these
        return (
            address.lower(),
            entry,
            f"account '{address}' has an empty password hash: nobody can log in",
        )
    return address.lower(), entry


def parse(text: str) -> ParsedFile[AccountLine]:
    return parse_lines(text, _read, what="account")


def line_of(entry: AccountLine) -> str:
    line = f"{entry.address}|{entry.password_hash}"
    return line if entry.extra is None else f"{line}|{entry.extra}"


def render(
    entries: Iterable[AccountLine], *, comments: Iterable[str] = (), invalid: Iterable[str] = ()
) -> str:
    # Comments with '@' would match DMS's unanchored greps for an address: never write them here.
    safe = [c for c in comments if "@" not in c]
    ordered = sorted(entries, key=lambda e: grep_safe_order(e.address.lower()))
    return render_lines(
        ordered, line_of, parse=parse, read=_read, filename=FILENAME, comments=safe, invalid=invalid
    )

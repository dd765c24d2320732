"""postfix-aliases.cf: local aliases in aliases(5) form, `name: target[, target...]`.

DMS appends this file verbatim to /etc/aliases (after `root: $POSTMASTER_ADDRESS`) and runs
postalias. It only applies to local delivery, which is how the devnull recipe works: a virtual
alias `addr devnull` reaches the local alias `devnull: /dev/null`. Values may be files, `|commands`
or `:include:` lists, so entries we do not manage keep their value text exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.formats._lines import ORPHAN, ParsedFile, parse_lines, render_lines

FILENAME = "postfix-aliases.cf"
_COMMA = re.compile(r"\s*,\s*")


@dataclass(frozen=True)
class LocalAlias:
    name: str
    value: str  # the right-hand side, whitespace-trimmed

    def normalised(self) -> tuple[str, str]:
        return self.name.lower(), ", ".join(_COMMA.split(self.value.strip()))


def _read(line: str) -> tuple[str, LocalAlias] | str:
    if line[:1].isspace():  # a continuation with nothing to continue (see `logical_lines`)
        return ORPHAN
    name, sep, value = line.partition(":")
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name):
        return "not `name: target`; postalias rejects this line"
    if not value.strip():
        return f"local alias '{name}' has no target"
    # Only trimmed: a quoted `"|command  --arg"` of an entry we do not manage must stay as it is.
    return name.lower(), LocalAlias(name, value.strip())


def parse(text: str) -> ParsedFile[LocalAlias]:
    return parse_lines(text, _read, continuation=True, what="local alias")


def line_of(entry: LocalAlias) -> str:
    return f"{entry.name}: {entry.value}"


def render(
    entries: Iterable[LocalAlias], *, comments: Iterable[str] = (), invalid: Iterable[str] = ()
) -> str:
    ordered = sorted(entries, key=lambda e: e.name.lower())
    return render_lines(
        ordered,
        line_of,
        parse=parse,
        read=_read,
        filename=FILENAME,
        comments=comments,
        invalid=invalid,
        continuation=True,
    )

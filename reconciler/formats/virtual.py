"""postfix-virtual.cf: `key target[,target...]`; keys are `user@domain`, `@domain` or bare `user`.

DMS copies the file verbatim to Postfix's `virtual_alias_maps` (texthash), so Postfix's table
syntax applies when reading: a line starting with whitespace continues the previous one, targets
are separated by commas and/or whitespace, keys are case-insensitive and the first of duplicate
keys wins. DMS's own loops read it with `read -r KEY REST`, so we write each key once, on one line,
as the `setup` CLI does: `key t1,t2`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.formats._lines import ORPHAN, ParsedFile, parse_lines, render_lines

FILENAME = "postfix-virtual.cf"


@dataclass(frozen=True)
class VirtualLine:
    key: str  # as written; matched case-insensitively
    targets: tuple[str, ...]  # as written, in file order


def _read(line: str) -> tuple[str, VirtualLine] | str:
    if line[:1].isspace():  # a continuation with nothing to continue (see `logical_lines`)
        return ORPHAN
    # The key is the first whitespace-separated field; targets are what is left between commas
    # and whitespace. str.split instead of a regular expression: 2x faster on 20,000 lines.
    fields = line.split()
    if len(fields) < 2:
        return "alias line has a key but no target; Postfix ignores it with a warning"
    rest = fields[1] if len(fields) == 2 else ",".join(fields[1:])
    targets = tuple(filter(None, rest.split(",")))  # drop the empty ends of ",a,b,"
    if not targets:
        return "alias line has a key but no target; Postfix ignores it with a warning"
    return fields[0].lower(), VirtualLine(fields[0], targets)


def parse(text: str) -> ParsedFile[VirtualLine]:
    return parse_lines(text, _read, continuation=True, what="alias")


def line_of(entry: VirtualLine) -> str:
    return f"{entry.key} {','.join(entry.targets)}"


def sort_key(entry: VirtualLine) -> tuple[str, int, str]:
    """By domain, the catch-all `@domain` first, then local part (easy to read; DMS needs no
    order here)."""
    local, _, domain = entry.key.lower().rpartition("@")
    return (domain, 0 if entry.key.startswith("@") else 1, local)


def render(
    entries: Iterable[VirtualLine], *, comments: Iterable[str] = (), invalid: Iterable[str] = ()
) -> str:
    return render_lines(
        sorted(entries, key=sort_key),
        line_of,
        parse=parse,
        read=_read,
        filename=FILENAME,
        comments=comments,
        invalid=invalid,
        continuation=True,
    )

"""dovecot-quotas.cf: `address:size`, one per line; size is `0` or `<n>B|k|M|G|T`.

DMS reads it with `grep -i "<address>:"` and uses the line only when it splits into exactly two
fields on `:`; the first match wins, so lines are ordered shortest address first. A missing file
and an empty one mean the same to DMS (it creates the empty file itself when quotas are on).
DMS does not turn CRLF into LF here, so a CR is kept as part of the line (and the plan fixes it).
An entry whose grep finds another line first (an earlier longer address, or a comment) is marked
`shadowed`: DMS does not apply it as written, so the plan rewrites the file in a safe order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.formats._lines import (
    ParsedFile,
    Problem,
    grep_safe_order,
    parse_lines,
    render_lines,
)

FILENAME = "dovecot-quotas.cf"


@dataclass(frozen=True)
class QuotaLine:
    address: str
    size: str
    # What DMS reads instead, when an earlier line matches its unanchored grep for this address
    # (`pal@d:1G` before `al@d:2G` gives al 1G): e.g. "1G from line 2". Not part of equality.
    shadowed: str | None = field(default=None, compare=False)


def _read(line: str) -> tuple[str, QuotaLine] | tuple[str, QuotaLine, str] | str:
    fields = line.split(":")
    if len(fields) != 2 or not fields[0].strip() or "@" not in fields[0]:
        return "not `address:size`; DMS ignores this line"
    address, size = fields
    key = address.strip().lower()
    if address != address.strip() or size != size.strip():
        # Kept as written, so it differs from the canonical entry and gets rewritten: DMS's
        # `grep -i "<address>:"` misses `a@d :5G`, and `a@d: 5G` or a CRLF line ending gives
        # Dovecot the size ` 5G` or `5G\r` (DMS reads this file without its CRLF fix).
        what = "a CRLF line ending" if size.endswith("\r") else "blanks around ':'"
        return (
            key,
            QuotaLine(address, size),
            (f"quota of '{key}' has {what}; DMS does not read it as written"),
        )
    return key, QuotaLine(address, size)


def parse(text: str) -> ParsedFile[QuotaLine]:
    parsed = parse_lines(text, _read, what="quota", keep_cr=True)
    if not parsed.entries:
        return parsed
    raw = text.split("\n")
    if _nothing_shadowed(raw):
        return parsed
    entries = dict(parsed.entries)
    problems = list(parsed.problems)
    hits = first_hits(list(parsed.entries), raw)
    for key, entry in parsed.entries.items():
        hit = hits.get(key)
        if hit is None:
            continue
        number, line = hit
        read = _read(line)
        if not isinstance(read, str) and read[0] == key and read[1] == entry:
            continue  # DMS finds this entry's own line (or an identical one)
        fields = line.split(":")
        reads = (
            f"{fields[1]!r} from line {number}" if len(fields) == 2 else f"no quota (line {number})"
        )
        entries[key] = replace(entry, shadowed=reads)
        problems.append(
            Problem(
                number,
                f"DMS's grep for the quota of '{key}' matches this line "
                f"first, so '{key}' gets {reads}, not {entry.size!r}",
            )
        )
    problems.sort(key=lambda p: p.line)
    return ParsedFile(entries, parsed.comments, parsed.invalid, tuple(problems), parsed.duplicates)


def _nothing_shadowed(lines: list[str]) -> bool:
    """True when DMS's grep finds every entry's own (first) line, without looking: the file is
    ASCII, every line holding an `@` is a plain `address:size` line, and these come in grep-safe
    order (as `render` writes them).

    Why that is enough: the pattern for `a` ends in `@domain:` and the line's only `:` ends its
    address, so an earlier line can only match `a` by its whole address or a suffix of it; in
    grep-safe order an earlier address is not longer, and one of the same length has at least as
    many dots, while matching would need it to equal `a` wherever `a` has no dot: it is `a`.
    Lines without an `@` (the header, comments) match no address at all.
    """
    previous: tuple[int, int, str] = (0, 0, "")
    for line in lines:
        if "@" not in line:
            continue
        address, colon, size = line.partition(":")
        if (
            not colon
            or ":" in size
            or not line.isascii()
            or address != address.strip()
            or size != size.strip()
        ):
            return False
        order = grep_safe_order(address.lower())
        if order < previous:
            return False
        previous = order
    return True


def first_hits(addresses: list[str], lines: list[str]) -> dict[str, tuple[int, str]]:
    """`dms_lookup` for every address at once, in one pass over the lines.

    Looking each address up on its own reads the file from the top every time: quadratic, 5.5 s
    for 6,000 quotas (10,000 accounts). Here the addresses go into a trie of their reversed
    characters (a `.` in an address is a wildcard, as in grep), and each line is read once,
    backwards from every ':' in it; the first line that matches an address is its hit. Only for
    ASCII text: there `str.lower` is exactly what re.IGNORECASE compares. Otherwise (rare: DMS's
    own lines are ASCII) each address is looked up on its own as before.
    """
    if not all(line.isascii() for line in lines) or not all(a.isascii() for a in addresses):
        return {a: hit for a in addresses if (hit := dms_lookup(a, lines)) is not None}
    trie: dict[str, Any] = {}
    for address in addresses:
        node = trie
        for char in reversed(address.lower()):
            node = node.setdefault(char, {})
        node.setdefault(_END, []).append(address)
    found: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(lines, start=1):
        colon = line.find(":")
        if colon < 0:
            continue
        lower = line.lower()
        hit = (number, line)
        while colon >= 0:
            # Walk the trie backwards from the ':'; branch (a stack) only where an address has a
            # wildcard '.' and the line's character also continues another address literally.
            stack = [(trie, colon - 1)]
            while stack:
                node, position = stack.pop()
                while True:
                    ends = node.get(_END)
                    if ends is not None:
                        for address in ends:
                            if address not in found:
                                found[address] = hit
                    if position < 0:
                        break
                    char = lower[position]
                    child = node.get(char)
                    wild = node.get(".") if char != "." else None
                    if wild is not None:
                        if child is not None:
                            stack.append((wild, position - 1))
                        else:
                            child = wild
                    if child is None:
                        break
                    node = child
                    position -= 1
            colon = lower.find(":", colon + 1)
        if len(found) == len(addresses):
            break
    return found


_END = "\0end"  # a trie key no character can be


def dms_lookup(address: str, lines: list[str]) -> tuple[int, str] | None:
    """(line number, line) that `grep -i "<address>:"` finds first, as DMS looks quotas up.

    Unanchored, case-insensitive, `.` is any character, and comment lines are not skipped.
    """
    pattern = re.compile(re.escape(address).replace(r"\.", ".") + ":", re.IGNORECASE)
    for number, line in enumerate(lines, start=1):
        if pattern.search(line):
            return number, line
    return None


def line_of(entry: QuotaLine) -> str:
    return f"{entry.address}:{entry.size.rstrip(chr(13))}"  # what we write is LF only


def render(
    entries: Iterable[QuotaLine], *, comments: Iterable[str] = (), invalid: Iterable[str] = ()
) -> str:
    safe = [c for c in comments if "@" not in c]  # `grep -i "addr:"` does not skip comments
    # What is written: LF only, so a size read with a CRLF ending is written (and reads back)
    # without its CRs
    written = (replace(e, size=e.size.rstrip("\r")) if "\r" in e.size else e for e in entries)
    ordered = sorted(written, key=lambda e: grep_safe_order(e.address.lower()))
    return render_lines(
        ordered,
        line_of,
        parse=parse,
        read=_read,
        keep_cr=True,
        filename=FILENAME,
        comments=safe,
        invalid=invalid,
    )

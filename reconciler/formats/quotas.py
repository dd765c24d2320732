"""dovecot-quotas.cf: `address:size`, one per line; size is `0` or `<n>B|k|M|G|T`.

DMS reads it with `grep -i "<address>:"` and uses the line only when it splits into exactly two
fields on `:`; the first match wins, so lines are ordered shortest address first. A missing file
and an empty one mean the same to DMS (it creates the empty file itself when quotas are on).
DMS does not turn CRLF into LF here, so a CR is kept as part of the line (and the plan fixes it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.formats._lines import ParsedFile, grep_safe_order, parse_lines, render_lines

FILENAME = "dovecot-quotas.cf"


@dataclass(frozen=True)
class QuotaLine:
    address: str
    size: str


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
        return key, QuotaLine(address, size), (
            f"quota of '{key}' has {what}; DMS does not read it as written")
    return key, QuotaLine(address, size)


def parse(text: str) -> ParsedFile[QuotaLine]:
    return parse_lines(text, _read, what="quota", keep_cr=True)


def line_of(entry: QuotaLine) -> str:
    return f"{entry.address}:{entry.size.removesuffix(chr(13))}"  # what we write is LF only


def render(entries: Iterable[QuotaLine], *, comments: Iterable[str] = (),
           invalid: Iterable[str] = ()) -> str:
    safe = [c for c in comments if "@" not in c]  # `grep -i "addr:"` does not skip comments
    ordered = sorted(entries, key=lambda e: grep_safe_order(e.address.lower()))
    return render_lines(ordered, line_of, comments=safe, invalid=invalid)

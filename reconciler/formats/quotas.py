"""dovecot-quotas.cf: `address:size`, one per line; size is `0` or `<n>B|k|M|G|T`.

DMS reads it with `grep -i "<address>:"` and uses the line only when it splits into exactly two
fields on `:`; the first match wins, so lines are ordered shortest address first. A missing file
and an empty one mean the same to DMS (it creates the empty file itself when quotas are on).
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


def _read(line: str) -> tuple[str, QuotaLine] | str:
    fields = line.split(":")
    if len(fields) != 2 or not fields[0].strip() or "@" not in fields[0]:
        return "not `address:size`; DMS ignores this line"
    address, size = fields[0].strip(), fields[1].strip()
    return address.lower(), QuotaLine(address, size)


def parse(text: str) -> ParsedFile[QuotaLine]:
    return parse_lines(text, _read, what="quota")


def line_of(entry: QuotaLine) -> str:
    return f"{entry.address}:{entry.size}"


def render(entries: Iterable[QuotaLine], *, comments: Iterable[str] = (),
           invalid: Iterable[str] = ()) -> str:
    safe = [c for c in comments if "@" not in c]  # `grep -i "addr:"` does not skip comments
    ordered = sorted(entries, key=lambda e: grep_safe_order(e.address.lower()))
    return render_lines(ordered, line_of, comments=safe, invalid=invalid)

"""The sender map files of `rspamd.senders`: `rspamd/override.d/dms-sender-*.map`, one entry a line.

Rspamd's map format: one key a line, `#` starts a comment (so an entry holding `#` would be cut
there: the rules refuse it). The files lie in override.d/ so DMS copies them next to the
multimap rules that name them, at start-up and on every change (/etc/rspamd/override.d/).
The whole file is ours.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.formats._lines import ParsedFile, parse_lines, render_lines

HEADER = (
    "# Managed by dms-reconciler from rspamd.senders in mailserver.yaml. "
    "The whole file is overwritten."
)
PREFIX = "rspamd/override.d/dms-sender-"


@dataclass(frozen=True)
class MapLine:
    value: str

    @property
    def key(self) -> str:
        return self.value


def is_map_file(name: str) -> bool:
    return name.startswith(PREFIX) and name.endswith(".map")


def _read(line: str) -> tuple[str, MapLine] | str:
    words = line.split()
    if len(words) != 1:
        return "more than one word: Rspamd reads the first as the key; kept as it is"
    return words[0].lower(), MapLine(words[0].lower())


def parse(text: str) -> ParsedFile[MapLine]:
    return parse_lines(text, _read, what="map entry", header=HEADER)


def render(
    entries: Iterable[MapLine],
    *,
    comments: Iterable[str] = (),
    invalid: Iterable[str] = (),
    filename: str = "map file",
) -> str:
    return render_lines(
        entries,
        lambda e: e.value,
        parse=parse,
        read=_read,
        filename=filename,
        comments=comments,
        invalid=invalid,
        header=HEADER,
    )

"""postfix-relaymap.cf: sender-dependent relay hosts, `@domain [host]:port`, or `@domain ` to opt
a domain out of the default relay.

`setup relay add-domain <domain> <host> [<port>]` writes `@domain [host]:port` (port 25 when not
given) and `setup relay exclude-domain <domain>` writes `@domain ` (the key and one space: DMS's
`_db_operation` with no value), so we write the same bytes. DMS watches this file: its change
detector copies the lines that have a value to /etc/postfix/relayhost_map
(`sender_dependent_relayhost_maps`), and an opt-out line only matters when `RELAY_HOST` is set
(every hosted domain without a line is then relayed through it). The brackets stop Postfix from
looking up MX records for the host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.formats._lines import ParsedFile, parse_lines, render_lines
from reconciler.formats._table import reader

FILENAME = "postfix-relaymap.cf"
_BRACKETED = re.compile(r"\[(?P<host>[^\[\]\s]+)\](?::(?P<port>[0-9]+))?\Z")


@dataclass(frozen=True)
class RelayLine:
    key: str  # `@domain` as written (Postfix also reads `user@domain`)
    value: str  # `[host]:port`, another Postfix next-hop form, or "" for an opt-out

    @property
    def excluded(self) -> bool:
        return not self.value

    def host_port(self) -> tuple[str, int] | None:
        """(host, port) of a `[host]:port` value as the CLI writes it, else None."""
        match = _BRACKETED.match(self.value)
        if not match:
            return None
        return match.group("host"), int(match.group("port") or 25)


def relay_value(host: str, port: int) -> str:
    return f"[{host}]:{port}"


def _make(key: str, value: str) -> RelayLine:
    return RelayLine(key, value)


_read = reader(_make, empty_value=None)


def parse(text: str) -> ParsedFile[RelayLine]:
    return parse_lines(text, _read, continuation=True, what="relay entry")


def line_of(entry: RelayLine) -> str:
    return f"{entry.key} {entry.value}"  # an opt-out keeps its one space, as the CLI writes it


def render(
    entries: Iterable[RelayLine], *, comments: Iterable[str] = (), invalid: Iterable[str] = ()
) -> str:
    ordered = sorted(entries, key=lambda e: e.key.lower())
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

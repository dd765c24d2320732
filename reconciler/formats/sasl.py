"""postfix-sasl-password.cf: credentials for relay hosts, `@domain user:password`.

`setup relay add-auth <domain> <user> [<password>]` writes `@domain user:password`. DMS watches
the file and copies its lines to /etc/postfix/sasl_passwd (mode 0600, `texthash`,
`smtp_sender_dependent_authentication = yes`), so the key is the sender's domain (Postfix also
reads `user@domain` and `[host]:port` keys). Once the file exists DMS also sets
`smtp_tls_security_level = encrypt` for all outgoing mail.

The value holds a plaintext password: it is never shown, and a repr never holds it. We create the
file mode 0600.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.formats._lines import ParsedFile, parse_lines, render_lines
from reconciler.formats._table import reader

FILENAME = "postfix-sasl-password.cf"


@dataclass(frozen=True)
class SaslLine:
    key: str  # `@domain` as written
    username: str
    password: str  # plaintext; `Any` stand-in (a pending secret) while planning

    def __repr__(self) -> str:
        return f"SaslLine({self.key!r}, {self.username!r}, <sensitive>)"


def _make(key: str, value: str) -> SaslLine | str:
    username, sep, password = value.partition(":")
    if not sep or not username or not password:
        return "not `key user:password`; Postfix cannot use these credentials"
    return SaslLine(key, username, password)


_read = reader(_make, empty_value="credentials line has a key but no `user:password`")


def parse(text: str) -> ParsedFile[SaslLine]:
    return parse_lines(text, _read, continuation=True, what="relay credentials")


def line_of(entry: SaslLine) -> str:
    return f"{entry.key} {entry.username}:{entry.password}"


def render(
    entries: Iterable[SaslLine], *, comments: Iterable[str] = (), invalid: Iterable[str] = ()
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

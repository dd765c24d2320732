"""OpenDKIM's files in the config volume, as `setup config dkim` (DMS's open-dkim) writes them.

- `opendkim/KeyTable`: `<selector>._domainkey.<domain> <domain>:<selector>:<path>`, the path being
  `/etc/opendkim/keys/<domain>/<selector>.private` (the copy inside the container);
- `opendkim/SigningTable`: `*@<domain> <selector>._domainkey.<domain>`;
- `opendkim/TrustedHosts`: `127.0.0.1` and `localhost` when DMS creates it;
- `opendkim/keys/<domain>/<selector>.private` (the PEM private key) and `<selector>.txt`, the DNS
  record as opendkim-genkey writes it (a zone-file stub, split into 250-character strings).

Both tables are `key<whitespace>value` lines; open-dkim appends a line only when the same line is
not there yet. DMS does not watch any of these files: they are copied to /etc/opendkim when the
container starts (`setup.d/dmarc_dkim_spf.sh`), so a change needs that copy and an OpenDKIM
restart, or `docker compose up -d --force-recreate`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.formats._lines import ParsedFile, parse_lines, render_lines
from reconciler.formats._table import reader

DIRECTORY = "opendkim"
KEY_TABLE = "opendkim/KeyTable"
SIGNING_TABLE = "opendkim/SigningTable"
TRUSTED_HOSTS = "opendkim/TrustedHosts"
TABLES = (KEY_TABLE, SIGNING_TABLE)
TRUSTED_DEFAULT = "127.0.0.1\nlocalhost\n"
CONTAINER_KEYS = "/etc/opendkim/keys"


@dataclass(frozen=True)
class TableLine:
    key: str
    value: str

    def normalised(self) -> tuple[str, str]:
        return self.key.lower(), " ".join(self.value.split())


def record_name(domain: str, selector: str) -> str:
    return f"{selector}._domainkey.{domain}"


def private_key_path(domain: str, selector: str) -> str:
    """The key file's logical name in the config volume."""
    return f"{DIRECTORY}/keys/{domain}/{selector}.private"


def txt_path(domain: str, selector: str) -> str:
    return f"{DIRECTORY}/keys/{domain}/{selector}.txt"


def is_key_file(name: str) -> bool:
    """True for a key pair's file: `opendkim/keys/<domain>/<selector>.private` or `.txt` (a
    logical name, or a path ending in one)."""
    return f"{DIRECTORY}/keys/" in name and name.endswith((".private", ".txt"))


def key_table_line(domain: str, selector: str) -> TableLine:
    path = f"{CONTAINER_KEYS}/{domain}/{selector}.private"
    return TableLine(record_name(domain, selector), f"{domain}:{selector}:{path}")


def signing_table_line(domain: str, selector: str) -> TableLine:
    return TableLine(f"*@{domain}", record_name(domain, selector))


TABLE_HEADER = ""  # none: the tables hold exactly what open-dkim writes
_read = reader(TableLine, empty_value="OpenDKIM table line has a key but no value")


def parse(text: str) -> ParsedFile[TableLine]:
    return parse_lines(text, _read, what="OpenDKIM table entry", header=TABLE_HEADER)


def line_of(entry: TableLine) -> str:
    return f"{entry.key} {entry.value}"


def render(
    entries: Iterable[TableLine],
    *,
    comments: Iterable[str] = (),
    invalid: Iterable[str] = (),
    filename: str = f"{KEY_TABLE} or {SIGNING_TABLE}",
) -> str:
    ordered = sorted(entries, key=lambda e: e.key.lower())
    return render_lines(
        ordered,
        line_of,
        parse=parse,
        read=_read,
        filename=filename,
        comments=comments,
        invalid=invalid,
        header=TABLE_HEADER,
    )


# --- the DNS record file (<selector>.txt) -------------------------------------------------------


def render_txt(domain: str, selector: str, public_key_b64: str) -> str:
    """Byte for byte what `opendkim-genkey --subdomains --domain=D --selector=S` writes."""
    chunks = [public_key_b64[i : i + 250] for i in range(0, len(public_key_b64), 250)] or [""]
    return (
        f'{selector}._domainkey\tIN\tTXT\t( "v=DKIM1; h=sha256; k=rsa; "\n\t  "p='
        + '"\n\t  "'.join(chunks)
        + f'" )  ; ----- DKIM key {selector} for {domain}\n'
    )


def txt_value(public_key_b64: str) -> str:
    """The TXT record's text (what a DNS server returns once the strings are joined)."""
    return f"v=DKIM1; h=sha256; k=rsa; p={public_key_b64}"


_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


def parse_txt(text: str) -> str | None:
    """The record text in a `<selector>.txt` file (its quoted strings joined), or None."""
    inside = text.partition("(")[2].partition(")")[0]
    strings = _STRING.findall(inside)
    return "".join(strings) if strings else None

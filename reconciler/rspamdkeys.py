"""Rspamd's DKIM key files on the volume (names, forms, record text; not a codec of entries), as
DMS's `setup config dkim` writes them when DMS runs Rspamd and not OpenDKIM
(target/bin/rspamd-dkim, the same in v15.1.0 and v16):

- `rspamd/dkim/rsa-<bits>-<selector>-<domain>.private.txt`: the private key, PEM PKCS#8
  (`rspamadm dkim_keygen -k`), mode 0600;
- `...public.txt`: the record in zone-file form as `rspamadm dkim_keygen` prints it
  (lualib/rspamadm/dkim_keygen.lua `print_public_key_dns`), mode 0644;
- `...public.dns.txt`: the record's text on one line (`v=DKIM1; k=rsa; p=...`), mode 0644.

`rspamd/override.d/dkim_signing.conf` names each key by its path in the container
(/tmp/docker-mailserver/rspamd/dkim/...): see kinds/rspamd_dkim.py.
"""

from __future__ import annotations

import re

DIRECTORY = "rspamd/dkim"
CONTAINER_CONFIG = "/tmp/docker-mailserver"  # where DMS mounts the config volume
PRIVATE_SUFFIX = ".private.txt"
PUBLIC_SUFFIX = ".public.txt"
DNS_SUFFIX = ".public.dns.txt"
SPLIT = 253  # dkim_keygen.lua's split_string: pieces of the base64 key in public.txt


def base(domain: str, selector: str, bits: int) -> str:
    return f"{DIRECTORY}/rsa-{bits}-{selector}-{domain}"


def private_path(domain: str, selector: str, bits: int) -> str:
    return base(domain, selector, bits) + PRIVATE_SUFFIX


def public_path(private: str) -> str:
    return private[: -len(PRIVATE_SUFFIX)] + PUBLIC_SUFFIX


def dns_path(private: str) -> str:
    return private[: -len(PRIVATE_SUFFIX)] + DNS_SUFFIX


def container_path(name: str) -> str:
    """The path DMS's Rspamd reads a volume file `name` (a logical name) at."""
    return f"{CONTAINER_CONFIG}/{name}"


def logical_name(path: str) -> str | None:
    """`/tmp/docker-mailserver/rspamd/dkim/X.private.txt` -> `rspamd/dkim/X.private.txt` (None:
    not a private key file of rspamd/dkim/ itself, e.g. a path elsewhere or with a `$` in it)."""
    prefix = f"{CONTAINER_CONFIG}/{DIRECTORY}/"
    if not path.startswith(prefix) or not path.endswith(PRIVATE_SUFFIX):
        return None
    rest = path[len(prefix) :]
    if "/" in rest or "$" in rest or rest.startswith("."):
        return None
    return f"{DIRECTORY}/{rest}"


def find_private(names: object, domain: str, selector: str) -> list[tuple[int, str]]:
    """(bits, logical name) of every `rsa-<bits>-<selector>-<domain>.private.txt` among `names`
    (an iterable of logical names), whatever its size: a key once made is the key."""
    pattern = re.compile(
        rf"{re.escape(DIRECTORY)}/rsa-([0-9]{{3,5}})-{re.escape(selector)}-{re.escape(domain)}"
        + re.escape(PRIVATE_SUFFIX)
    )
    out = []
    for name in names:  # type: ignore[attr-defined]
        match = pattern.fullmatch(name)
        if match:
            out.append((int(match[1]), name))
    return sorted(out)


def is_key_file(name: str) -> bool:
    return name.startswith(DIRECTORY + "/") and name.endswith(".txt")


def is_private_key(name: str) -> bool:
    return f"{DIRECTORY}/" in name and name.endswith(PRIVATE_SUFFIX)


def render_public(selector: str, public_b64: str) -> str:
    """`rspamadm dkim_keygen`'s zone-file output for an RSA key (its stdout, public.txt)."""
    if len(public_b64) < 255 - 2:
        return f'{selector}._domainkey IN TXT ( "v=DKIM1; k=rsa;" \n\t"p={public_b64}" ) ;\n'
    parts = [public_b64[i : i + SPLIT] for i in range(0, len(public_b64), SPLIT)]
    lines = [f'{selector}._domainkey IN TXT ( "v=DKIM1; k=rsa; "']
    lines += [f'\t"p={parts[0]}"', *(f'\t"{part}"' for part in parts[1:])]
    return "\n".join(lines) + "\n) ; \n"


def record_value(public_b64: str) -> str:
    return f"v=DKIM1; k=rsa; p={public_b64}"


def render_dns(public_b64: str) -> str:
    """public.dns.txt: the record's text, as rspamd-dkim extracts it from public.txt."""
    return record_value(public_b64) + "\n"

"""What a mail address, a domain and a password hash may look like on a DMS config line.

DMS has no RFC parser: it splits lines on `|`, `:`, whitespace and `,`, cuts addresses at `@`,
builds maildir paths from them and greps for them unanchored. So the safe set is narrow: lowercase
`[a-z0-9._-]` before one `@`, a domain name after it (see the reference, section 2.1). Each check
returns `None` when fine, or a sentence for the admin that says what is wrong and how to fix it.
The sentences quote addresses and domains but never a password hash.
"""

from __future__ import annotations

import re

LOCAL_RE = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\Z")
LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# The common case in one regex, with every limit the slow path checks: at most 64 characters
# before the `@` (RFC 5321 4.5.3.1.1), labels of at most 63, a last label that is not all digits.
_ADDRESS_FAST = re.compile(
    r"(?=[^@]{1,64}@)[a-z0-9_-]+(?:\.[a-z0-9_-]+)*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
    r"(?![0-9]+\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z"
)

# Characters that would split or inject a DMS config line, named for the message.
_FORBIDDEN = {
    " ": "a space",
    "\t": "a tab",
    "\n": "a line break",
    "\r": "a carriage return",
    "|": "'|' (the postfix-accounts.cf field separator)",
    ":": "':' (the dovecot-quotas.cf and userdb separator)",
    ",": "',' (the postfix-virtual.cf target separator)",
    "/": "'/' (it would become part of the maildir path)",
    "#": "'#' (DMS treats it as a comment)",
    "+": "'+' (the sub-addressing delimiter: jane+tag@ already reaches jane@)",
    "\\": "a backslash",
    '"': "a double quote",
    "'": "a quote",
    "\0": "a NUL byte",
}


def check_domain(domain: str) -> str | None:
    """Explain why `domain` cannot be a hosted mail domain, or return None."""
    if not isinstance(domain, str) or not domain:
        return "a domain must be a non-empty string"
    for ch, name in _FORBIDDEN.items():
        if ch in domain:
            return f"domain '{_show(domain)}' contains {name}"
    if domain != domain.lower():
        return f"domain '{domain}' has uppercase letters; write '{domain.lower()}'"
    if "@" in domain:
        return f"'{domain}' is an address, not a domain; write '{domain.rsplit('@', 1)[1]}'"
    if len(domain) > 253:
        return f"domain '{domain[:40]}...' is longer than 253 characters"
    labels = domain.split(".")
    if len(labels) < 2:
        return f"domain '{domain}' needs at least two labels, like example.com"
    for label in labels:
        if not label:
            return f"domain '{domain}' has an empty label (two dots in a row or a dot at an end)"
        if not LABEL_RE.match(label):
            return (
                f"domain '{domain}' has an invalid label '{label}': use letters, digits and '-',"
                " not at the start or end, at most 63 characters"
            )
    if labels[-1].isdigit():  # no top-level domain is all digits (RFC 3696 2): an IP address
        return (
            f"domain '{domain}' ends in the all-digit label '{labels[-1]}': it looks like an IP "
            "address, and DMS hosts mail for domain names only; use the domain name"
        )
    return None


def check_address(address: str) -> str | None:
    """Explain why `address` cannot appear on a DMS config line, or return None."""
    if isinstance(address, str) and _ADDRESS_FAST.match(address) and len(address) <= 254:
        return None  # the common case, in one regex
    if not isinstance(address, str) or not address:
        return "an address must be a non-empty string"
    for ch, name in _FORBIDDEN.items():
        if ch in address:
            return f"address '{_show(address)}' contains {name}"
    if address != address.lower():
        return (
            f"address '{address}' has uppercase letters; DMS stores addresses in lowercase: "
            f"write '{address.lower()}'"
        )
    if address.count("@") != 1:
        what = "no '@'" if "@" not in address else "more than one '@'"
        return f"address '{address}' has {what}; an address is local-part@domain"
    local, domain = address.split("@")
    if not local:
        return f"address '{address}' has nothing before the '@' (a catch-all goes under catch_all)"
    if len(local) > 64:
        return f"address '{address}' has a local part longer than 64 characters"
    if not LOCAL_RE.match(local):
        if ".." in local or local.startswith(".") or local.endswith("."):
            return (
                f"address '{address}' has a dot at the start or end of its local part, "
                "or two in a row"
            )
        bad = sorted({c for c in local if not (c.isascii() and (c.isalnum() or c in "._-"))})
        return (
            f"address '{address}' has {_chars(bad)} before the '@'; use lowercase letters,"
            " digits, '.', '_' and '-'"
        )
    problem = check_domain(domain)
    if problem:
        return f"address '{address}': {problem}"
    if len(address) > 254:
        return f"address '{address[:40]}...' is longer than 254 characters"
    return None


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def local_of(address: str) -> str:
    return address.rpartition("@")[0]


def _chars(chars: list[str]) -> str:
    shown = ", ".join(repr(c) for c in chars[:5])
    return f"the character{'s' if len(chars) > 1 else ''} {shown}"


def _show(value: str) -> str:
    """Make control characters visible in a message instead of breaking the line."""
    return value.encode("unicode_escape").decode("ascii")[:80]


# Dovecot password schemes (doveadm pw -l). CRYPT-family hashes get a structural check too.
KNOWN_SCHEMES = frozenset(
    {
        "SHA512-CRYPT",
        "SHA256-CRYPT",
        "BLF-CRYPT",
        "MD5-CRYPT",
        "CRYPT",
        "DES-CRYPT",
        "ARGON2I",
        "ARGON2ID",
        "PBKDF2",
        "SCRAM-SHA-1",
        "SCRAM-SHA-256",
        "SSHA512",
        "SSHA256",
        "SSHA",
        "SMD5",
        "SHA512",
        "SHA256",
        "SHA",
        "SHA1",
        "MD5",
        "PLAIN-MD5",
        "LDAP-MD5",
        "CRAM-MD5",
        "DIGEST-MD5",
        "NTLM",
        "LANMAN",
        "OTP",
        "SHA512.HEX",
        "SHA512.B64",
        "SHA256.HEX",
        "SHA256.B64",
        "SHA1.HEX",
        "SHA1.B64",
        "SSHA512.B64",
        "SSHA256.B64",
        "SSHA.B64",
        "SSHA.HEX",
    }
)
CLEARTEXT_SCHEMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT", "PLAIN-TRUNC"})
_B64 = r"[./0-9A-Za-z]"
_CRYPT_SHAPES = {
    "SHA512-CRYPT": re.compile(rf"\$6\$(rounds=\d+\$)?{_B64}{{1,16}}\${_B64}{{86}}\Z"),
    "SHA256-CRYPT": re.compile(rf"\$5\$(rounds=\d+\$)?{_B64}{{1,16}}\${_B64}{{43}}\Z"),
    "BLF-CRYPT": re.compile(rf"\$2[abxy]?\$\d\d\${_B64}{{53}}\Z"),
    "MD5-CRYPT": re.compile(rf"\$1\${_B64}{{1,8}}\${_B64}{{22}}\Z"),
    "ARGON2I": re.compile(r"\$argon2i\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+\Z"),
    "ARGON2ID": re.compile(
        r"\$argon2id\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+\Z"
    ),
}
HASH_RE = re.compile(r"\{([A-Za-z0-9.-]+)\}(.*)\Z", re.S)


def split_hash(value: str) -> tuple[str | None, str]:
    """`{SHA512-CRYPT}$6$...` -> ("SHA512-CRYPT", "$6$..."); a bare hash has no scheme."""
    match = HASH_RE.match(value)
    if not match:
        return None, value
    return match.group(1).upper(), match.group(2)


def check_password_hash(value: str) -> str | None:
    """Explain why `value` is not a usable `{SCHEME}hash`, without ever quoting the hash."""
    if not isinstance(value, str) or not value:
        return "password_hash must be a non-empty string like {SHA512-CRYPT}$6$..."
    for ch, name in (
        ("|", "'|'"),
        (":", "':'"),
        ("\n", "a line break"),
        ("\r", "a carriage return"),
        (" ", "a space"),
        ("\t", "a tab"),
        ("\0", "a NUL byte"),
    ):
        if ch in value:
            return f"password_hash contains {name}, which would break the postfix-accounts.cf line"
    scheme, body = split_hash(value)
    if scheme is None:
        return (
            "password_hash must start with its scheme in braces, like {SHA512-CRYPT}$6$...; "
            "create one with `doveadm pw -s SHA512-CRYPT` or use password_file"
        )
    if scheme in CLEARTEXT_SCHEMES:
        return (
            f"password_hash uses {{{scheme}}}, which keeps the password in clear text in git; "
            "use password_file or password_env instead"
        )
    if scheme not in KNOWN_SCHEMES:
        return (
            f"password_hash scheme {{{scheme}}} is not one Dovecot knows; "
            "use {SHA512-CRYPT} (what `doveadm pw -s SHA512-CRYPT` prints)"
        )
    if not body:
        return f"password_hash has the scheme {{{scheme}}} but no hash after it"
    shape = _CRYPT_SHAPES.get(scheme)
    if shape is not None and not shape.match(body):
        return (
            f"password_hash does not look like a {scheme} hash (wrong prefix, salt or length); "
            "copy the whole output of `doveadm pw`"
        )
    return None


QUOTA_RE = re.compile(r"(0|([0-9]+)(B|k|M|G|T))\Z")
_UNIT_BYTES = {"B": 1, "k": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
QUOTA_MAX_BYTES = (1 << 63) - 1  # Dovecot 2.3 keeps a quota in an int64 (quota-util.c)


def quota_bytes(size: str) -> int | None:
    """The quota `size` (`0`, `5G`, `500M` ...) in bytes; None when it is not in that form."""
    match = QUOTA_RE.match(size)
    if match is None:
        return None
    return 0 if size == "0" else int(match.group(2)) * _UNIT_BYTES[match.group(3)]


_SMALLER_UNIT = {"k": "B", "M": "k", "G": "M", "T": "G"}
_V16_GRACE_RE = re.compile(r"([1-9][0-9]*)([BkMGT])\Z")  # DMS v16's helpers/accounts.sh


def quota_grace_lost(size: str) -> str | None:
    """Explain why DMS v16 gives the quota `size` no grace, or return None.

    DMS v15 (Dovecot 2.3) lets the message that crosses a quota exceed it by 10%
    (`quota_grace = 10%%`). Dovecot 2.4's grace is a size, and DMS v16 writes
    `userdb_quota_storage_grace=<n/10><unit>` only for sizes matching `^[1-9][0-9]*[BkMGT]$`, in
    whole units rounded down: `050M` gets none, `5G` gets `0G`. The same limit written in the next
    smaller unit keeps the 10%.
    """
    value = quota_bytes(size)
    if not value:  # not a quota, or 0 (no limit): nothing to lose
        return None
    match = QUOTA_RE.match(size)
    assert match is not None
    number, unit = int(match.group(2)), match.group(3)
    if _V16_GRACE_RE.match(size) and number >= 10:
        return None
    why = "a leading zero" if size.startswith("0") else f"10% of {number}{unit} rounds to 0{unit}"
    if number >= 10:
        better = f"{number}{unit}"
    elif unit in _SMALLER_UNIT:
        better = f"{number * 1024}{_SMALLER_UNIT[unit]}"
    else:
        return f"DMS v16 gives quota {size} no grace ({why})"
    grace = f"{int(better[:-1]) // 10}{better[-1]}"
    return (
        f"DMS v16 (Dovecot 2.4) gives quota {size} no grace ({why}), where v15 lets the "
        f"message that crosses it exceed it by 10%; write {better} for the same limit with a "
        f"grace of {grace}"
    )


def check_quota(size: str) -> str | None:
    """Explain why Dovecot cannot use the quota `size`, or return None.

    DMS v15.1.0 hands it to Dovecot 2.3 as `userdb_quota_rule=*:bytes=<size>`; Dovecot parses the
    number into an int64 and multiplies by the unit without an overflow check, so a size above
    2^63-1 bytes (8388607T) wraps into a negative or wrong limit instead of an error.
    """
    value = quota_bytes(size)
    if value is None or value <= QUOTA_MAX_BYTES:
        return None
    return (
        f"quota {size} is larger than Dovecot can hold (at most 2^63-1 bytes, 8388607T): it "
        "would wrap into a wrong limit; use 0 for no limit"
    )

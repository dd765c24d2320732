"""What DMS's change detector generates from the config volume, computed in one pass.

DMS's `check-for-changes.sh` rebuilds `/etc/dovecot/userdb`, the alias dummy accounts,
`/etc/postfix/vhost` and the other Postfix tables in bash loops with a `grep` and a `cut` per line
(23-41 ms per account: minutes at 10,000 accounts, with existing users missing from the half-built
userdb meanwhile). `generate` computes the very same bytes from the same config files, and lists
what else DMS's handlers do (mailbox folders, sieve copies, `postconf`, `postalias`, reloads), so
the sidecar can put everything in place at once (`reconciler.watch.fastapply`).

"The very same bytes" is a claim about DMS's exact code, so this module follows it literally,
quirks included: unanchored `grep`s whose `.` is a wildcard and whose first matching line wins
(comment lines included), bash `read`'s field splitting, `cut -d @`, `sort | uniq` in the POSIX
locale. Where the bash would do something this module does not model (a glob character that the
shell would expand, an address starting with `-` that grep would take for an option, a CR or a
missing final newline that DMS would first rewrite in the volume, a non-ASCII byte, a password
line DMS would panic on ...) it raises `Unsupported` instead of guessing: the caller leaves the
change to DMS's own change detector.

It models two DMS versions, whose generator scripts are recognised by their sha256
(`PROFILES`): v15.1.0 and v16 (`:edge` at c9b015ddc869, Debian 13, Dovecot 2.4). They differ in
`helpers/accounts.sh` only:

- quota attribute: v15.1 `userdb_quota_rule=*:bytes=<size>`; v16 `userdb_quota_storage_size=<size>`
  plus `userdb_quota_storage_grace=<n/10><unit>` only for sizes matching `^[1-9][0-9]*[BkMGT]$`;
- alias dummy accounts: v15.1 takes everything after the alias key as one address (a multi-target
  alias finds no account and gets no dummy line) and makes one for a `@domain` catch-all; v16 uses
  the first target that is a local account and skips catch-alls (`=~ .+@.+`; DMS #4581).

Pure: no Docker, no file system. Proven byte-identical to DMS's own functions, on both images, by
`tests/realdms/test_dmsgen_identical.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

DMS_DIR = "/tmp/docker-mailserver"
ACCOUNTS = "postfix-accounts.cf"
VIRTUAL = "postfix-virtual.cf"
REGEXP = "postfix-regexp.cf"
ALIASES = "postfix-aliases.cf"
RELAYMAP = "postfix-relaymap.cf"
SASL = "postfix-sasl-password.cf"
QUOTAS = "dovecot-quotas.cf"
MASTERS = "dovecot-masters.cf"
# The order of `_monitored_files_checksums` (helpers/change-detection.sh): the checksum record.
MONITORED = (ACCOUNTS, VIRTUAL, REGEXP, ALIASES, RELAYMAP, SASL, QUOTAS, MASTERS)

USERDB = "/etc/dovecot/userdb"
MASTERDB = "/etc/dovecot/masterdb"
VMAILBOX = "/etc/postfix/vmailbox"
VHOST = "/etc/postfix/vhost"
POSTFIX_VIRTUAL = "/etc/postfix/virtual"
POSTFIX_REGEXP = "/etc/postfix/regexp"
ETC_ALIASES = "/etc/aliases"
RELAYHOST_MAP = "/etc/postfix/relayhost_map"
SASL_PASSWD = "/etc/postfix/sasl_passwd"
AUTH_CONF = "/etc/dovecot/conf.d/10-auth.conf"
VMAILBOX_HEADER = (
    f"# WARNING: this file is auto-generated. Modify {DMS_DIR}/{ACCOUNTS} to edit the user list."
)

# DMS's generator scripts, as installed in /usr/local/bin, by version: their sha256 proves which
# code the container runs (DMS_RELEASE alone does not: `edge` moves).
SCRIPTS = (
    "helpers/accounts.sh",
    "helpers/aliases.sh",
    "helpers/postfix.sh",
    "helpers/relay.sh",
    "helpers/utils.sh",
    "helpers/change-detection.sh",
    "helpers/lock.sh",
    "check-for-changes.sh",
)
_COMMON = {
    "helpers/aliases.sh": "975a93d4bea62b075b3ed382c5e2dd2c86ab4f5fae5a33b6ed0e47b7283a23ee",
    "helpers/postfix.sh": "c1fac01dda3dea3fb02b43e900048bf4439eb4759e0613332921b58ddec5ba1a",
    "helpers/relay.sh": "c139ae31b0ec932fe09049ec69c971ecfe85d7476be6ddcba100c6acbf756622",
    "helpers/change-detection.sh": (
        "d196c08398a7d1ac6179d2f00dea2a3defae503aedffee715b8e3c91c73357c0"
    ),
    "helpers/lock.sh": "753ebacf8a2cd454d48ba3e3a352578940808f9c50ddc718c11533f9dc814227",
}
PROFILES: dict[str, dict[str, str]] = {
    "15.1": {
        **_COMMON,
        "helpers/accounts.sh": "1d07b37ccba54df496ccf1338cb86cf49c26edff23e0906f02f21c8a354cea8c",
        "helpers/utils.sh": "2bfd3db466a25462c9629aef325af947e724d92760771ca7a68e2c6ed85755b7",
        "check-for-changes.sh": "ab62539d8627730cfc296a481c7ab6afcc297f6de0c2e2237c3c56faef2a860a",
    },
    "16": {
        **_COMMON,
        "helpers/accounts.sh": "62fd4c94c213a9e59e0d09852c3c04a399c055b17898858da7959072c2bdb0dd",
        "helpers/utils.sh": "bb74872b97fb0239f711bf1be2db3c5b9c170c538c27a6827a72e537e5fd02d4",
        "check-for-changes.sh": "d07c8b6b0c727c55cea6f10a5a182d345382ac69da058e0ea49d0fc6c1d5b05a",
    },
}
VERSIONS = tuple(PROFILES)
_INT64_MAX = 2**63 - 1


class Unsupported(Exception):
    """DMS's bash would do something this module does not model: leave the change to DMS."""


def profile_for(script_sha256: Mapping[str, str]) -> str | None:
    """The version whose generator scripts have exactly these sha256 (relative path -> hex), or
    None: a DMS whose generators this module was not proven against."""
    for version, expected in PROFILES.items():
        if all(script_sha256.get(path) == digest for path, digest in expected.items()):
            return version
    return None


@dataclass(frozen=True)
class Settings:
    """What DMS's handlers read from /etc/dms-settings (and the container's environment)."""

    postmaster_address: str
    vmail_uid: str = "5000"
    vmail_gid: str = "5000"
    account_provisioner: str = "FILE"
    enable_quotas: str = "1"
    smtp_only: str = "0"
    enable_amavis: str = "1"
    relay_host: str = ""
    relay_port: str = ""
    default_relay_host: str = ""
    relay_user: str = ""
    relay_password: str = ""

    @classmethod
    def from_dms_settings(cls, text: str) -> Settings:
        """Parse /etc/dms-settings (`KEY='value'` lines, written by DMS's start-up)."""
        values: dict[str, str] = {}
        for line in text.splitlines():
            match = re.fullmatch(r"([A-Z0-9_]+)='([^']*)'", line)
            if match:
                values[match.group(1)] = match.group(2)
            elif line.strip():
                raise Unsupported("a line of /etc/dms-settings is not KEY='value'")
        if "POSTMASTER_ADDRESS" not in values:
            raise Unsupported("/etc/dms-settings has no POSTMASTER_ADDRESS")
        return cls(
            postmaster_address=values["POSTMASTER_ADDRESS"],
            vmail_uid=values.get("DMS_VMAIL_UID", "5000"),
            vmail_gid=values.get("DMS_VMAIL_GID", "5000"),
            account_provisioner=values.get("ACCOUNT_PROVISIONER", "FILE"),
            enable_quotas=values.get("ENABLE_QUOTAS", "1"),
            smtp_only=values.get("SMTP_ONLY", "0"),
            enable_amavis=values.get("ENABLE_AMAVIS", "1"),
            relay_host=values.get("RELAY_HOST", ""),
            relay_port=values.get("RELAY_PORT", ""),
            default_relay_host=values.get("DEFAULT_RELAY_HOST", ""),
            relay_user=values.get("RELAY_USER", ""),
            relay_password=values.get("RELAY_PASSWORD", ""),
        )


@dataclass(frozen=True)
class Output:
    """A file DMS's handlers write: its whole new content, and the owner/mode DMS sets on it
    (None: DMS leaves the existing file's, or the default for a new file)."""

    path: str
    data: bytes
    owner: str | None = None
    mode: int | None = None


@dataclass(frozen=True)
class AuthEdit:
    """DMS's `sed -i -e '/<pattern>/s/^/#/' 10-auth.conf` (comment) or `s/^#//` (uncomment)."""

    sed_address: str  # the sed address, as DMS writes it
    pattern: str  # the same, as a Python regular expression
    comment: bool

    @property
    def sed(self) -> str:
        return f"/{self.sed_address}/s/^/#/" if self.comment else f"/{self.sed_address}/s/^#//"


AUTH_MASTER = AuthEdit(r"\!include auth-master\.inc", r"!include auth-master\.inc", False)
AUTH_LDAP_OFF = AuthEdit(r"\!include auth-ldap\.conf\.ext", r"!include auth-ldap\.conf\.ext", True)
AUTH_PASSWDFILE = AuthEdit(
    r"\!include auth-passwdfile\.inc", r"!include auth-passwdfile\.inc", False
)


@dataclass
class Generated:
    """Everything DMS's change detector would do for `changed`, as data."""

    outputs: list[Output] = field(default_factory=list)
    # `mkdir -p` of each (the account homes `_create_accounts` makes), in DMS's order
    homes: list[str] = field(default_factory=list)
    # (source, destination): the per-account sieve scripts `_create_accounts` copies
    sieves: list[tuple[str, str]] = field(default_factory=list)
    # the `sed -i` edits of 10-auth.conf DMS repeats on every pass, in its order
    auth_edits: list[AuthEdit] = field(default_factory=list)
    # `postconf 'k = v'` settings in DMS's order; `append` ones via _add_to_or_update_postfix_main
    postconf: list[str] = field(default_factory=list)
    postconf_append: list[tuple[str, str]] = field(default_factory=list)
    postalias: bool = False
    vhost_updated: bool = False
    reload_amavis: bool = False
    reload_postfix: bool = True
    reload_dovecot: bool = True

    def output(self, path: str) -> Output | None:
        for item in self.outputs:
            if item.path == path:
                return item
        return None


# --- bash and grep, as DMS uses them ------------------------------------------------------------


_ODD_BYTE = re.compile(rb"[^\t\n\x20-\x7e]")


def _text(name: str, data: bytes) -> str:
    """A config file as DMS's greps see it, or Unsupported when DMS would first rewrite it in the
    volume (CRLF, no final newline) or when grep's behaviour depends on bytes we do not model."""
    if b"\r" in data:
        raise Unsupported(f"{name} has CR line ends (DMS rewrites it first)")
    if data and not data.endswith(b"\n"):
        raise Unsupported(f"{name} has no final newline (DMS rewrites it first)")
    if _ODD_BYTE.search(data):
        raise Unsupported(f"{name} holds a control or non-ASCII byte")
    return data.decode("ascii")


def _lines(text: str) -> list[str]:
    return text.split("\n")[:-1] if text else []


_BLANK_OR_COMMENT = re.compile(r"^[ \t]*$|^[ \t]*#")


def valid_lines(text: str) -> list[str]:
    """`_get_valid_lines_from_file`: `grep -E -v "^\\s*$|^\\s*#"` (only tab and space occur)."""
    return [line for line in _lines(text) if not _BLANK_OR_COMMENT.match(line)]


def read_fields(line: str, delimiter: str, names: int) -> list[str]:
    """`IFS=<delimiter> read -r V1 .. Vn` for a non-whitespace delimiter (bash 5.2): the last
    variable takes the rest of the line, minus one trailing delimiter when the rest is one field."""
    parts = line.split(delimiter)
    out = parts[: names - 1]
    rest = parts[names - 1 :]
    if rest:
        if len(rest) == 2 and rest[1] == "":
            last = rest[0]
        else:
            last = delimiter.join(rest)
        out.append(last)
    while len(out) < names:
        out.append("")
    return out


def read_array(line: str, delimiter: str) -> list[str]:
    """`IFS=<delimiter> read -r -a A` for a non-whitespace delimiter: one trailing delimiter does
    not make an empty last element."""
    if line == "":
        return []
    parts = line.split(delimiter)
    if parts[-1] == "":
        parts.pop()
    return parts


def read_words(line: str, names: int) -> list[str]:
    """`read -r V1 .. Vn` with the default IFS (space, tab, newline)."""
    stripped = line.strip(" \t")
    if names == 2:  # DMS's `read -r ALIAS RECIPIENT`, once per alias: no loop
        space, tab = stripped.find(" "), stripped.find("\t")
        cut = space if tab < 0 else tab if space < 0 else min(space, tab)
        if cut < 0:
            return [stripped, ""]
        return [stripped[:cut], stripped[cut:].lstrip(" \t")]
    out: list[str] = []
    rest = stripped
    while len(out) < names - 1 and rest:
        match = re.match(r"([^ \t]*)[ \t]*", rest)
        assert match is not None
        out.append(match.group(1))
        rest = rest[match.end() :]
    if len(out) < names:
        out.append(rest.rstrip(" \t"))
    while len(out) < names:
        out.append("")
    return out


def cut_field(value: str, delimiter: str, number: int) -> str:
    """`cut -d <delimiter> -f <number>` of one line (a line without the delimiter is printed
    whole)."""
    if delimiter not in value:
        return value
    parts = value.split(delimiter)
    return parts[number - 1] if number <= len(parts) else ""


_BRE_SPECIAL = re.compile(r"[\\\[\]*^$]")


def check_pattern(pattern: str) -> None:
    """Only the grep basic regular expressions DMS builds from addresses are modelled: `.`
    matches any character, everything else is literal. Anything else (brackets, stars, anchors,
    backslashes, a leading `-` grep would take for an option, nothing at all) is Unsupported."""
    if not pattern:
        raise Unsupported("an empty grep pattern (it matches every line)")
    if pattern.startswith("-"):
        raise Unsupported(f"{pattern!r} starts with '-' (grep would take it for an option)")
    if _BRE_SPECIAL.search(pattern):
        raise Unsupported(f"{pattern!r} holds a regular-expression character")


def grep_matches(pattern: str, line: str) -> bool:
    """Does `line` hold `pattern` (checked by `check_pattern`; `.` any character) anywhere?"""
    if pattern in line:  # every `.` standing for itself (the usual match), or none at all
        return True
    if "." not in pattern:
        return False
    size = len(pattern)
    pieces = []  # the runs of literal characters, with their offsets in the pattern
    offset = 0
    for piece in pattern.split("."):
        if piece:
            pieces.append((offset, piece))
        offset += len(piece) + 1
    if not pieces:
        return len(line) >= size
    (offset, chunk), rest = pieces[0], pieces[1:]
    last = len(line) - size  # the last place the pattern can start
    at = line.find(chunk, offset)
    while at >= 0 and at - offset <= last:
        start = at - offset
        if all(line.startswith(piece, start + where) for where, piece in rest):
            return True
        at = line.find(chunk, at + 1)
    return False


class Grep:
    """`grep [-i] PATTERN FILE` over one file's lines, answering "the first matching line" fast.

    A pattern with literal characters on both sides of an `@` can only match a line where those
    characters stand around one of the line's `@`s: lines are indexed by the up to WINDOW literal
    characters before and after an `@` that the pattern has (one index per such width, built on
    first use; at 10,000 accounts a 3-character window left buckets of ~1,000 lines for every
    look-up). Other patterns scan the whole file."""

    WINDOW = 4

    def __init__(self, text: str, *, ignore_case: bool = False) -> None:
        self.ignore_case = ignore_case
        self.raw = _lines(text)
        self.lines = [line.lower() for line in self.raw] if ignore_case else self.raw
        self._indexes: dict[tuple[int, int], dict[str, list[int]]] = {}
        self._cache: dict[str, str | None] = {}

    def _index(self, before: int, after: int) -> dict[str, list[int]]:
        """Line numbers (ascending) by the `before` characters, the `@` and the `after`
        characters around each `@` of the line."""
        index = self._indexes.get((before, after))
        if index is None:
            index = {}
            for number, line in enumerate(self.lines):
                start = line.find("@", before)
                while 0 <= start < len(line) - after:
                    bucket = index.setdefault(line[start - before : start + after + 1], [])
                    if not bucket or bucket[-1] != number:
                        bucket.append(number)
                    start = line.find("@", start + 1)
            self._indexes[(before, after)] = index
        return index

    def _candidates(self, folded: str) -> Iterable[int]:
        at = folded.find("@")
        if at < 0:
            return range(len(self.lines))
        # the literal characters next to the `@` (up to a `.` or the end), at most WINDOW a side
        before = min(self.WINDOW, at - folded.rfind(".", 0, at) - 1)
        dot = folded.find(".", at + 1)
        after = min(self.WINDOW, (len(folded) if dot < 0 else dot) - at - 1)
        if not (before and after):
            return range(len(self.lines))
        return self._index(before, after).get(folded[at - before : at + after + 1], [])

    def first(self, pattern: str) -> str | None:
        """The first line matching `pattern`, as grep prints it (original case), or None."""
        if pattern not in self._cache:
            folded = pattern.lower() if self.ignore_case else pattern
            check_pattern(folded)
            candidates = self._candidates(folded)
            found = next((n for n in candidates if grep_matches(folded, self.lines[n])), None)
            self._cache[pattern] = None if found is None else self.raw[found]
        return self._cache[pattern]


def _grep(text: str, *, ignore_case: bool = False) -> Grep:
    return Grep(text, ignore_case=ignore_case)


def _no_option(value: str, what: str) -> None:
    """A value DMS hands to `echo` or `grep` first: a leading '-' would be an option."""
    if value.startswith("-"):
        raise Unsupported(f"{what} {value!r} starts with '-'")


# --- the generators -----------------------------------------------------------------------------


def _quota_attributes(version: str, quotas: Grep | None, account: str, attributes: str) -> str:
    """v16 `_add_attribute_dovecot_quota` / v15.1's inline block: append the account's quota."""
    if quotas is None:
        return attributes
    line = quotas.first(f"{account}:")
    fields = read_array(line, ":") if line is not None else []
    if len(fields) != 2:
        return attributes
    size = fields[1]
    prefix = f"{attributes} " if attributes else ""
    if version == "15.1":
        return f"{prefix}userdb_quota_rule=*:bytes={size}"
    attributes = f"{prefix}userdb_quota_storage_size={size}"
    match = re.fullmatch(r"([1-9][0-9]*)([BkMGT])", size)
    if match:
        number = int(match.group(1))
        if number > _INT64_MAX:
            raise Unsupported("a quota too big for bash's arithmetic")
        attributes += f" userdb_quota_storage_grace={number // 10}{match.group(2)}"
    return attributes


class _Userdb:
    """The userdb being built, with the look-ups DMS makes on it: `grep -qF LINE` (a substring of
    any line so far) for accounts, `grep -qixF LINE` (a whole line, any case) for dummies."""

    def __init__(self, uid: str, gid: str) -> None:
        self.lines: list[str] = []
        self.marker = f":{uid}:{gid}::/var/mail/"
        self.by_home: dict[str, list[str]] = {}  # "D/U/home::..." prefix -> lines
        self.folded: set[str] = set()

    def _home(self, line: str) -> str:
        if line.count(self.marker) != 1:
            raise Unsupported("a password or attribute holds the userdb's uid/gid/home marker")
        return line.partition(self.marker)[2].split("/home::", 1)[0]

    def add_unless_inside(self, line: str) -> None:
        """`grep -qF LINE` first: added unless a line so far holds it. Every line is
        LOGIN:PASS<marker>D/U/home::ATTRS with the marker exactly once (checked): a line inside
        another aligns their markers, so it shares D/U (no '/' in them) and is found among the
        lines of the same home."""
        home = self._home(line)
        same = self.by_home.get(home)
        if same is not None and any(line in other for other in same):
            return
        self._add(line, home)

    def add(self, line: str) -> None:
        self._add(line, self._home(line))

    def _add(self, line: str, home: str) -> None:
        self.by_home.setdefault(home, []).append(line)
        self.folded.add(line.lower())
        self.lines.append(line)


_LOGIN_ODD = re.compile(r"[ \t/:]")


def _split_login(login: str) -> tuple[str, str]:
    """USER and DOMAIN as `cut -d @ -f1/-f2` make them, for the logins we model (one '@')."""
    if login.count("@") != 1 or login.startswith("@") or login.endswith("@"):
        raise Unsupported(f"the login {login!r} is not local@domain")
    if _LOGIN_ODD.search(login):
        raise Unsupported(f"the login {login!r} holds a space, '/' or ':'")
    _no_option(login, "the login")
    return cut_field(login, "@", 1), cut_field(login, "@", 2)


def _create_accounts(
    version: str, settings: Settings, files: Mapping[str, bytes | None], gen: Generated
) -> None:
    """helpers/accounts.sh `_create_accounts` (with `_create_masters` and the dummy accounts)."""
    uid, gid = settings.vmail_uid, settings.vmail_gid
    if not (uid.isdigit() and gid.isdigit()):
        raise Unsupported("DMS_VMAIL_UID/GID are not numbers")
    accounts_data = files.get(ACCOUNTS)
    masters_data = files.get(MASTERS)
    masterdb: list[str] = []
    if masters_data is not None:
        gen.auth_edits.append(AUTH_MASTER)
        for line in valid_lines(_text(MASTERS, masters_data)):
            login, password = read_fields(line, "|", 2)
            _no_option(login, "the master login")
            entry = f"{login}:{password}"
            # `grep -qF` over the few master lines: a plain substring test
            if not any(entry in seen for seen in masterdb):
                masterdb.append(entry)
    if masters_data is not None:
        gen.outputs.append(Output(MASTERDB, _join(masterdb), "dovecot:dovecot", 0o640))
    else:
        gen.outputs.append(Output(MASTERDB, b""))
    if accounts_data is None:
        gen.outputs.append(Output(VMAILBOX, b""))
        gen.outputs.append(Output(USERDB, b""))
        return
    accounts_text = _text(ACCOUNTS, accounts_data)
    quotas_data = files.get(QUOTAS)
    quotas = (
        _grep(_text(QUOTAS, quotas_data), ignore_case=True) if quotas_data is not None else None
    )
    gen.auth_edits += [AUTH_LDAP_OFF, AUTH_PASSWDFILE]
    vmailbox = [VMAILBOX_HEADER]
    vmailbox_seen: dict[tuple[str, str], list[str]] = {}  # (D, U) -> lines, for `grep -qF`
    userdb = _Userdb(uid, gid)
    for line in valid_lines(accounts_text):
        login, password, attributes = read_fields(line, "|", 3)
        user, domain = _split_login(login)
        if version != "15.1":
            _no_option(attributes, "the attributes")  # v16 `echo`es them
        attributes = _quota_attributes(version, quotas, f"{user}@{domain}", attributes)
        vline = f"{login} {domain}/{user}/"
        # `grep -qF` in the file so far: the header, and lines "L D/U/" (one space each, so a
        # line inside another shares its "D/U/": no '/' in D or U)
        same = vmailbox_seen.setdefault((domain, user), [])
        if not (vline in VMAILBOX_HEADER or any(vline in other for other in same)):
            vmailbox.append(vline)
            same.append(vline)
        userdb.add_unless_inside(
            f"{login}:{password}:{uid}:{gid}::/var/mail/{domain}/{user}/home::{attributes}"
        )
        home = f"/var/mail/{domain}/{user}/home"
        gen.homes.append(home)
        if files.get(f"{login}.dovecot.sieve") is not None:
            gen.sieves.append((f"{DMS_DIR}/{login}.dovecot.sieve", f"{home}/.dovecot.sieve"))
    _dummy_accounts(version, settings, files, accounts_text, quotas, userdb)
    gen.outputs.append(Output(VMAILBOX, _join(vmailbox)))
    gen.outputs.append(Output(USERDB, _join(userdb.lines), "dovecot:dovecot", 0o640))


def _dummy_accounts(
    version: str,
    settings: Settings,
    files: Mapping[str, bytes | None],
    accounts_text: str,
    quotas: Grep | None,
    userdb: _Userdb,
) -> None:
    """`_create_dovecot_alias_dummy_accounts`: a userdb line for each alias of a local account."""
    virtual_data = files.get(VIRTUAL)
    if virtual_data is None or settings.enable_quotas != "1":
        return
    accounts = _grep(accounts_text)
    uid, gid = settings.vmail_uid, settings.vmail_gid
    for line in valid_lines(_text(VIRTUAL, virtual_data)):
        alias, aliased = read_words(line, 2)
        if version == "15.1":
            if "@" not in alias:  # [[ ! ${ALIAS} == *@* ]]
                continue
            real = aliased  # the whole rest: a list of targets finds no account
            if not real:
                raise Unsupported(f"the alias {alias!r} has no target")
            found = accounts.first(real)
            if found is None:
                continue
        else:
            if not re.search(r".+@.+", alias):  # v16 skips catch-alls (DMS #4581)
                continue
            if any(c in aliased for c in "*?["):  # an unquoted `for`: bash would glob
                raise Unsupported(f"the alias target {aliased!r} holds a glob character")
            real, found = "", None
            for target in aliased.replace(",", " ").split():
                found = accounts.first(target)
                if found is not None:
                    real = target
                    break
            if found is None:
                continue
        if any(c in real for c in " \t"):
            raise Unsupported(f"the alias target {real!r} holds a space")
        _no_option(alias, "the alias")  # the userdb line is grep's pattern
        real_user, real_domain = cut_field(real, "@", 1), cut_field(real, "@", 2)
        fields = read_array(found, "|")
        if len(fields) < 2 or not fields[1]:
            raise Unsupported("DMS would panic (an alias's account line has no password)")
        attributes = fields[2] if len(fields) > 2 else ""
        attributes = _quota_attributes(version, quotas, real, attributes)
        entry = (
            f"{alias}:{fields[1]}:{uid}:{gid}::/var/mail/{real_domain}/{real_user}/home::"
            f"{attributes}"
        )
        if entry.lower() in userdb.folded:
            continue  # DMS: "Alias ... will not be added to '/etc/dovecot/userdb' twice"
        userdb.add(entry)


def _create_postfix_vhost(settings: Settings, files: Mapping[str, bytes | None]) -> bytes:
    """helpers/postfix.sh `_create_postfix_vhost`: `sort | uniq` of the domains (POSIX locale)."""
    domains: list[str] = []
    accounts_data = files.get(ACCOUNTS)
    if accounts_data is not None:
        for line in valid_lines(_text(ACCOUNTS, accounts_data)):
            account = read_fields(line, "|", 2)[0]
            domains.append(cut_field(account, "@", 2))
    virtual_data = files.get(VIRTUAL)
    if virtual_data is not None:
        for line in valid_lines(_text(VIRTUAL, virtual_data)):
            key = read_words(line, 2)[0]
            user, domain = cut_field(key, "@", 1), cut_field(key, "@", 2)
            if user != domain:
                domains.append(domain)
    if settings.account_provisioner == "LDAP":
        raise Unsupported("ACCOUNT_PROVISIONER=LDAP")
    unique: list[str] = []
    for domain in sorted(domains, key=lambda d: d.encode()):
        if not unique or unique[-1] != domain:
            unique.append(domain)
    return _join(unique)


def _relay(
    settings: Settings, files: Mapping[str, bytes | None], vhost: bytes | None, gen: Generated
) -> None:
    """helpers/relay.sh `_process_relayhost_configs`."""
    relaymap = files.get(RELAYMAP)
    sasl = files.get(SASL)
    if relaymap is None and not settings.default_relay_host and not settings.relay_host:
        return
    if settings.default_relay_host or settings.relay_host or settings.relay_user:
        # The ENV relay paths (credentials from RELAY_USER/RELAY_PASSWORD, the vhost loop of
        # _legacy_support) are left to DMS.
        raise Unsupported("RELAY_HOST / DEFAULT_RELAY_HOST / RELAY_USER are set")
    # _relayhost_sasl: only with the credentials file (no ENV credentials here)
    if sasl is not None:
        lines = valid_lines(_text(SASL, sasl))
        gen.outputs.append(Output(SASL_PASSWD, _join(lines), "root:root", 0o600))
        gen.postconf.append("smtp_sender_dependent_authentication = yes")
        gen.postconf += [
            "smtp_sasl_password_maps = texthash:/etc/postfix/sasl_passwd",
            "smtp_sasl_auth_enable = yes",
            "smtp_sasl_security_options = noanonymous",
            "smtp_tls_security_level = encrypt",
        ]
    # _populate_relayhost_map: the relaymap lines with a value (sed -n -r '/^\s*[^#\s]\S*\s+\S/p')
    kept: list[str] = []
    if relaymap is not None:
        text = _text(RELAYMAP, relaymap)
        kept = [
            line for line in _lines(text) if re.match(r"^[ \t]*[^# \t][^ \t]*[ \t]+[^ \t]", line)
        ]
    gen.outputs.append(Output(RELAYHOST_MAP, _join(kept), "root:root", 0o600))
    gen.postconf.append("sender_dependent_relayhost_maps = texthash:/etc/postfix/relayhost_map")


def generate(
    files: Mapping[str, bytes | None],
    settings: Settings,
    version: str,
    changed: set[str] | frozenset[str] | None = None,
) -> Generated:
    """What DMS's `_handle_changes` does for a change of the files named in `changed` (all
    monitored files when None), given the config volume's `files` (name -> bytes; None or absent:
    the file does not exist; `<login>.dovecot.sieve` names only need to be present).

    Raises `Unsupported` for anything this module does not model exactly."""
    if version not in PROFILES:
        raise Unsupported(f"DMS version {version!r} is not modelled")
    if settings.account_provisioner != "FILE":
        raise Unsupported(f"ACCOUNT_PROVISIONER={settings.account_provisioner}")
    if settings.smtp_only == "1":
        raise Unsupported("SMTP_ONLY=1")
    changed = set(MONITORED) if changed is None else set(changed)
    unknown = changed - set(MONITORED)
    if unknown:
        raise Unsupported(f"changes to {', '.join(sorted(unknown))} are DMS's own to apply")
    # CHANGED holds checksum lines, so only files that exist (a deleted file changes nothing)
    changed = {name for name in changed if files.get(name) is not None}
    gen = Generated()
    vhost: bytes | None = None
    if changed & {ACCOUNTS, VIRTUAL}:
        vhost = _create_postfix_vhost(settings, files)
        gen.outputs.append(Output(VHOST, vhost))
        gen.vhost_updated = True
    if changed & {ACCOUNTS, VIRTUAL, ALIASES, QUOTAS, MASTERS}:
        _create_accounts(version, settings, files, gen)
    if gen.vhost_updated or changed & {RELAYMAP, SASL}:
        _relay(settings, files, vhost, gen)
    if VIRTUAL in changed:
        data = files.get(VIRTUAL)
        gen.outputs.append(Output(POSTFIX_VIRTUAL, data if data is not None else b""))
    if REGEXP in changed:
        data = files.get(REGEXP)
        gen.outputs.append(Output(POSTFIX_REGEXP, data if data is not None else b""))
        if data is not None:
            gen.postconf_append.append(("virtual_alias_maps", "pcre:/etc/postfix/regexp"))
    if ALIASES in changed:
        data = files.get(ALIASES)
        head = f"root: {settings.postmaster_address}\n".encode()
        gen.outputs.append(Output(ETC_ALIASES, head + (data or b"")))
        gen.postalias = True
    gen.reload_amavis = settings.enable_amavis == "1" and gen.vhost_updated
    return gen


def _join(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode("ascii")

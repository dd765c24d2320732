"""Mail-aware checks for what DMS's `setup` CLI manages: masters, regexp_aliases, restrict, relay
and dkim. Called from `rules.check`, with the same report and the same defensive reading: a part
with the wrong type was already reported by the schema and is skipped here.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import TYPE_CHECKING, Any

from reconciler.addresses import LABEL_RE, LOCAL_RE, check_address, check_password_hash, domain_of
from reconciler.load.sops import is_encrypted

if TYPE_CHECKING:
    from reconciler.load.rules import Report, _View

DKIM_KEY_SIZES = (1024, 2048, 3072, 4096)
_SUBSTITUTION = re.compile(r"\$(?:\{(\d+)\}|(\d))")
# A DKIM selector: dot-separated DNS labels of at most 63 characters, lowercase letters, digits,
# '-' inside a label and '_' anywhere (`setup config dkim selector mail_2024` is what DMS takes;
# a TXT record's owner name may hold '_', as `_domainkey` itself does).
_SELECTOR_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_SELECTOR = re.compile(rf"{_SELECTOR_LABEL}(?:\.{_SELECTOR_LABEL})*\Z")
# The selector is also a file name: apply stages `<selector>.private` beside itself as
# `.<selector>.private.dms-reconciler-<12 hex>.tmp`, which must fit NAME_MAX (255 bytes).
NAME_MAX = 255
DKIM_TEMP_EXTRA = len(".") + len(".dms-reconciler-") + 12 + len(".tmp")
SELECTOR_MAX = NAME_MAX - len(".private") - DKIM_TEMP_EXTRA  # 214
DNS_NAME_MAX = 253  # a domain name in text form, without the final dot (RFC 1035)
_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
PASSWORD_KEYS = ("password_hash", "password_file", "password_env", "password")


def check(report: Report, view: _View) -> None:
    doc = report.doc.value
    declared = {d for _, d in view.domains}
    _check_masters(report, view, _mapping(doc, "masters"))
    _check_regexp(report, view, doc.get("regexp_aliases"), declared)
    _check_restrict(report, view, _mapping(doc, "restrict"), declared)
    _check_relay(report, _mapping(doc, "relay"), declared)
    _check_dkim(report, _mapping(doc, "dkim"), declared)


def _mapping(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name)
    return value if isinstance(value, dict) else {}


def _not_declared(domain: str, what: str) -> str:
    if what.startswith("the "):
        return f"{what} '{domain}' is not listed in `domains`; add it there or fix the spelling"
    return (
        f"{what} is in domain '{domain}', which is not listed in `domains`; add it there or "
        "fix the spelling"
    )


def check_master_name(name: str) -> str | None:
    """A master user name: what DMS's masterdb and Dovecot's `user*master` login can carry."""
    if not name:
        return "a master user name must not be empty"
    if "@" in name:
        return check_address(name)
    bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "._-"))})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        return (
            f"master user name '{name}' has {shown}; use lowercase letters, digits, '.', '_' and "
            "'-' ('*' separates the user from the master at login, '|' and ':' split DMS's lines)"
        )
    if name != name.lower():
        return f"master user name '{name}' has uppercase letters; write '{name.lower()}'"
    if not LOCAL_RE.match(name):
        return f"master user name '{name}' has a dot at its start or end, or two in a row"
    return None


def _check_masters(report: Report, view: _View, masters: dict[str, Any]) -> None:
    for name, spec in masters.items():
        if problem := check_master_name(name):
            report.error(("masters", name), problem, key=True)
        elif name in view.accounts or name in view.aliases:
            what = "an account" if name in view.accounts else "an alias"
            report.error(
                ("masters", name),
                f"master user '{name}' clashes with {what} of the same name; Dovecot would "
                "check logins as that name against two passwords: rename the master",
                key=True,
            )
        if not isinstance(spec, dict):
            continue
        given = [k for k in PASSWORD_KEYS if k in spec]
        if len(given) != 1:
            report.error(
                ("masters", name),
                f"master user '{name}' "
                + (f"has {' and '.join(given)}" if given else "has no password")
                + ": give exactly one of password_hash, password_file, password_env or password",
                key=True,
            )
        value = spec.get("password_hash")
        if (
            isinstance(value, str)
            and not is_encrypted(value)  # SOPS: checked once decrypted, at plan
            and (problem := check_password_hash(value))
        ):
            report.error(("masters", name, "password_hash"), problem)


def pcre_problem(pattern: str, flags: str) -> tuple[str | None, int]:
    """(why PCRE2 refuses `pattern`, or None; its number of capture groups), as Postfix compiles
    it: case-insensitive unless `i`, the other flags as in pcre_table(5)."""
    import pcre2  # imported here: validate needs it only for files that declare regexp_aliases

    options = 0 if "i" in flags else pcre2.I
    for flag, option in (("m", pcre2.M), ("s", pcre2.S), ("x", pcre2.X)):
        if flag in flags:
            options |= option
    try:
        compiled = pcre2.compile(pattern, flags=options)
    except pcre2.PatternError as exc:
        return f"pattern is not a valid PCRE: {exc}", 0
    except Exception as exc:  # noqa: BLE001  - the binding raises a few types for odd input
        return f"pattern is not a valid PCRE: {exc}", 0
    nested = nested_quantifier(pattern, extended="x" in flags)
    if nested is not None:
        return (
            f"pattern repeats the group '{nested}', which itself holds an unbounded quantifier: "
            "on an address that almost matches, PCRE tries exponentially many ways and Postfix "
            "gives up at its match limit, after 0.1 s or more of CPU for each such recipient "
            "(the alias then silently does not match). Write it so each part can match in one "
            "way only: drop the outer quantifier, or make the group atomic ((?>...)) or the inner "
            "quantifier possessive (a++) where what follows cannot be matched by it"
        ), int(compiled.groups)
    return None, int(compiled.groups)


_QUANTIFIER = re.compile(r"[*+?]|\{(\d*),?(\d*)\}")


def nested_quantifier(pattern: str, *, extended: bool = False) -> str | None:
    """The first group (as written) that repeats without bound (`*`, `+`, `{n,}`; not possessive)
    while holding a quantifier that backtracks without bound, as in `(a+)+`: the shape that makes
    PCRE's backtracking exponential. Possessive quantifiers and atomic groups `(?>...)` do not
    backtrack, so they do not count. Alternations of overlapping branches (`(a|aa)+`) are not
    found. `pattern` is a valid PCRE (compiled before)."""
    open_groups: list[list[Any]] = []  # [start, atomic, holds an unbounded quantifier]
    closed: tuple[int, bool] | None = None  # (start, counts) of a group that just closed
    position, length = 0, len(pattern)
    while position < length:
        char = pattern[position]
        just_closed, closed = closed, None
        if extended and char.isspace():
            closed, position = just_closed, position + 1  # `x`: space between atom and quantifier
            continue
        if extended and char == "#":
            end = pattern.find("\n", position)
            closed, position = just_closed, length if end < 0 else end + 1
            continue
        if char == "\\":
            if pattern.startswith("\\Q", position):
                end = pattern.find("\\E", position + 2)
                position = length if end < 0 else end + 2
            else:
                position += 2
            continue
        if char == "[":
            position = _class_end(pattern, position)
            continue
        if char == "(":
            if pattern.startswith(("(?#", "(*"), position):  # a comment, a verb or option
                end = pattern.find(")", position)
                position = length if end < 0 else end + 1
                continue
            open_groups.append([position, pattern.startswith("(?>", position), False])
            position += 1
            continue
        if char == ")":
            if open_groups:
                start, atomic, holds = open_groups.pop()
                closed = (start, holds and not atomic)
                if closed[1] and open_groups:
                    open_groups[-1][2] = True
            position += 1
            continue
        match = _QUANTIFIER.match(pattern, position)
        if match is None or (match.group(0).startswith("{") and not _counted(match)):
            position += 1
            continue
        end = match.end()
        possessive = pattern.startswith("+", end)
        unbounded = match.group(0) in "*+" or (match.group(1) is not None and _open_ended(match))
        if unbounded and not possessive:
            if just_closed is not None and just_closed[1]:
                return pattern[just_closed[0] : end]
            if open_groups:
                open_groups[-1][2] = True
        position = end + (1 if possessive or pattern.startswith("?", end) else 0)
    return None


def _counted(match: re.Match[str]) -> bool:
    """`{n}`, `{n,}`, `{n,m}`: a quantifier; anything else in braces is literal text."""
    return bool(match.group(1))


def _open_ended(match: re.Match[str]) -> bool:
    return "," in match.group(0) and not match.group(2)


def _class_end(pattern: str, position: int) -> int:
    """The position after the character class opening at `position`."""
    position += 1
    if pattern.startswith("^", position):
        position += 1
    if pattern.startswith("]", position):
        position += 1  # a `]` first is a literal
    while position < len(pattern):
        if pattern.startswith("[:", position):
            end = pattern.find(":]", position + 2)
            if end >= 0:
                position = end + 2
                continue
        if pattern.startswith("\\Q", position):
            end = pattern.find("\\E", position + 2)
            position = len(pattern) if end < 0 else end + 2
            continue
        if pattern[position] == "\\":
            position += 2
            continue
        if pattern[position] == "]":
            return position + 1
        position += 1
    return position


def _check_regexp(report: Report, view: _View, items: Any, declared: set[str]) -> None:
    if not isinstance(items, list):
        return
    seen: dict[tuple[str, str], int] = {}
    devnull = {a for _, a in view.devnull}
    known = set(view.accounts) | set(view.aliases) | devnull
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        pattern, flags = item.get("pattern"), item.get("flags", "")
        groups = 9
        if isinstance(pattern, str) and isinstance(flags, str):
            if any(c in pattern for c in "\n\r\0"):
                report.error(("regexp_aliases", i, "pattern"), "pattern must be one line")
                continue
            problem, groups = pcre_problem(pattern, flags)
            if problem:
                report.error(("regexp_aliases", i, "pattern"), problem)
            first = seen.setdefault((pattern, flags), i)
            if first != i:
                report.error(
                    ("regexp_aliases", i, "pattern"),
                    f"the same pattern is item {first} already; Postfix only uses the first",
                )
        targets = item.get("to")
        paths = (
            [(("regexp_aliases", i, "to"), targets)]
            if isinstance(targets, str)
            else [(("regexp_aliases", i, "to", j), t) for j, t in enumerate(targets)]
            if isinstance(targets, list)
            else []
        )
        for path, target in paths:
            if isinstance(target, str) and (problem := regexp_target_problem(target, groups)):
                report.error(path, problem)
            elif isinstance(target, str) and "$" not in target:
                domain = domain_of(target)
                if domain in declared and target not in known and domain not in view.catch_all:
                    report.error(
                        path,
                        f"target '{target}' is in hosted domain '{domain}' but is no account, "
                        "alias or devnull address, so mail to it would bounce",
                    )


def regexp_target_problem(target: str, groups: int) -> str | None:
    """A target address, where `$1`/`${1}` stand for what a group matched."""
    used = [int(a or b) for a, b in _SUBSTITUTION.findall(target)]
    for number in used:
        if number > groups or number == 0:
            return (
                f"target '{target}' uses ${number}, but the pattern has "
                f"{groups} group{'s' if groups != 1 else ''}"
            )
    plain = _SUBSTITUTION.sub("x", target)
    if "$" in plain:
        return f"target '{target}' has a '$' that is not $1 ... $9 or ${{n}}"
    problem = check_address(plain)
    if problem and used:
        return f"target '{target}' does not make an address: {problem}"
    return problem and (f"target {problem}" if problem.startswith("address") else problem)


def _check_restrict(
    report: Report, view: _View, restrict: dict[str, Any], declared: set[str]
) -> None:
    for direction in ("send", "receive"):
        values = restrict.get(direction)
        if not isinstance(values, list):
            continue
        for j, address in enumerate(values):
            if not isinstance(address, str):
                continue
            path = ("restrict", direction, j)
            if problem := view.address_problem(address):
                report.error(path, problem)
            elif domain_of(address) not in declared:
                report.error(path, _not_declared(domain_of(address), f"'{address}'"))


def check_relay_host(host: str) -> str | None:
    """A host name, an IPv4 address or an IPv6 address (a link-local one may carry a zone id
    such as `%eth0`), as `[host]` in postfix-relaymap.cf.

    Strict, because the host is written into a Postfix table line: Python's `ipaddress` takes
    any text after `%` as a zone id, line breaks and `]` included, so a zone id is letters,
    digits, `_`, `.` and `-` only (a Linux interface name or a number).
    """
    shown = host.encode("unicode_escape").decode("ascii")[:80]
    if host.startswith("[") or host.endswith("]") or (":" in host and not _is_ip(host)):
        return (
            f"relay host '{shown}' must be a host name or IP address without brackets or port "
            "(give the port as `port:`); it is written `[host]:port` for you"
        )
    if ":" in host:  # an IPv6 address (checked above), maybe with a zone id
        zone = host.partition("%")[2]
        if "%" in host and not _ZONE.match(zone):
            return (
                f"relay host '{shown}' has the zone id '{zone.encode('unicode_escape').decode()}'"
                "; a zone id is an interface name or number: letters, digits, '_', '.' and '-'"
            )
        return None
    if _is_ip(host):
        return None
    if host != host.lower():
        return f"relay host '{shown}' has uppercase letters; write '{shown.lower()}'"
    labels = host.split(".")
    if len(host) > 253 or not all(LABEL_RE.match(label) for label in labels):
        return (
            f"relay host '{shown}' is not a valid host name (letters, digits and '-' in "
            "dot-separated labels) or IP address"
        )
    if labels[-1].isdigit():
        return (
            f"relay host '{shown}' is not a valid IPv4 address (four numbers 0-255, no leading 0)"
        )
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_relay_username(username: str) -> str | None:
    """A SASL user name as postfix-sasl-password.cf carries it: `user:password` after the key.

    Control, format (bidi overrides, zero-width) and separator characters are refused: written
    raw into the file, they either break the line or make the name that Postfix sends differ
    from the one a reviewer sees in the plan. Other non-ASCII letters are allowed (SASLprep).
    """
    if ":" in username or any(c.isspace() or c in "#\0" for c in username):
        return (
            "the relay user name must not contain ':', '#' or whitespace "
            "(postfix-sasl-password.cf holds `user:password`)"
        )
    hidden = sorted(
        {c for c in username if unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs", "Cn")}
    )
    if hidden:
        shown = ", ".join(f"U+{ord(c):04X}" for c in hidden[:5])
        return (
            f"the relay user name has control, bidi or invisible characters ({shown}); they would "
            "be sent to the relay host as they are while the plan cannot show them"
        )
    return None


def _check_relay(report: Report, relay: dict[str, Any], declared: set[str]) -> None:
    for domain, spec in relay.items():
        if domain not in declared:
            report.error(("relay", domain), _not_declared(domain, "the relay domain"), key=True)
        if not isinstance(spec, dict):
            continue
        host, exclude = spec.get("host"), spec.get("exclude") is True
        if isinstance(host, str) and (problem := check_relay_host(host)):
            report.error(("relay", domain, "host"), problem)
        if exclude and "host" in spec:
            report.error(
                ("relay", domain, "exclude"),
                f"relay for '{domain}' has both a host and exclude: true; keep one "
                "(exclude opts the domain out of the RELAY_HOST default)",
            )
        if "port" in spec and "host" not in spec:
            report.error(("relay", domain, "port"), "a relay port needs a host")
        if "host" not in spec and not exclude and "username" not in spec:
            report.error(
                ("relay", domain),
                f"relay for '{domain}' has nothing to do: give host (and port), username and a "
                "password source, or exclude: true",
                key=True,
            )
        sources = [k for k in ("password_file", "password_env") if k in spec]
        if "username" in spec:
            username = spec["username"]
            if exclude:
                report.error(
                    ("relay", domain, "username"),
                    "credentials for an excluded domain are never used; remove them",
                )
            if isinstance(username, str) and (problem := check_relay_username(username)):
                report.error(("relay", domain, "username"), problem)
            if len(sources) != 1:
                report.error(
                    ("relay", domain, "username"),
                    "relay credentials need exactly one of password_file or password_env",
                )
        elif sources:
            report.error(
                ("relay", domain, sources[0]), "a relay password needs a `username` beside it"
            )


def _check_dkim(report: Report, dkim: dict[str, Any], declared: set[str]) -> None:
    for domain, spec in dkim.items():
        if domain not in declared:
            report.error(("dkim", domain), _not_declared(domain, "the DKIM domain"), key=True)
        if not isinstance(spec, dict):
            continue
        selector = spec.get("selector")
        if isinstance(selector, str) and (problem := selector_problem(selector, domain)):
            report.error(("dkim", domain, "selector"), problem)
        size = spec.get("key_size")
        if "key_size" in spec and (isinstance(size, bool) or not isinstance(size, int)):
            # JSON Schema counts 2048.0 as an integer (and as equal to 2048); apply cannot
            report.error(
                ("dkim", domain, "key_size"),
                "key_size must be a whole number of bits: 1024, 2048, 3072 or 4096, "
                f"not {_shown_value(size)}",
            )
        elif isinstance(size, int) and size not in DKIM_KEY_SIZES:
            report.error(
                ("dkim", domain, "key_size"),
                f"key_size {size} is out of range: use 1024, 2048, 3072 or 4096 bits (2048 is "
                "DMS's default; below 1024 verifiers reject the key, above 4096 many DNS "
                "servers cannot serve the record)",
            )


def _shown_value(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return "the string '" + value.encode("unicode_escape").decode()[:20] + "'"
    if isinstance(value, float):
        return repr(value)
    return "a list" if isinstance(value, list) else "a mapping"


def selector_problem(selector: str, domain: str) -> str | None:
    """Why `selector` cannot be a DKIM selector of `domain` (None: it can): it must be a DNS
    name that fits in `<selector>._domainkey.<domain>` and a file name apply can write."""
    shown = selector.encode("unicode_escape").decode()
    shown = shown if len(shown) <= 60 else shown[:60] + "..."
    if not _SELECTOR.match(selector):
        return (
            f"selector '{shown}' must be lowercase letters, digits, '_' and '-' in dot-separated "
            "labels of at most 63 characters ('-' not first or last): it becomes a DNS name and "
            "a file name"
        )
    if len(selector) > SELECTOR_MAX:
        return (
            f"selector '{shown}' has {len(selector)} characters, more than {SELECTOR_MAX}: "
            f"the key file {selector[:20]}....private could not be written (file names stop at "
            f"{NAME_MAX} bytes)"
        )
    name = f"{selector}._domainkey.{domain}"
    if len(name) > DNS_NAME_MAX:
        return (
            f"selector '{shown}' is too long for {domain}: the DKIM record name "
            f"<selector>._domainkey.{domain} would have {len(name)} characters, more than the "
            f"{DNS_NAME_MAX} a DNS name may have"
        )
    return None

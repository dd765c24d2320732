"""Relay hosts per sender domain: `relay:` in mailserver.yaml, `postfix-relaymap.cf`
(`@domain [host]:port`, or an empty value to exclude the domain from RELAY_HOST) and
`postfix-sasl-password.cf` (`@domain user:password`, in plaintext: DMS needs it so) on the volume.

What DMS's `setup relay add-domain`, `add-auth` and `exclude-domain` write. The plan shows which
secret goes to which host. DMS watches both files and reloads Postfix.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import replace
from typing import Any

from reconciler.addresses import LABEL_RE
from reconciler.formats import relaymap, sasl
from reconciler.kinds.base import (
    ExportContext,
    FileDiff,
    KindPlan,
    PlanContext,
    Want,
    password_value,
)
from reconciler.kinds.checks import DocView, Reporter, not_declared, section
from reconciler.model import RELAY_KEY, DesiredState, PasswordFile, Relay
from reconciler.observed import Observed
from reconciler.plan import SENSITIVE, Action, Kind, PendingHash

NAME = "relay"
NOTE = (
    "postfix-relaymap.cf and postfix-sasl-password.cf are watched by DMS, which rebuilds "
    "/etc/postfix/relayhost_map and sasl_passwd and reloads Postfix. Once postfix-sasl-password.cf "
    "exists, DMS requires TLS (smtp_tls_security_level = encrypt) for all outgoing mail, until the "
    "container is recreated"
)


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    desired, observed = ctx.desired, ctx.observed
    relay_diff = ctx.diff(
        relaymap.FILENAME,
        _want_relaymap(desired),
        observed.relaymap,
        same=lambda a, b: " ".join(a.value.lower().split()) == " ".join(b.value.lower().split()),
        show=lambda e: {"relay": e.value or "(excluded from RELAY_HOST)"},
        kind_of=lambda key, e: Kind.RELAY,
    )
    sasl_diff = ctx.diff(
        sasl.FILENAME,
        _want_sasl(ctx),
        observed.sasl,
        same=_same_sasl,
        show=_show_sasl,
        kind_of=lambda key, e: Kind.RELAY_AUTH,
    )
    _say_where_credentials_go(desired, observed, relay_diff, sasl_diff)
    declared_auth = any(r.username for r in desired.relay)
    relay_plan = out.add_file(
        ctx,
        relaymap.FILENAME,
        relay_diff,
        observed.relaymap,
        listed=bool(desired.relay),
        guarded=True,
    )
    sasl_plan = out.add_file(
        ctx, sasl.FILENAME, sasl_diff, observed.sasl, listed=declared_auth, guarded=True
    )
    if warning := _readable_secrets_warning(observed, sasl_plan.write, bool(sasl_diff.final)):
        out.warnings.append(warning)
    if relay_plan.write or sasl_plan.write:
        out.notes.append(NOTE)
    return out


def _want_relaymap(desired: DesiredState) -> dict[str, Want]:
    out: dict[str, Want] = {}
    for relay in desired.relay:
        key = "@" + relay.domain
        if relay.exclude:
            out[key] = Want(Kind.RELAY, relaymap.RelayLine(key, ""))
        elif relay.host is not None:
            value = relaymap.relay_value(relay.host, relay.port)
            out[key] = Want(Kind.RELAY, relaymap.RelayLine(key, value))
    return out


def _want_sasl(ctx: PlanContext) -> dict[str, Want]:
    out: dict[str, Want] = {}
    for relay in ctx.desired.relay:
        if relay.username is None:
            continue
        key = "@" + relay.domain
        current = ctx.observed.sasl.entries.get(key)
        password = password_value(
            ctx.passwords[RELAY_KEY + relay.domain],
            RELAY_KEY + relay.domain,
            current.password if current is not None else None,
            plaintext=True,
        )
        out[key] = Want(Kind.RELAY_AUTH, sasl.SaslLine(key, relay.username, password))
    return out


def _say_where_credentials_go(
    desired: DesiredState, observed: Observed, relay_diff: FileDiff, sasl_diff: FileDiff
) -> None:
    """For each relay whose credentials or host change: which secret goes to which host.

    A pull request can point a relay's `password_env` or `password_file` at any secret the
    sidecar can read and its host at any server: the reviewer must see both together. Said once
    per relay, on its credentials change (else on its host change), in every plan form."""
    for relay in desired.relay:
        if relay.username is None or relay.password is None:
            continue
        key = "@" + relay.domain
        for diff in (sasl_diff, relay_diff):
            at = next(
                (
                    i
                    for i, c in enumerate(diff.changes)
                    if c.key == key and c.action in (Action.CREATE, Action.UPDATE)
                ),
                None,
            )
            if at is not None:
                change = diff.changes[at]
                line = credentials_line(relay, observed)
                diff.changes[at] = replace(change, details=(*change.details, line))
                break


def credentials_line(relay: Relay, observed: Observed) -> str:
    """`credentials of password_env RELAY_PW (user u) sent to host [smtp.example.net]:587`."""
    password = relay.password
    if isinstance(password, PasswordFile):
        source = f"password_file {password.path}"
    else:
        source = f"password_env {password.name if password is not None else '?'}"
    kept = observed.relaymap.entries.get("@" + relay.domain)
    if relay.host is not None:
        where = "host " + relaymap.relay_value(relay.host, relay.port)
    elif kept is not None and kept.value:  # a relay line mailserver.yaml does not declare
        where = f"host {kept.value}"
    else:
        where = "DMS's default relay host (RELAY_HOST), if one is set"
    return f"credentials of {source} (user {relay.username}) sent to {where}"


def _readable_secrets_warning(observed: Observed, written: bool, holds: bool) -> str | None:
    """postfix-sasl-password.cf holds plaintext passwords: say so when others can read it."""
    mode = observed.snapshots[sasl.FILENAME].mode
    if mode is None or not mode & 0o077 or not (holds or observed.sasl.entries):
        return None
    what = (
        "apply rewrites it owner-only, mode 0600 (DMS reads it as root)"
        if written
        else f"make it owner-only with `chmod 600 {sasl.FILENAME}` (DMS reads it as root)"
    )
    # no mode number: a group bit depends on the umask, and the plan must not
    return (
        f"{sasl.FILENAME} holds relay passwords in plain text and users other than its owner "
        f"can read it (DMS's `setup relay add-auth` creates it so): {what}"
    )


def _same_sasl(have: sasl.SaslLine, want: sasl.SaslLine) -> bool:
    if isinstance(want.password, PendingHash):
        return False
    return have.username == want.username and have.password == want.password


def _show_sasl(entry: sasl.SaslLine) -> dict[str, Any]:
    value = entry.password
    shown = str(value) if isinstance(value, PendingHash) else SENSITIVE
    return {"username": entry.username, "password": shown}


# --- mail rules ---------------------------------------------------------------------------------

_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")


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


def check(report: Reporter, view: DocView) -> None:
    for domain, spec in section(view.doc, "relay").items():
        if domain not in view.declared:
            report.error(("relay", domain), not_declared(domain, "the relay domain"), key=True)
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


# --- export -------------------------------------------------------------------------------------


def export(ctx: ExportContext) -> None:
    """Relay lines of hosted domains (credentials stay unmanaged: no password in the file)."""
    ctx.fields["relay"] = _adopt(ctx.observed, ctx.domains(), ctx.warnings)


def _adopt(observed: Observed, domains: set[str], warnings: list[str]) -> tuple[Relay, ...]:
    out = []
    for key, entry in observed.relaymap.entries.items():
        domain = key[1:]
        hostport = entry.host_port()
        if entry.key != key or not key.startswith("@") or domain not in domains:
            warnings.append(
                f"postfix-relaymap.cf: '{entry.key}' left unmanaged: not @<hosted domain>"
            )
        elif entry.excluded:
            out.append(Relay(domain, exclude=True))
        elif hostport is None or check_relay_host(hostport[0]) or not 0 < hostport[1] < 65536:
            warnings.append(f"postfix-relaymap.cf: '{key}' left unmanaged: not [host]:port")
        else:
            out.append(Relay(domain, host=hostport[0], port=hostport[1]))
    if observed.sasl.entries:
        warnings.append(
            "postfix-sasl-password.cf: relay credentials are left unmanaged (their passwords "
            "cannot go into mailserver.yaml); declare username and password_file or password_env "
            "under relay to manage them"
        )
    return tuple(sorted(out, key=lambda r: r.domain))

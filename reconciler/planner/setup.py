"""The planner for what DMS's `setup` CLI manages: masters, regexp aliases, restrictions, relays
and DKIM. Pure, like `planner` (whose keyed diff it uses): desired + observed -> changes and file
plans, no I/O.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler import dkimkeys
from reconciler.formats import access, masters, opendkim, regexp, relaymap, sasl
from reconciler.formats._lines import ParsedFile
from reconciler.model import DesiredState, PasswordFile, Relay
from reconciler.passwords.sources import DesiredPassword, Status, same_hash
from reconciler.plan import (
    SENSITIVE,
    Action,
    Change,
    FilePlan,
    Kind,
    PendingHash,
    PendingKey,
    Unmanaged,
)
from reconciler.planner.make import _diff, _explain, _FileDiff, _Want
from reconciler.volume.observe import MASTER_KEY, RELAY_KEY, Observed

KEYS_FILE = "opendkim/keys"  # the logical file of key changes: one folder per domain
MASTERS_NOTE = (
    "dovecot-masters.cf is watched by DMS: its change detector rebuilds /etc/dovecot/masterdb and "
    "reloads Dovecot. A master user logs in as `user@domain*name` with its own password"
)
REGEXP_NOTE = (
    "postfix-regexp.cf comes after postfix-virtual.cf in virtual_alias_maps: Postfix looks the "
    "full address up in postfix-virtual.cf, then in the regexp aliases (first matching pattern "
    "wins, in mailserver.yaml's order, entries not declared there after them), and only then "
    "tries postfix-virtual.cf's catch-alls (`@domain`). Their domains are not added to DMS's "
    "hosted domains: a pattern only gets mail for a domain that has an account or alias. DMS "
    "watches the file and reloads Postfix"
)
ACCESS_NOTE = (
    "{files}: DMS does not watch {it}; the sidecar puts {it} in Postfix's restrictions as DMS "
    "does at start-up and runs `postfix reload` (what `setup email restrict` runs). By hand: "
    "`docker compose up -d --force-recreate`"
)
RELAY_NOTE = (
    "postfix-relaymap.cf and postfix-sasl-password.cf are watched by DMS, which rebuilds "
    "/etc/postfix/relayhost_map and sasl_passwd and reloads Postfix. Once postfix-sasl-password.cf "
    "exists, DMS requires TLS (smtp_tls_security_level = encrypt) for all outgoing mail, until the "
    "container is recreated"
)
DKIM_NOTE = (
    "OpenDKIM's files are read when DMS starts: the sidecar copies opendkim/ to /etc/opendkim and "
    "restarts OpenDKIM (as setup.d/dmarc_dkim_spf.sh does); by hand `docker compose up -d "
    "--force-recreate`. Publish the TXT records shown by `dms-reconciler dns` first"
)


@dataclass
class SetupPlan:
    changes: list[Change] = field(default_factory=list)
    unmanaged: list[Unmanaged] = field(default_factory=list)
    files: list[FilePlan] = field(default_factory=list)
    owned: dict[str, frozenset[str]] = field(default_factory=dict)
    managed: dict[str, int] = field(default_factory=dict)  # entries on disk the state file owns
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan_setup(
    desired: DesiredState,
    observed: Observed,
    passwords: Mapping[str, DesiredPassword],
    *,
    prune: bool,
) -> SetupPlan:
    out = SetupPlan()
    own = observed.ownership

    def add(name: str, diff: _FileDiff, parsed: ParsedFile[Any], declared: bool) -> FilePlan:
        snap = observed.snapshots[name]
        out.changes.extend(diff.changes)
        out.unmanaged.extend(diff.unmanaged)
        out.owned[name] = frozenset(diff.owned)
        out.managed[name] = len(own.owned(name) & parsed.entries.keys())  # the deletion guard's
        plan = FilePlan(
            name=name,
            path=snap.path,
            write=diff.changed,
            existed=snap.exists,
            sha256_before=snap.sha256,
            content=(tuple(diff.final), parsed.comments, parsed.invalid) if diff.changed else None,
        )
        if snap.exists or declared or plan.write:
            out.files.append(plan)
        for problem in parsed.problems:
            where = f" line {problem.line}" if problem.line else ""
            out.warnings.append(f"{name}{where}: {problem.message}")
        return plan

    def diff(name: str, want: dict[str, _Want], parsed: ParsedFile[Any], **how: Any) -> _FileDiff:
        return _diff(name, want, parsed, own.owned(name), prune, explain=_explain, **how)

    # dovecot-masters.cf
    master_diff = _diff(
        masters.FILENAME,
        _want_masters(desired, observed, passwords),
        observed.masters,
        own.owned(masters.FILENAME),
        prune,
        same=_same_master,
        show=_show_password,
        kind_of=lambda key, e: Kind.MASTER,
        explain=_explain_master(passwords),
    )
    if add(masters.FILENAME, master_diff, observed.masters, bool(desired.masters)).write:
        out.notes.append(MASTERS_NOTE)

    # postfix-regexp.cf
    regexp_diff = diff(
        regexp.FILENAME,
        _want_regexp(desired),
        observed.regexp,
        same=lambda a, b: [t.lower() for t in a.targets] == [t.lower() for t in b.targets],
        show=lambda e: {"targets": list(e.targets)},
        kind_of=lambda key, e: Kind.REGEXP_ALIAS,
    )
    order = _order_change(desired, observed)
    if order is not None:
        regexp_diff.changes.append(order)
    if add(regexp.FILENAME, regexp_diff, observed.regexp, bool(desired.regexp_aliases)).write:
        out.notes.append(REGEXP_NOTE)

    # postfix-send-access.cf, postfix-receive-access.cf
    written = []
    for name, addresses in (
        (access.SEND, desired.restrict.send),
        (access.RECEIVE, desired.restrict.receive),
    ):
        parsed = observed.access.get(name) or ParsedFile({})
        want = {a: _Want(Kind.RESTRICT, access.AccessLine(a, access.REJECT)) for a in addresses}
        file_diff = diff(
            name,
            want,
            parsed,
            same=lambda a, b: a.normalised() == b.normalised(),
            show=lambda e: {"action": e.action},
            kind_of=lambda key, e: Kind.RESTRICT,
        )
        if add(name, file_diff, parsed, bool(addresses)).write:
            written.append(name)
    if written:
        one = len(written) == 1
        out.notes.append(
            ACCESS_NOTE.format(files=" and ".join(written), it="it" if one else "them")
        )

    # postfix-relaymap.cf, postfix-sasl-password.cf
    relay_diff = diff(
        relaymap.FILENAME,
        _want_relaymap(desired),
        observed.relaymap,
        same=lambda a, b: " ".join(a.value.lower().split()) == " ".join(b.value.lower().split()),
        show=_show_relay,
        kind_of=lambda key, e: Kind.RELAY,
    )
    sasl_diff = diff(
        sasl.FILENAME,
        _want_sasl(desired, observed, passwords),
        observed.sasl,
        same=_same_sasl,
        show=_show_sasl,
        kind_of=lambda key, e: Kind.RELAY_AUTH,
    )
    _say_where_credentials_go(desired, observed, relay_diff, sasl_diff)
    declared_auth = any(r.username for r in desired.relay)
    relay_written = add(relaymap.FILENAME, relay_diff, observed.relaymap, bool(desired.relay))
    sasl_written = add(sasl.FILENAME, sasl_diff, observed.sasl, declared_auth)
    if warning := _readable_secrets_warning(observed, sasl_written.write, bool(sasl_diff.final)):
        out.warnings.append(warning)
    if relay_written.write or sasl_written.write:
        out.notes.append(RELAY_NOTE)

    _plan_dkim(desired, observed, out, add, diff)
    return out


# --- masters ----------------------------------------------------------------------------------


def _want_masters(
    desired: DesiredState, observed: Observed, passwords: Mapping[str, DesiredPassword]
) -> dict[str, _Want]:
    out: dict[str, _Want] = {}
    for master in desired.masters:
        key = MASTER_KEY + master.name
        current = observed.masters.entries.get(master.name)
        decided = passwords[key]
        password: Any
        if decided.status is Status.UNRESOLVED:
            keep = current is not None and decided.changed_from is None
            password = (
                current.password_hash if current is not None and keep else PendingHash(key, True)
            )
        elif decided.status is Status.NEW:
            password = PendingHash(key)
        else:
            password = decided.hash
            if current is not None and same_hash(current.password_hash, password):
                password = current.password_hash  # same hash, other spelling: keep the bytes
        out[master.name] = _Want(Kind.MASTER, masters.MasterLine(master.name, password))
    return out


def _same_master(have: masters.MasterLine, want: masters.MasterLine) -> bool:
    if isinstance(want.password_hash, PendingHash):
        return False
    return have.name == want.name and same_hash(have.password_hash, want.password_hash)


def _show_password(entry: Any) -> dict[str, Any]:
    value = entry.password_hash
    if isinstance(value, PendingHash):
        return {"password": str(value)}
    return {"password": SENSITIVE if value else "(empty)"}


def _explain_master(passwords: Mapping[str, DesiredPassword]) -> Any:
    def explain(key: str, before: dict[str, Any], after: dict[str, Any]) -> tuple[str, ...]:
        decided = passwords.get(MASTER_KEY + key)
        if decided is not None and decided.status is Status.NEW:
            return (
                "password: (sensitive) -> (sensitive) (a new SHA512-CRYPT hash is made at apply)",
            )
        return ("password: (sensitive) -> (sensitive)",)

    return explain


# --- regexp aliases ---------------------------------------------------------------------------


def regexp_line(pattern: str, flags: str, targets: tuple[str, ...]) -> regexp.RegexpLine:
    return regexp.RegexpLine(regexp.delimit(pattern), flags, targets)


def _want_regexp(desired: DesiredState) -> dict[str, _Want]:
    out: dict[str, _Want] = {}
    for alias in desired.regexp_aliases:
        line = regexp_line(alias.pattern, alias.flags, alias.targets)
        out.setdefault(line.key, _Want(Kind.REGEXP_ALIAS, line))
    return out


def _order_change(desired: DesiredState, observed: Observed) -> Change | None:
    """The declared patterns that are on the volume already, but in another order: first match
    wins, so that is a change of routing."""
    want = list(_want_regexp(desired))
    have = [key for key in observed.regexp.entries if key in set(want)]
    wanted = [key for key in want if key in set(have)]
    if have == wanted:
        return None
    return Change(
        regexp.FILENAME,
        Kind.REGEXP_ALIAS,
        "(order)",
        Action.UPDATE,
        {"order": have},
        {"order": wanted},
        details=(
            "order: the patterns are rewritten in mailserver.yaml's order (first match wins)",
        ),
    )


# --- relays -------------------------------------------------------------------------------------


def _want_relaymap(desired: DesiredState) -> dict[str, _Want]:
    out: dict[str, _Want] = {}
    for relay in desired.relay:
        key = "@" + relay.domain
        if relay.exclude:
            out[key] = _Want(Kind.RELAY, relaymap.RelayLine(key, ""))
        elif relay.host is not None:
            value = relaymap.relay_value(relay.host, relay.port)
            out[key] = _Want(Kind.RELAY, relaymap.RelayLine(key, value))
    return out


def _show_relay(entry: relaymap.RelayLine) -> dict[str, Any]:
    return {"relay": entry.value or "(excluded from RELAY_HOST)"}


def _want_sasl(
    desired: DesiredState, observed: Observed, passwords: Mapping[str, DesiredPassword]
) -> dict[str, _Want]:
    out: dict[str, _Want] = {}
    for relay in desired.relay:
        if relay.username is None:
            continue
        key = "@" + relay.domain
        decided = passwords[RELAY_KEY + relay.domain]
        current = observed.sasl.entries.get(key)
        password: Any
        if decided.status is Status.UNRESOLVED:
            keep = current is not None and decided.changed_from is None
            password = (
                current.password
                if current is not None and keep
                else PendingHash(RELAY_KEY + relay.domain, True)
            )
        elif decided.status is Status.KEPT and current is not None and decided.secret is None:
            password = current.password  # a CI placeholder that matches its source
        else:
            assert decided.secret is not None
            password = decided.secret.reveal()
        out[key] = _Want(Kind.RELAY_AUTH, sasl.SaslLine(key, relay.username, password))
    return out


def _say_where_credentials_go(
    desired: DesiredState, observed: Observed, relay_diff: _FileDiff, sasl_diff: _FileDiff
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


# --- DKIM -----------------------------------------------------------------------------------------


def _plan_dkim(
    desired: DesiredState, observed: Observed, out: SetupPlan, add: Any, diff: Any
) -> None:
    key_table: dict[str, _Want] = {}
    signing: dict[str, _Want] = {}
    for dkim in desired.dkim:
        line = opendkim.key_table_line(dkim.domain, dkim.selector)
        key_table[line.key.lower()] = _Want(Kind.DKIM, line)
        sign = opendkim.signing_table_line(dkim.domain, dkim.selector)
        signing[sign.key.lower()] = _Want(Kind.DKIM, sign)
    declared = bool(desired.dkim)
    written = False
    for name, want in ((opendkim.KEY_TABLE, key_table), (opendkim.SIGNING_TABLE, signing)):
        parsed = observed.dkim_tables.get(name) or ParsedFile({})
        file_diff = diff(
            name,
            want,
            parsed,
            same=lambda a, b: a.normalised() == b.normalised(),
            show=lambda e: {"value": e.value},
            kind_of=lambda key, e: Kind.DKIM,
        )
        written |= add(name, file_diff, parsed, declared).write
        for change in file_diff.changes:
            if change.action is Action.DELETE and name == opendkim.KEY_TABLE:
                domain = change.key.partition("._domainkey.")[2] or change.key
                out.notes.append(
                    f"the DKIM key files of {domain} are kept in opendkim/keys/{domain}/ (a key "
                    "is never deleted by apply); OpenDKIM stops signing with it"
                )
    trusted = observed.snapshots[opendkim.TRUSTED_HOSTS]
    if declared and not trusted.exists:
        out.changes.append(
            Change(
                opendkim.TRUSTED_HOSTS,
                Kind.DKIM,
                "TrustedHosts",
                Action.CREATE,
                None,
                {"value": "127.0.0.1, localhost"},
            )
        )
        out.files.append(
            FilePlan(
                opendkim.TRUSTED_HOSTS, trusted.path, True, False, None, opendkim.TRUSTED_DEFAULT
            )
        )
        written = True
    elif trusted.exists:
        out.files.append(
            FilePlan(opendkim.TRUSTED_HOSTS, trusted.path, False, True, trusted.sha256)
        )
    for dkim in desired.dkim:
        written |= _plan_key(dkim.domain, dkim.selector, dkim.key_size, observed, out)
    if written:
        out.notes.append(DKIM_NOTE)


def _plan_key(domain: str, selector: str, bits: int, observed: Observed, out: SetupPlan) -> bool:
    """A key is made once: an existing private key file is never replaced (whatever its size)."""
    private_name = opendkim.private_key_path(domain, selector)
    txt_name = opendkim.txt_path(domain, selector)
    key_dir = os.path.join(observed.config_dir, private_name.rpartition("/")[0])
    private = observed.snapshots.get(private_name)
    txt = observed.snapshots.get(txt_name)
    key = f"{domain} ({selector})"
    if private is None or private.data is None:
        out.changes.append(
            Change(
                KEYS_FILE,
                Kind.DKIM_KEY,
                key,
                Action.CREATE,
                None,
                {"key": f"RSA {bits} bits, made at apply; the private key is never shown"},
            )
        )
        for name, part in ((private_name, "private"), (txt_name, "txt")):
            snap = observed.snapshots.get(name)
            path = f"{key_dir}/{name.rpartition('/')[2]}"
            out.files.append(
                FilePlan(
                    name,
                    path,
                    True,
                    snap is not None and snap.exists,
                    None,
                    PendingKey(domain, selector, bits, part),
                )
            )
        return True
    out.files.append(FilePlan(private_name, private.path, False, True, private.sha256))
    if exposed := dkimkeys.unsafe_mode_warning(private_name, domain, private.mode):
        out.warnings.append(exposed)
    read = dkimkeys.read(private.data)
    if read is None:
        out.warnings.append(
            f"{private_name} is not a readable RSA private key: OpenDKIM cannot sign with it; "
            "it is kept (apply never replaces a key): remove it to have a new one made"
        )
        return False
    size, public = read
    if size != bits:
        out.warnings.append(
            f"the DKIM key {private_name} has {size} bits, not the {bits} declared: it is kept "
            "(keys are never rotated by accident); to rotate, declare a new selector"
        )
    if txt is None or txt.data is None:
        text = opendkim.render_txt(domain, selector, public)
        out.changes.append(
            Change(KEYS_FILE, Kind.DKIM_KEY, key, Action.CREATE, None, {"key": "DNS record file"})
        )
        out.files.append(FilePlan(txt_name, f"{key_dir}/{selector}.txt", True, False, None, text))
        return True
    out.files.append(FilePlan(txt_name, txt.path, False, True, txt.sha256))
    return False

"""Dovecot master users: `masters:` in mailserver.yaml, `dovecot-masters.cf` on the volume.

One line per master, `name|{SCHEME}hash` (DMS's `setup dovecot-master add`); a master logs in as
`user@domain*name` with its own password. Passwords are decided as for accounts (keyed
`master:<name>`). DMS watches the file, rebuilds /etc/dovecot/masterdb and reloads Dovecot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.addresses import LOCAL_RE, check_address, check_password_hash
from reconciler.formats import masters
from reconciler.kinds.base import (
    Explain,
    ExportContext,
    KindPlan,
    PlanContext,
    Want,
    hash_for_yaml,
    password_value,
    same_password,
    show_password,
)
from reconciler.kinds.checks import DocView, Reporter, section
from reconciler.model import MASTER_KEY, PASSWORD_KEYS, Master, PasswordHash, is_encrypted
from reconciler.passwords.sources import DesiredPassword, Status
from reconciler.plan import Kind

NAME = "masters"
FILE = masters.FILENAME
NOTE = (
    "dovecot-masters.cf is watched by DMS: its change detector rebuilds /etc/dovecot/masterdb and "
    "reloads Dovecot. A master user logs in as `user@domain*name` with its own password"
)


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    parsed = ctx.observed.masters
    want: dict[str, Want] = {}
    for master in ctx.desired.masters:
        key = MASTER_KEY + master.name
        current = parsed.entries.get(master.name)
        password = password_value(
            ctx.passwords[key], key, current.password_hash if current is not None else None
        )
        want[master.name] = Want(Kind.MASTER, masters.MasterLine(master.name, password))
    diff = ctx.diff(
        FILE,
        want,
        parsed,
        same=_same,
        show=lambda e: show_password(e.password_hash),
        kind_of=lambda key, e: Kind.MASTER,
        explain=_explain(ctx.passwords),
    )
    if out.add_file(ctx, FILE, diff, parsed, listed=bool(ctx.desired.masters), guarded=True).write:
        out.notes.append(NOTE)
    return out


def _same(have: masters.MasterLine, want: masters.MasterLine) -> bool:
    return have.name == want.name and same_password(have.password_hash, want.password_hash)


def _explain(passwords: Mapping[str, DesiredPassword]) -> Explain:
    def explain(key: str, before: dict[str, Any], after: dict[str, Any]) -> tuple[str, ...]:
        decided = passwords.get(MASTER_KEY + key)
        if decided is not None and decided.status is Status.NEW:
            return (
                "password: (sensitive) -> (sensitive) (a new SHA512-CRYPT hash is made at apply)",
            )
        return ("password: (sensitive) -> (sensitive)",)

    return explain


# --- mail rules ---------------------------------------------------------------------------------


def check(report: Reporter, view: DocView) -> None:
    for name, spec in section(view.doc, "masters").items():
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


# --- export -------------------------------------------------------------------------------------


def export(ctx: ExportContext) -> None:
    """Master users whose names and hashes mailserver.yaml can hold."""
    addresses = ctx.known()
    out = []
    for key, entry in ctx.observed.masters.entries.items():
        value = hash_for_yaml(entry.password_hash) if entry.password_hash else ""
        problem = (
            check_master_name(entry.name)
            or ("its name is also an account or alias" if key in addresses else None)
            or (value and check_password_hash(value) and "its hash is in a form not accepted")
            or (not value and "it has an empty password hash")
        )
        if problem:
            ctx.warnings.append(f"dovecot-masters.cf: master user left unmanaged: {problem}")
            continue
        out.append(Master(key, PasswordHash(value)))
    ctx.fields["masters"] = tuple(sorted(out, key=lambda m: m.name))

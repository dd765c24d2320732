"""Dovecot master users: `masters:` in mailserver.yaml, `dovecot-masters.cf` on the volume.

One line per master, `name|{SCHEME}hash` (DMS's `setup dovecot-master add`); a master logs in as
`user@domain*name` with its own password. Passwords are decided as for accounts (keyed
`master:<name>`). DMS watches the file, rebuilds /etc/dovecot/masterdb and reloads Dovecot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.formats import masters
from reconciler.kinds.base import (
    Explain,
    KindPlan,
    PlanContext,
    Want,
    password_value,
    same_password,
    show_password,
)
from reconciler.model import MASTER_KEY
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

"""Mail accounts: `accounts:` in mailserver.yaml, `postfix-accounts.cf` on the volume.

One line per account, `address|{SCHEME}hash` (DMS's `setup email add`); extra fields after the
hash are carried over. A kept secret keeps its stored hash (no random salt churn); a new or
changed one gets a SHA512-CRYPT hash at apply. Deleting an account never deletes its maildir.
Apply refuses to delete more accounts than the deletion guard allows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from reconciler.addresses import domain_of, local_of
from reconciler.formats import accounts
from reconciler.kinds.base import (
    KindPlan,
    PlanContext,
    Want,
    password_value,
    same_password,
    show_password,
    with_reason,
)
from reconciler.passwords.sources import DesiredPassword, Status, same_hash, source_id
from reconciler.plan import Action, Kind

NAME = "accounts"
FILE = accounts.FILENAME


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    diff = ctx.diff(
        FILE,
        _want(ctx),
        ctx.observed.accounts,
        same=_same,
        show=_show,
        kind_of=lambda key, e: Kind.ACCOUNT,
        explain=_explain(ctx.passwords, ctx.observed.accounts.entries),
    )
    diff.changes = [
        with_reason(c, f"{c.reason}; its mail in {_maildir(c.key)} is kept")
        if c.action is Action.DELETE
        else c
        for c in diff.changes
    ]
    out.add_file(ctx, FILE, diff, ctx.observed.accounts, guarded=True, duplicates=True)
    if any(c.action is Action.DELETE for c in out.changes):
        out.notes.append("deleting an account never deletes its maildir under /var/mail")
    return out


def _want(ctx: PlanContext) -> dict[str, Want]:
    out: dict[str, Want] = {}
    for account in ctx.desired.accounts:
        current = ctx.observed.accounts.entries.get(account.address)
        password = password_value(
            ctx.passwords[account.address],
            account.address,
            current.password_hash if current is not None else None,
        )
        extra = current.extra if current is not None else None  # extra fields are carried over
        out[account.address] = Want(
            Kind.ACCOUNT, accounts.AccountLine(account.address, password, extra)
        )
    return out


def _same(have: accounts.AccountLine, want: accounts.AccountLine) -> bool:
    return have.address == want.address and same_password(have.password_hash, want.password_hash)


def _show(entry: accounts.AccountLine) -> dict[str, Any]:
    return show_password(entry.password_hash)


def _explain(
    passwords: Mapping[str, DesiredPassword],
    observed: Mapping[str, accounts.AccountLine],
) -> Callable[[str, dict[str, Any], dict[str, Any]], tuple[str, ...]]:
    """What changed in an account line: its spelling, its hash, or both (never the values)."""

    def explain(key: str, before: dict[str, Any], after: dict[str, Any]) -> tuple[str, ...]:
        current, decided = observed.get(key), passwords.get(key)
        lines: list[str] = []
        if current is not None and current.address != key:
            lines.append(f"address: {current.address} -> {key} (DMS logins are lowercase)")
        if decided is None or current is None:
            return tuple(lines)
        if decided.changed_from is not None:
            then = {
                Status.GIVEN: "written as given",
                Status.KEPT: "the stored hash still matches",
                Status.NEW: "a new SHA512-CRYPT hash is made at apply",
                Status.UNRESOLVED: "the secret is read and hashed at apply",
            }[decided.status]
            change = f"{decided.changed_from} -> {source_id(decided.source)}"
            lines.append(f"password source: {change} ({then})")
        elif decided.status is Status.GIVEN and not same_hash(
            current.password_hash, decided.hash or ""
        ):
            lines.append("password: (sensitive) -> (sensitive) (password_hash changed)")
        elif decided.status is Status.NEW:
            lines.append(
                f"password: (sensitive) -> (sensitive) (the secret from "
                f"{source_id(decided.source)} no longer matches the stored hash; a new "
                "SHA512-CRYPT hash is made at apply)"
            )
        return tuple(lines)

    return explain


def _maildir(address: str) -> str:
    return f"/var/mail/{domain_of(address)}/{local_of(address)}/"

"""Mail accounts: `accounts:` in mailserver.yaml, `postfix-accounts.cf` on the volume.

One line per account, `address|{SCHEME}hash` (DMS's `setup email add`); extra fields after the
hash are carried over. A kept secret keeps its stored hash (no random salt churn); a new or
changed one gets a SHA512-CRYPT hash at apply. Deleting an account never deletes its maildir.
Apply refuses to delete more accounts than the deletion guard allows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from reconciler.addresses import check_address, check_password_hash, domain_of, local_of
from reconciler.formats import accounts
from reconciler.kinds.base import (
    ExportContext,
    KindPlan,
    PlanContext,
    Want,
    hash_for_yaml,
    password_value,
    same_password,
    show_password,
    with_reason,
)
from reconciler.kinds.checks import DocView, Reporter, report_undeclared
from reconciler.model import PASSWORD_KEYS, Account, PasswordHash, is_encrypted
from reconciler.passwords.sources import (
    DesiredPassword,
    Status,
    same_hash,
    source_id,
    user_owned_notes,
)
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
    out.notes += user_owned_notes(ctx.passwords)
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
                Status.USER_OWNED: "user-owned: the password its user set is kept",
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


# --- mail rules ---------------------------------------------------------------------------------


def check(report: Reporter, view: DocView) -> None:
    """Addresses DMS can log in with, in a declared domain; exactly one password source each,
    hashes in a form Dovecot reads."""
    for address in view.accounts:
        if problem := view.address_problem(address):
            report.error(("accounts", address), problem, key=True)
        elif domain_of(address) not in view.declared:
            report_undeclared(
                report, view, ("accounts", address), domain_of(address), f"'{address}'", key=True
            )
    for address, account in view.accounts.items():
        if not isinstance(account, dict):
            continue
        given = [k for k in PASSWORD_KEYS if k in account]
        if not given:
            report.error(
                ("accounts", address),
                f"account '{address}' has no password: give one of password_hash, "
                "password_file, password_env or password (SOPS-encrypted)",
                key=True,
            )
        elif len(given) > 1:
            report.error(
                ("accounts", address, given[1]),
                f"account '{address}' has {' and '.join(given)}; keep exactly one password source",
                key=True,
            )
        value = account.get("password_hash")
        if (
            isinstance(value, str)
            and not is_encrypted(value)  # SOPS: checked once decrypted, at plan
            and (problem := view.hash_problem(value))
        ):
            report.error(("accounts", address, "password_hash"), problem)
        path = account.get("password_file")
        if isinstance(path, str) and ("\n" in path or "\0" in path):
            report.error(
                ("accounts", address, "password_file"),
                "password_file must be a single path without line breaks or NUL bytes",
            )


# --- export -------------------------------------------------------------------------------------


def export(ctx: ExportContext) -> None:
    """The accounts mailserver.yaml can declare, their hashes kept (quotas: the quotas kind)."""
    out = []
    for key, entry in ctx.observed.accounts.entries.items():
        if entry.address != key:
            ctx.warnings.append(
                f"postfix-accounts.cf: '{entry.address}' has uppercase letters; left unmanaged"
            )
            continue
        if problem := check_address(key):
            ctx.warnings.append(f"postfix-accounts.cf: account left unmanaged: {problem}")
            continue
        if not entry.password_hash:
            ctx.warnings.append(
                f"postfix-accounts.cf: '{key}' has an empty password hash; left unmanaged "
                "(set a password with password_file)"
            )
            continue
        value = hash_for_yaml(entry.password_hash)
        if check_password_hash(value):
            ctx.warnings.append(
                f"postfix-accounts.cf: the password hash of '{key}' is in a form "
                "mailserver.yaml does not accept; left unmanaged"
            )
            continue
        out.append(Account(key, PasswordHash(value)))
    ctx.fields["accounts"] = tuple(sorted(out, key=lambda a: a.address))

"""desired + observed -> Plan. Stage 3 of the pipeline.

This is a purely computational function with no side effects: it reads no file and writes none,
so it runs in a REPL on literals. Each DMS file is diffed by key with set arithmetic:
create = desired - observed, delete = observed - desired (only entries we wrote, or all with
prune), update = shared keys whose values differ. Entries on the volume that we did not write and
the file does not declare are unmanaged and kept. Values are compared as entries, not bytes, so a
volume that already matches (CRLF, another order, comments) is a no-change plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from reconciler.addresses import domain_of, local_of
from reconciler.formats import accounts, aliases, amavis, cron, quotas, virtual
from reconciler.formats._lines import ParsedFile
from reconciler.gcpause import paused
from reconciler.model import DesiredState
from reconciler.observe import CRON, Observed
from reconciler.passwords import DesiredPassword, Secret, Status, same_hash, source_id
from reconciler.plan import (
    SENSITIVE,
    Action,
    Change,
    FilePlan,
    Kind,
    Plan,
    PendingHash,
    Unmanaged,
)
from reconciler.state import Ownership

DEVNULL_TARGET = "devnull"
DEVNULL_LOCAL = aliases.LocalAlias("devnull", "/dev/null")


class _Want(NamedTuple):
    """A desired entry: its kind and the codec entry (a tuple: one is made per entry)."""

    kind: Kind
    entry: Any


@dataclass
class _FileDiff:
    changes: list[Change]
    unmanaged: list[Unmanaged]
    final: list[Any]
    owned: set[str]

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@paused
def make_plan(
    desired: DesiredState,
    observed: Observed,
    passwords: Mapping[str, DesiredPassword],
    *,
    prune: bool = False,
) -> Plan:
    """What apply must do so the volume matches `desired`. Pure: no I/O, no clock, no randomness."""
    prune = prune or desired.policy.prune
    own = observed.ownership
    changes: list[Change] = []
    unmanaged: list[Unmanaged] = []
    files: list[FilePlan] = []
    owned_after: dict[str, frozenset[str]] = {}
    warnings = [f"{name} line {p.line}: {p.message}" if p.line else f"{name}: {p.message}"
                for name, parsed in _entry_files(observed) for p in parsed.problems]
    warnings += observed.warnings
    notes: list[str] = []

    account_diff = _diff(
        accounts.FILENAME, _want_accounts(desired, observed, passwords), observed.accounts,
        own.owned(accounts.FILENAME), prune,
        same=_same_account, show=_show_account, kind_of=lambda key, e: Kind.ACCOUNT,
        explain=_explain_account(passwords),
    )
    account_diff.changes = [
        _with_reason(c, f"{c.reason}; its mail in {_maildir(c.key)} is kept")
        if c.action is Action.DELETE else c
        for c in account_diff.changes
    ]
    virtual_diff = _diff(
        virtual.FILENAME, _want_virtual(desired), observed.virtual,
        own.owned(virtual.FILENAME), prune,
        same=_same_virtual, show=_show_virtual, kind_of=_virtual_kind, explain=_explain,
    )
    local_diff = _diff(
        aliases.FILENAME, _want_local_aliases(desired), observed.local_aliases,
        own.owned(aliases.FILENAME), prune,
        same=lambda a, b: a.normalised() == b.normalised(),
        show=lambda e: {"target": e.value}, kind_of=lambda key, e: Kind.LOCAL_ALIAS,
        explain=_explain,
    )
    quota_diff = _diff(
        quotas.FILENAME, _want_quotas(desired), observed.quotas,
        own.owned(quotas.FILENAME), prune,
        same=lambda a, b: a.size == b.size and a.address.lower() == b.address.lower(),
        show=lambda e: {"quota": e.size}, kind_of=lambda key, e: Kind.QUOTA, explain=_explain,
    )
    for name, diff, parsed in (
        (accounts.FILENAME, account_diff, observed.accounts),
        (virtual.FILENAME, virtual_diff, observed.virtual),
        (aliases.FILENAME, local_diff, observed.local_aliases),
        (quotas.FILENAME, quota_diff, observed.quotas),
    ):
        changes += diff.changes
        unmanaged += diff.unmanaged
        owned_after[name] = frozenset(diff.owned)
        snap = observed.snapshots[name]
        files.append(FilePlan(
            name=name, path=snap.path, write=diff.changed, existed=snap.exists,
            sha256_before=snap.sha256,
            content=(tuple(diff.final), parsed.comments, parsed.invalid) if diff.changed else None,
        ))

    amavis_changes, amavis_plan = _plan_amavis(desired, observed)
    changes += amavis_changes
    files.append(amavis_plan)
    if observed.amavis is not None and observed.amavis.broken_markers:
        warnings.append(f"{amavis.FILENAME} has the dms-reconciler BEGIN marker but no END marker; "
                        "it is left untouched until the markers are fixed by hand")

    cron_changes, cron_unmanaged, cron_plan, owns_cron = _plan_cron(desired, observed, prune)
    changes += cron_changes
    unmanaged += cron_unmanaged
    files.append(cron_plan)

    warnings += _shadow_warnings(desired, observed, virtual_diff, account_diff)
    unresolved = tuple(sorted(a for a, p in passwords.items() if p.status is Status.UNRESOLVED))
    if amavis_plan.write:
        notes.append("amavis.cf is read when the DMS container starts: the sidecar installs it and "
                     "restarts Amavis; by hand run `docker compose up -d --force-recreate`")
    if any(c.action is Action.DELETE and c.kind is Kind.ACCOUNT for c in changes):
        notes.append("deleting an account never deletes its maildir under /var/mail")

    managed_accounts = len(own.owned(accounts.FILENAME) & set(observed.accounts.entries))
    deletions = sum(c.action is Action.DELETE and c.kind is Kind.ACCOUNT for c in changes)
    if desired.policy.max_deletions is not None:
        limit, limit_source = desired.policy.max_deletions, "policy.max_deletions"
    else:
        limit, limit_source = managed_accounts // 2, "half of the accounts this tool manages"

    secrets: dict[str, Secret] = {
        address: p.secret for address, p in passwords.items()
        if p.status is Status.NEW and p.secret is not None
    }
    return Plan(
        changes=tuple(changes),
        unmanaged=tuple(unmanaged),
        files=tuple(files),
        ownership=Ownership(owned_after, owns_cron, own.plan_key),
        fingerprint=observed.fingerprint(),
        warnings=tuple(warnings),
        notes=tuple(notes),
        unresolved=unresolved,
        account_deletions=deletions,
        deletion_limit=limit,
        deletion_limit_source=limit_source,
        secrets=secrets,
        managed_accounts=managed_accounts,
    )


def _entry_files(observed: Observed) -> Iterable[tuple[str, ParsedFile[Any]]]:
    yield accounts.FILENAME, observed.accounts
    yield virtual.FILENAME, observed.virtual
    yield aliases.FILENAME, observed.local_aliases
    yield quotas.FILENAME, observed.quotas


# --- the generic keyed diff -----------------------------------------------------------------------

def _diff(
    name: str,
    want: Mapping[str, _Want],
    have: ParsedFile[Any],
    owned: frozenset[str],
    prune: bool,
    *,
    same: Callable[[Any, Any], bool],
    show: Callable[[Any], dict[str, Any]],
    kind_of: Callable[[str, Any], Kind],
    explain: Callable[[str, dict[str, Any], dict[str, Any]], tuple[str, ...]],
) -> _FileDiff:
    changes: list[Change] = []
    unmanaged: list[Unmanaged] = []
    final: list[Any] = []
    entries = have.entries
    for key, wanted in want.items():
        current = entries.get(key)
        if current is None:
            changes.append(Change(name, wanted.kind, key, Action.CREATE, None, show(wanted.entry)))
        elif not same(current, wanted.entry):
            before, after = show(current), show(wanted.entry)
            changes.append(Change(name, wanted.kind, key, Action.UPDATE, before, after,
                                  details=explain(key, before, after)))
        final.append(wanted.entry)
    for key, current in entries.items():
        if key in want:
            continue
        kind = kind_of(key, current)
        if key in owned:
            changes.append(Change(name, kind, key, Action.DELETE, show(current), None,
                                  reason="removed from mailserver.yaml"))
        elif prune:
            changes.append(Change(name, kind, key, Action.DELETE, show(current), None,
                                  reason="not in mailserver.yaml and prune is on"))
        else:
            unmanaged.append(Unmanaged(name, kind, key))
            final.append(current)
    return _FileDiff(changes, unmanaged, final, set(want))


def _explain(key: str, before: dict[str, Any], after: dict[str, Any]) -> tuple[str, ...]:
    """Readable lines for what changed inside one entry (deepdiff, order-insensitive lists).

    Only updated entries get here, never whole files. deepdiff is imported on first use: it pulls
    in numpy and pydantic (about 0.2 s), which a plan without updates does not need.
    """
    from deepdiff import DeepDiff

    diff = DeepDiff(before, after, ignore_order=True, verbose_level=2)
    lines: list[str] = []
    for path, change in diff.get("values_changed", {}).items():
        lines.append(f"{_field(path)}: {change['old_value']} -> {change['new_value']}")
    for path, value in diff.get("iterable_item_added", {}).items():
        lines.append(f"{_field(path)}: + {value}")
    for path, value in diff.get("iterable_item_removed", {}).items():
        lines.append(f"{_field(path)}: - {value}")
    for path, value in diff.get("dictionary_item_added", {}).items():
        lines.append(f"{_field(path)}: (none) -> {value}")
    for path, value in diff.get("dictionary_item_removed", {}).items():
        lines.append(f"{_field(path)}: {value} -> (none)")
    for path, change in diff.get("type_changes", {}).items():
        lines.append(f"{_field(path)}: {change['old_value']} -> {change['new_value']}")
    return tuple(sorted(lines))


def _field(path: str) -> str:
    """deepdiff's `root['targets'][2]` -> `targets`."""
    inner = path.removeprefix("root")
    first = inner.split("]")[0]
    return first.strip("[").strip("'\"") or "value"


def _with_reason(change: Change, reason: str) -> Change:
    return Change(change.file, change.kind, change.key, change.action, change.before,
                  change.after, reason, change.details)


# --- postfix-accounts.cf ------------------------------------------------------------------------

def _want_accounts(
    desired: DesiredState, observed: Observed, passwords: Mapping[str, DesiredPassword]
) -> dict[str, _Want]:
    out: dict[str, _Want] = {}
    for account in desired.accounts:
        current = observed.accounts.entries.get(account.address)
        decided = passwords[account.address]
        password: Any
        if decided.status is Status.UNRESOLVED:
            password = current.password_hash if current else PendingHash(account.address, True)
        elif decided.status is Status.NEW:
            password = PendingHash(account.address)
        else:
            password = decided.hash
            if current is not None and same_hash(current.password_hash, password):
                password = current.password_hash  # same hash, other spelling: keep the bytes
        extra = current.extra if current is not None else None  # extra fields are carried over
        out[account.address] = _Want(Kind.ACCOUNT,
                                     accounts.AccountLine(account.address, password, extra))
    return out


def _same_account(have: accounts.AccountLine, want: accounts.AccountLine) -> bool:
    if isinstance(want.password_hash, PendingHash):
        return False
    return have.address == want.address and same_hash(have.password_hash, want.password_hash)


def _show_account(entry: accounts.AccountLine) -> dict[str, Any]:
    out: dict[str, Any] = {"password": str(entry.password_hash) if isinstance(
        entry.password_hash, PendingHash) else SENSITIVE}
    if not isinstance(entry.password_hash, PendingHash) and not entry.password_hash:
        out["password"] = "(empty)"
    return out


def _explain_account(
    passwords: Mapping[str, DesiredPassword],
) -> Callable[[str, dict[str, Any], dict[str, Any]], tuple[str, ...]]:
    def explain(key: str, before: dict[str, Any], after: dict[str, Any]) -> tuple[str, ...]:
        decided = passwords.get(key)
        if decided is None:
            return ("address spelling",)
        if decided.status is Status.GIVEN:
            return ("password: (sensitive) -> (sensitive) (password_hash changed)",)
        if decided.status is Status.NEW:
            return (f"password: (sensitive) -> (sensitive) (the secret from {source_id(decided.source)} "
                    "no longer matches the stored hash; a new SHA512-CRYPT hash is made at apply)",)
        return ("address spelling",)
    return explain


def _maildir(address: str) -> str:
    return f"/var/mail/{domain_of(address)}/{local_of(address)}/"


# --- postfix-virtual.cf ---------------------------------------------------------------------------

def _want_virtual(desired: DesiredState) -> dict[str, _Want]:
    out: dict[str, _Want] = {}
    for alias in desired.aliases:
        out[alias.address] = _Want(Kind.ALIAS, virtual.VirtualLine(alias.address, alias.targets))
    catch_domains = set()
    for catch in desired.catch_all:
        key = "@" + catch.domain
        catch_domains.add(catch.domain)
        out[key] = _Want(Kind.CATCH_ALL, virtual.VirtualLine(key, catch.targets))
    for address in desired.devnull:
        out[address] = _Want(Kind.DEVNULL, virtual.VirtualLine(address, (DEVNULL_TARGET,)))
    for account in desired.accounts:
        # Postfix checks `user@domain` before `@domain`: without this line the catch-all
        # would take the account's mail (DMS docs, provisioner/file.md).
        if domain_of(account.address) in catch_domains:
            out[account.address] = _Want(
                Kind.SELF_ALIAS, virtual.VirtualLine(account.address, (account.address,))
            )
    return out


def _same_virtual(have: virtual.VirtualLine, want: virtual.VirtualLine) -> bool:
    if have.targets == want.targets:  # the usual case once we wrote the line: skip the sets
        return True
    return {t.lower() for t in have.targets} == {t.lower() for t in want.targets}


def _show_virtual(entry: virtual.VirtualLine) -> dict[str, Any]:
    return {"targets": list(entry.targets)}


def _virtual_kind(key: str, entry: virtual.VirtualLine) -> Kind:
    if key.startswith("@"):
        return Kind.CATCH_ALL
    if [t.lower() for t in entry.targets] == [DEVNULL_TARGET]:
        return Kind.DEVNULL
    if [t.lower() for t in entry.targets] == [key]:
        return Kind.SELF_ALIAS
    return Kind.ALIAS


# --- postfix-aliases.cf and dovecot-quotas.cf -----------------------------------------------------

def _want_local_aliases(desired: DesiredState) -> dict[str, _Want]:
    if not desired.devnull:
        return {}
    return {"devnull": _Want(Kind.LOCAL_ALIAS, DEVNULL_LOCAL)}


def _want_quotas(desired: DesiredState) -> dict[str, _Want]:
    return {
        a.address: _Want(Kind.QUOTA, quotas.QuotaLine(a.address, a.quota))
        for a in desired.accounts
        if a.quota is not None
    }


# --- amavis.cf: our marked block --------------------------------------------------------------

def _plan_amavis(desired: DesiredState, observed: Observed) -> tuple[list[Change], FilePlan]:
    snap = observed.snapshots[amavis.FILENAME]
    current = observed.amavis
    have = (current.block if current else None) or {}
    want = ({k: desired.quarantine.mailbox for k in desired.quarantine.kinds}
            if desired.quarantine else {})
    changes: list[Change] = []
    for kind in amavis.KINDS:
        key = f"{kind}_quarantine_to"
        before = {"mailbox": have[kind]} if kind in have else None
        after = {"mailbox": want[kind]} if kind in want else None
        if before == after:
            continue
        if before is None:
            changes.append(Change(amavis.FILENAME, Kind.QUARANTINE, key, Action.CREATE, None, after))
        elif after is None:
            changes.append(Change(amavis.FILENAME, Kind.QUARANTINE, key, Action.DELETE, before, None,
                                  reason="quarantine kind removed from mailserver.yaml"))
        else:
            changes.append(Change(amavis.FILENAME, Kind.QUARANTINE, key, Action.UPDATE, before,
                                  after, details=_explain(key, before, after)))
    if current is not None and current.broken_markers:
        return [], FilePlan(amavis.FILENAME, snap.path, False, snap.exists, snap.sha256)
    # Lines inside our block that we do not understand are ours to repair.
    write = bool(changes) or (current is not None and current.unreadable_block)
    content = amavis.with_block(current, want or None) if write else None
    return changes, FilePlan(amavis.FILENAME, snap.path, write, snap.exists, snap.sha256, content)


# --- the sa-learn cron file ---------------------------------------------------------------------

def cron_lines(desired: DesiredState) -> list[cron.CronLine]:
    """The cron lines for the declared sa_learn jobs, in job order, without duplicates."""
    lines: dict[str, cron.CronLine] = {}
    for job in desired.sa_learn:
        if job.accounts is not None:
            scopes = [(domain_of(a), local_of(a)) for a in job.accounts]
        elif job.domains is not None:
            scopes = [(d, "*") for d in job.domains]
        else:
            scopes = [("*", "*")]
        for domain, user in scopes:
            text = cron.job_line(job.schedule, job.learn.value, domain, user, job.folder)
            lines.setdefault(text, cron.CronLine(text))
    return list(lines.values())


def _plan_cron(
    desired: DesiredState, observed: Observed, prune: bool
) -> tuple[list[Change], list[Unmanaged], FilePlan, bool]:
    snap = observed.snapshots[CRON]
    have = observed.cron.entries if observed.cron else {}
    comments = observed.cron.comments if observed.cron else ()
    want = {line.key: line for line in cron_lines(desired)}
    owns = observed.ownership.owns_cron
    changes: list[Change] = []
    unmanaged: list[Unmanaged] = []
    if not want and not owns:
        for key in have:
            if prune:
                changes.append(Change(CRON, Kind.SA_LEARN, key, Action.DELETE, {"line": key}, None,
                                      reason="not in mailserver.yaml and prune is on"))
            else:
                unmanaged.append(Unmanaged(CRON, Kind.SA_LEARN, key))
        write = bool(changes)
        content = ((), comments) if write else None
        return changes, unmanaged, FilePlan(CRON, snap.path, write, snap.exists, snap.sha256,
                                            content, in_place=True), False
    for key, line in want.items():
        if key not in have:
            changes.append(Change(CRON, Kind.SA_LEARN, key, Action.CREATE, None, {"line": key}))
    reason = ("the sa-learn cron file is owned whole by `sa_learn` in mailserver.yaml" if want
              else "sa_learn removed from mailserver.yaml")
    for key in have:
        if key not in want:
            changes.append(Change(CRON, Kind.SA_LEARN, key, Action.DELETE, {"line": key}, None,
                                  reason=reason))
    write = bool(changes)
    content = (tuple(want.values()), comments) if write else None
    return changes, unmanaged, FilePlan(CRON, snap.path, write, snap.exists, snap.sha256, content,
                                        in_place=True), bool(want)


# --- warnings about what stays ----------------------------------------------------------------

def _shadow_warnings(
    desired: DesiredState, observed: Observed, virtual_diff: _FileDiff, account_diff: _FileDiff
) -> list[str]:
    """Unmanaged aliases that will misroute mail after this plan: say so, do not touch them."""
    out: list[str] = []
    account_set = {a.address for a in desired.accounts}
    deleted = {c.key for c in account_diff.changes if c.action is Action.DELETE}
    for item in virtual_diff.unmanaged:
        if item.key in account_set:
            out.append(f"unmanaged alias '{item.key}' in postfix-virtual.cf shadows the account "
                       f"'{item.key}': Postfix delivers by the alias (remove it, or use --prune)")
        entry = observed.virtual.entries.get(item.key)
        if entry is not None:
            gone = sorted({t.lower() for t in entry.targets} & deleted)
            if gone:
                out.append(f"unmanaged alias '{item.key}' still points to deleted account(s) "
                           f"{', '.join(gone)}")
    return out

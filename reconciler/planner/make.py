"""desired + observed -> Plan. Stage 3 of the pipeline.

This is a purely computational function with no side effects: it reads no file and writes none,
so it runs in a REPL on literals. Each DMS file is diffed by key with set arithmetic:
create = desired - observed, delete = observed - desired (only entries we wrote, or all with
prune), update = shared keys whose values differ. Entries on the volume that we did not write and
the file does not declare are unmanaged and kept. Values are compared as entries, not bytes, so a
volume that already matches (CRLF, another order, comments) is a no-change plan.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from reconciler.addresses import domain_of, local_of
from reconciler.formats import accounts, aliases, amavis, cron, quotas, virtual
from reconciler.formats._lines import ParsedFile
from reconciler.gcpause import paused
from reconciler.model import DesiredState
from reconciler.passwords.sources import (
    DesiredPassword,
    Secret,
    Status,
    same_hash,
    source_id,
    user_owned_notes,
)
from reconciler.plan import (
    SENSITIVE,
    Action,
    Change,
    DeletionGuard,
    FilePlan,
    Kind,
    PendingHash,
    Plan,
    Unmanaged,
)
from reconciler.state import Ownership
from reconciler.volume.observe import CRON, RELAY_KEY, Observed

DEVNULL_TARGET = "devnull"
BLOCK_KEY = "block"  # the key of an amavis.cf change about the marked block as a whole
BLOCK_REPAIR = "lines inside the dms-reconciler block that are not quarantine settings are removed"
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
    warnings = [
        f"{name} line {p.line}: {p.message}" if p.line else f"{name}: {p.message}"
        for name, parsed in _entry_files(observed)
        for p in parsed.problems
    ]
    warnings += observed.warnings
    notes: list[str] = []

    account_diff = _diff(
        accounts.FILENAME,
        _want_accounts(desired, observed, passwords),
        observed.accounts,
        own.owned(accounts.FILENAME),
        prune,
        same=_same_account,
        show=_show_account,
        kind_of=lambda key, e: Kind.ACCOUNT,
        explain=_explain_account(passwords, observed.accounts.entries),
    )
    account_diff.changes = [
        _with_reason(c, f"{c.reason}; its mail in {_maildir(c.key)} is kept")
        if c.action is Action.DELETE
        else c
        for c in account_diff.changes
    ]
    hand_written_virtual = set(observed.virtual.entries) - own.owned(virtual.FILENAME)
    virtual_diff = _diff(
        virtual.FILENAME,
        _want_virtual(
            desired,
            kept_accounts=[u.key for u in account_diff.unmanaged],
            hand_written=hand_written_virtual,
        ),
        observed.virtual,
        own.owned(virtual.FILENAME),
        prune,
        same=_same_virtual,
        show=_show_virtual,
        kind_of=_virtual_kind,
        explain=_explain,
    )
    sole_targets = _sole_catch_all_targets(desired)
    virtual_diff.changes = [
        _with_reason(
            c,
            "not needed: the account is the only target of its domain's catch-all "
            "(DMS warned about this line at every start and change)",
        )
        if c.action is Action.DELETE and c.kind is Kind.SELF_ALIAS and c.key in sole_targets
        else c
        for c in virtual_diff.changes
    ]
    local_diff = _diff(
        aliases.FILENAME,
        _want_local_aliases(desired),
        observed.local_aliases,
        own.owned(aliases.FILENAME),
        prune,
        same=lambda a, b: a.normalised() == b.normalised(),
        show=lambda e: {"target": e.value},
        kind_of=lambda key, e: Kind.LOCAL_ALIAS,
        explain=_explain,
    )
    quota_diff = _diff(
        quotas.FILENAME,
        _want_quotas(desired),
        observed.quotas,
        own.owned(quotas.FILENAME),
        prune,
        same=lambda a, b: (
            a.size == b.size and a.address.lower() == b.address.lower() and a.shadowed is None
        ),
        show=_show_quota,
        kind_of=lambda key, e: Kind.QUOTA,
        explain=_explain,
    )
    duplicate_accounts = 0  # a dropped duplicate line is no account deletion (the guard)
    for name, diff, parsed in (
        (accounts.FILENAME, account_diff, observed.accounts),
        (virtual.FILENAME, virtual_diff, observed.virtual),
        (aliases.FILENAME, local_diff, observed.local_aliases),
        (quotas.FILENAME, quota_diff, observed.quotas),
    ):
        if diff.changed and parsed.duplicates:  # the rewrite drops them: say so, line by line
            dropped = _dropped_duplicates(name, parsed, *_SHOW_AND_KIND[name])
            duplicate_accounts += sum(c.kind is Kind.ACCOUNT for c in dropped)
            diff.changes += dropped
        changes += diff.changes
        unmanaged += diff.unmanaged
        owned_after[name] = frozenset(diff.owned)
        snap = observed.snapshots[name]
        files.append(
            FilePlan(
                name=name,
                path=snap.path,
                write=diff.changed,
                existed=snap.exists,
                sha256_before=snap.sha256,
                content=(tuple(diff.final), parsed.comments, parsed.invalid)
                if diff.changed
                else None,
            )
        )

    amavis_changes, amavis_plan = _plan_amavis(desired, observed)
    changes += amavis_changes
    files.append(amavis_plan)
    if observed.amavis is not None and observed.amavis.broken_markers:
        warnings.append(
            f"{amavis.FILENAME} has the dms-reconciler BEGIN marker but no END marker; "
            "it is left untouched until the markers are fixed by hand"
        )

    cron_changes, cron_unmanaged, cron_plan, owns_cron = _plan_cron(desired, observed, prune)
    changes += cron_changes
    unmanaged += cron_unmanaged
    files.append(cron_plan)

    from reconciler.planner.setup import plan_setup  # it uses this module's keyed diff

    setup = plan_setup(desired, observed, passwords, prune=prune)
    changes += setup.changes
    unmanaged += setup.unmanaged
    files += setup.files
    owned_after.update(setup.owned)
    warnings += setup.warnings
    notes += setup.notes

    warnings += _shadow_warnings(desired, observed, virtual_diff, account_diff)
    self_aliases = self_alias_warning(desired, virtual_diff.changes)
    if self_aliases:
        warnings.append(self_aliases)
    unresolved = tuple(sorted(a for a, p in passwords.items() if p.status is Status.UNRESOLVED))
    if amavis_plan.write:
        notes.append(
            "amavis.cf is read when the DMS container starts: the sidecar installs it and "
            "restarts Amavis; by hand run `docker compose up -d --force-recreate`"
        )
    if amavis_plan.write and desired.quarantine:
        notes.append(quarantine_note(desired.quarantine.mailbox))
    if cron_plan.write and desired.sa_learn:
        notes.append(
            f"sa-learn jobs learn into {cron.DBPATH}, the Bayes database Amavis reads (DMS "
            "links it to /var/mail-state/lib-amavis when /var/mail-state is mounted), skip a "
            "folder that does not exist yet and chown the database back to amavis"
        )
    if any(c.action is Action.DELETE and c.kind is Kind.ACCOUNT for c in changes):
        notes.append("deleting an account never deletes its maildir under /var/mail")
    notes += user_owned_notes(passwords)

    managed_accounts = len(own.owned(accounts.FILENAME) & set(observed.accounts.entries))
    deletions = sum(c.action is Action.DELETE and c.kind is Kind.ACCOUNT for c in changes)
    account_guard = _deletion_guard(
        accounts.FILENAME, deletions - duplicate_accounts, managed_accounts, desired, "accounts"
    )
    guards = tuple(  # every other kind the state file can claim: masters, relay, regexp, ...
        _deletion_guard(
            name,
            sum(c.action is Action.DELETE and c.file == name for c in setup.changes),
            managed,
            desired,
            f"entries of {name}",
        )
        for name, managed in setup.managed.items()
    )

    secrets: dict[str, Secret] = {
        address: p.secret
        for address, p in passwords.items()
        if p.status is Status.NEW and p.secret is not None and not address.startswith(RELAY_KEY)
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
        account_deletions=account_guard.deletions,
        deletion_limit=account_guard.limit,
        deletion_limit_source=account_guard.limit_source,
        secrets=secrets,
        managed_accounts=managed_accounts,
        guards=guards,
    )


def _deletion_guard(
    name: str, deletions: int, managed: int, desired: DesiredState, what: str
) -> DeletionGuard:
    """The same rule for every file: at most policy.max_deletions deletions, by default at most
    half of the entries the state file says we manage there (so a state file claiming entries
    made by hand cannot have them all deleted)."""
    if desired.policy.max_deletions is not None:
        return DeletionGuard(name, deletions, desired.policy.max_deletions, "policy.max_deletions")
    return DeletionGuard(name, deletions, managed // 2, f"half of the {what} this tool manages")


def _entry_files(observed: Observed) -> Iterable[tuple[str, ParsedFile[Any]]]:
    yield accounts.FILENAME, observed.accounts
    yield virtual.FILENAME, observed.virtual
    yield aliases.FILENAME, observed.local_aliases
    yield quotas.FILENAME, observed.quotas


# --- the generic keyed diff -----------------------------------------------------------------------


def _dropped_duplicates(
    name: str,
    parsed: ParsedFile[Any],
    show: Callable[[Any], dict[str, Any]],
    kind_of: Callable[[str, Any], Kind],
) -> list[Change]:
    """A `-` line for each later line that repeats a key: DMS reads only the first, and the
    canonical rewrite keeps one line per key."""
    return [
        Change(
            name,
            kind_of(key, entry),
            key,
            Action.DELETE,
            show(entry),
            None,
            reason=f"duplicate line {line} (DMS uses only line {first}); the rewrite drops it",
        )
        for line, first, key, entry in parsed.duplicates
    ]


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
            changes.append(
                Change(
                    name,
                    wanted.kind,
                    key,
                    Action.UPDATE,
                    before,
                    after,
                    details=explain(key, before, after),
                )
            )
        final.append(wanted.entry)
    for key, current in entries.items():
        if key in want:
            continue
        kind = kind_of(key, current)
        if key in owned or prune:
            reason = (
                "removed from mailserver.yaml"
                if key in owned
                else "not in mailserver.yaml and prune is on"
            )
            changes.append(
                Change(name, kind, key, Action.DELETE, show(current), None, reason=reason)
            )
        else:
            unmanaged.append(Unmanaged(name, kind, key))
            final.append(current)
    return _FileDiff(changes, unmanaged, final, set(want))


def _explain(key: str, before: dict[str, Any], after: dict[str, Any]) -> tuple[str, ...]:
    """Readable lines for what changed inside one entry (deepdiff, order-insensitive lists)."""
    from deepdiff import DeepDiff  # imported here: it pulls in numpy, ~0.15 s on every start

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
    return Change(
        change.file,
        change.kind,
        change.key,
        change.action,
        change.before,
        change.after,
        reason,
        change.details,
    )


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
            keep = current is not None and decided.changed_from is None
            password = (
                current.password_hash
                if current is not None and keep
                else PendingHash(account.address, True)
            )
        elif decided.status is Status.NEW:
            password = PendingHash(account.address)
        else:
            password = decided.hash
            if current is not None and same_hash(current.password_hash, password):
                password = current.password_hash  # same hash, other spelling: keep the bytes
        extra = current.extra if current is not None else None  # extra fields are carried over
        out[account.address] = _Want(
            Kind.ACCOUNT, accounts.AccountLine(account.address, password, extra)
        )
    return out


def _same_account(have: accounts.AccountLine, want: accounts.AccountLine) -> bool:
    if isinstance(want.password_hash, PendingHash):
        return False
    return have.address == want.address and same_hash(have.password_hash, want.password_hash)


def _show_account(entry: accounts.AccountLine) -> dict[str, Any]:
    out: dict[str, Any] = {
        "password": str(entry.password_hash)
        if isinstance(entry.password_hash, PendingHash)
        else SENSITIVE
    }
    if not isinstance(entry.password_hash, PendingHash) and not entry.password_hash:
        out["password"] = "(empty)"
    return out


def _explain_account(
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


# --- postfix-virtual.cf ---------------------------------------------------------------------------


def _want_virtual(
    desired: DesiredState,
    *,
    kept_accounts: Iterable[str] = (),
    hand_written: Collection[str] = (),
) -> dict[str, _Want]:
    """The managed postfix-virtual.cf entries. `kept_accounts` are accounts on the volume that
    stay although the file does not declare them (unmanaged); `hand_written` are the virtual
    keys on the volume this tool did not write."""
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
    sole_targets = _sole_catch_all_targets(desired)
    for account in desired.accounts:
        # Postfix checks `user@domain` before `@domain`: without this line the catch-all
        # would take the account's mail (DMS docs, provisioner/file.md). The catch-all's own
        # single target needs none (its mail goes to it either way), and DMS warns about it.
        if (
            domain_of(account.address) in catch_domains
            and account.address.lower() not in sole_targets
        ):
            out[account.address] = _Want(
                Kind.SELF_ALIAS, virtual.VirtualLine(account.address, (account.address,))
            )
    for address in kept_accounts:
        # A kept account this tool did not write (`setup email add`) is a real mailbox too: the
        # catch-all must not take its mail either, unless a hand-written alias already routes it.
        if (
            domain_of(address) in catch_domains
            and address not in out
            and address not in hand_written
        ):
            out[address] = _Want(Kind.SELF_ALIAS, virtual.VirtualLine(address, (address,)))
    return out


def _sole_catch_all_targets(desired: DesiredState) -> set[str]:
    """Accounts that are the one target of their own domain's catch-all."""
    return {
        catch.targets[0].lower()
        for catch in desired.catch_all
        if len(catch.targets) == 1 and domain_of(catch.targets[0]) == catch.domain
    }


def self_alias_warning(desired: DesiredState, changes: Iterable[Change]) -> str | None:
    """DMS v15.1.0 (ENABLE_QUOTAS=1, its default) logs a WARN at every start and change for each
    self-alias (`_create_dovecot_alias_dummy_accounts` finds the account's own userdb line). The
    line is still needed: without it the catch-all takes the account's mail. Said once, by the
    plan that writes a self-alias or its domain's catch-all (`changes`: postfix-virtual.cf's),
    not by every later plan of the same setup."""
    written = [c for c in changes if c.action is not Action.DELETE]
    new_self = {c.key.lower() for c in written if c.kind is Kind.SELF_ALIAS}
    new_catch = {c.key[1:].lower() for c in written if c.kind is Kind.CATCH_ALL}
    catch_domains = {catch.domain for catch in desired.catch_all}
    sole_targets = _sole_catch_all_targets(desired)
    names = sorted(
        a.address
        for a in desired.accounts
        if domain_of(a.address) in catch_domains
        and a.address.lower() not in sole_targets
        and (a.address.lower() in new_self or domain_of(a.address) in new_catch)
    )
    if not names:
        return None
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"self-alias(es) {shown} keep their own mail in a catch-all domain; DMS logs "
        "`WARN Alias '...' will not be added to '/etc/dovecot/userdb' twice` for each at "
        "every start and change (harmless: routing is right; see docs/real-dms.md)"
    )


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


def _show_quota(entry: quotas.QuotaLine) -> dict[str, Any]:
    """The size; quoted with escapes when blanks or a CR make DMS misread it, and what DMS reads
    instead when an earlier line shadows it (see quotas.py)."""
    size = entry.size
    shown = size if size == size.strip() else repr(size)
    if entry.shadowed:
        shown += f" (DMS reads {entry.shadowed})"
    return {"quota": shown}


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
    want = (
        {k: desired.quarantine.mailbox for k in desired.quarantine.kinds}
        if desired.quarantine
        else {}
    )
    changes: list[Change] = []
    for kind in amavis.KINDS:
        key = f"{kind}_quarantine_to"
        before = {"mailbox": have[kind]} if kind in have else None
        after = {"mailbox": want[kind]} if kind in want else None
        if before == after:
            continue
        if before is None:
            changes.append(
                Change(amavis.FILENAME, Kind.QUARANTINE, key, Action.CREATE, None, after)
            )
        elif after is None:
            changes.append(
                Change(
                    amavis.FILENAME,
                    Kind.QUARANTINE,
                    key,
                    Action.DELETE,
                    before,
                    None,
                    reason="quarantine kind removed from mailserver.yaml",
                )
            )
        else:
            changes.append(
                Change(
                    amavis.FILENAME,
                    Kind.QUARANTINE,
                    key,
                    Action.UPDATE,
                    before,
                    after,
                    details=_explain(key, before, after),
                )
            )
    if current is not None and current.broken_markers:
        return [], FilePlan(amavis.FILENAME, snap.path, False, snap.exists, snap.sha256)
    # Lines inside our block that we do not understand are ours to repair; that is a change the
    # plan shows (else it would say "No changes" and still rewrite the file).
    if current is not None and current.unreadable_block:
        changes.append(
            Change(
                amavis.FILENAME,
                Kind.QUARANTINE,
                BLOCK_KEY,
                Action.UPDATE,
                {"lines": "quarantine settings and other lines"},
                {"lines": "quarantine settings only"},
                details=(BLOCK_REPAIR,),
            )
        )
    write = bool(changes)
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
                changes.append(
                    Change(
                        CRON,
                        Kind.SA_LEARN,
                        key,
                        Action.DELETE,
                        {"line": key},
                        None,
                        reason="not in mailserver.yaml and prune is on",
                    )
                )
            else:
                unmanaged.append(Unmanaged(CRON, Kind.SA_LEARN, key))
        write = bool(changes)
        emptied: tuple[tuple[cron.CronLine, ...], tuple[str, ...]] | None = (
            ((), comments) if write else None
        )
        return (
            changes,
            unmanaged,
            FilePlan(CRON, snap.path, write, snap.exists, snap.sha256, emptied, in_place=True),
            False,
        )
    # Our own lines in the old form (the DMS FAQ's --dbpath) are the same jobs: shown as updates.
    upgraded = _old_form_cron_lines(have, want)
    for key in want:
        if key in upgraded:
            changes.append(
                Change(
                    CRON,
                    Kind.SA_LEARN,
                    key,
                    Action.UPDATE,
                    {"line": upgraded[key]},
                    {"line": key},
                    reason=f"learns into {cron.DBPATH}, the Bayes database Amavis reads, "
                    "skips a folder that does not exist yet and leaves the files to amavis",
                )
            )
        elif key not in have:
            changes.append(Change(CRON, Kind.SA_LEARN, key, Action.CREATE, None, {"line": key}))
    reason = (
        "the sa-learn cron file is owned whole by `sa_learn` in mailserver.yaml"
        if want
        else "sa_learn removed from mailserver.yaml"
    )
    replaced = set(upgraded.values())
    for key in have:
        if key not in want and key not in replaced:
            changes.append(
                Change(CRON, Kind.SA_LEARN, key, Action.DELETE, {"line": key}, None, reason=reason)
            )
    write = bool(changes)
    content = (tuple(want.values()), comments) if write else None
    return (
        changes,
        unmanaged,
        FilePlan(CRON, snap.path, write, snap.exists, snap.sha256, content, in_place=True),
        bool(want),
    )


def quarantine_note(mailbox: str) -> str:
    """What `quarantine:` gives with DMS's defaults, seen on DMS v15.1.0 (docs/real-dms.md)."""
    return (
        "with DMS's defaults (SPAMASSASSIN_SPAM_TO_INBOX=1, MOVE_SPAM_TO_JUNK=1) Amavis delivers "
        f"spam tagged: the recipient still gets it in .Junk, and {mailbox} gets a copy, which "
        "DMS's sieve files into its .Junk too (docs/real-dms.md)"
    )


def _old_form_cron_lines(have: Mapping[str, Any], want: Mapping[str, Any]) -> dict[str, str]:
    """{wanted line: the old-form line on the volume that does the same job}."""
    wanted_jobs = {}
    for key in want:
        if key not in have:
            line = cron.read_job_line(key)
            if line is not None:
                wanted_jobs[line.job] = key
    out: dict[str, str] = {}
    for key in have:
        line = cron.read_job_line(key)
        if line is not None and line.old_form and line.job in wanted_jobs:
            out.setdefault(wanted_jobs[line.job], key)
    return out


# --- warnings about what stays ----------------------------------------------------------------


def _shadow_warnings(
    desired: DesiredState, observed: Observed, virtual_diff: _FileDiff, account_diff: _FileDiff
) -> list[str]:
    """Unmanaged entries whose mail goes astray after this plan: say so, do not touch them."""
    out: list[str] = []
    account_set = {a.address for a in desired.accounts}
    deleted = {c.key for c in account_diff.changes if c.action is Action.DELETE}
    kept_keys = {entry.key.lower() for entry in virtual_diff.final}
    for item in virtual_diff.unmanaged:
        if item.kind is Kind.CATCH_ALL:
            # the DMS catch-all trap: without a self-alias, Postfix hands the catch-all the mail
            # of every real account in the domain
            swallowed = sorted(
                a for a in account_set if "@" + domain_of(a) == item.key and a not in kept_keys
            )
            if swallowed:
                out.append(
                    f"unmanaged catch-all '{item.key}' in postfix-virtual.cf takes the mail "
                    f"of account(s) {', '.join(swallowed)} (no self-alias): declare "
                    f"`catch_all: {{{item.key[1:]}: ...}}` in mailserver.yaml to fix it"
                )
        if item.key in account_set:
            out.append(
                f"unmanaged alias '{item.key}' in postfix-virtual.cf shadows the account "
                f"'{item.key}': Postfix delivers by the alias (remove it, or use --prune)"
            )
        entry = observed.virtual.entries.get(item.key)
        if entry is not None:
            gone = sorted({t.lower() for t in entry.targets} & deleted)
            if gone:
                out.append(
                    f"unmanaged alias '{item.key}' still points to deleted account(s) "
                    f"{', '.join(gone)}"
                )
    # The other way round: an alias this plan declares takes the mail of an account it keeps.
    # (A declared catch-all does not: kept accounts in its domain get a self-alias.)
    if not account_diff.unmanaged:
        return out  # and then the declared entries need not be built a second time
    declared = {key: want.kind for key, want in _want_virtual(desired).items()}
    for item in account_diff.unmanaged:
        if declared.get(item.key) in (Kind.ALIAS, Kind.DEVNULL):
            out.append(
                f"the {declared[item.key].value} '{item.key}' in mailserver.yaml takes "
                f"the mail of the unmanaged account '{item.key}' (Postfix delivers by the "
                "alias)"
            )
    return out


# How each entry file shows an entry and names its kind (for lines only the parser saw).
_SHOW_AND_KIND: dict[str, tuple[Callable[[Any], dict[str, Any]], Callable[[str, Any], Kind]]] = {
    accounts.FILENAME: (_show_account, lambda key, e: Kind.ACCOUNT),
    virtual.FILENAME: (_show_virtual, _virtual_kind),
    aliases.FILENAME: (lambda e: {"target": e.value}, lambda key, e: Kind.LOCAL_ALIAS),
    quotas.FILENAME: (_show_quota, lambda key, e: Kind.QUOTA),
}

"""desired + observed -> Plan. Stage 3 of the pipeline.

This is a purely computational function with no side effects: it reads no file and writes none,
so it runs in a REPL on literals. Each kind of DMS object (reconciler/kinds/, in registry order)
plans its own files with the shared keyed diff: create = desired - observed, delete = observed -
desired (only entries we wrote, or all with prune), update = shared keys whose values differ.
Entries on the volume that we did not write and the file does not declare are unmanaged and
kept. Values are compared as entries, not bytes, so a volume that already matches (CRLF, another
order, comments) is a no-change plan. Here the kinds' results become one Plan: the ownership
after apply, the deletion guards and the secrets apply must hash.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.formats import accounts
from reconciler.gcpause import paused
from reconciler.kinds import KINDS
from reconciler.kinds.base import KindPlan, PlanContext, deletion_guard
from reconciler.model import RELAY_KEY, DesiredState
from reconciler.observed import Observed
from reconciler.passwords.sources import DesiredPassword, Secret, Status
from reconciler.plan import Action, Plan
from reconciler.state import Ownership


@paused
def make_plan(
    desired: DesiredState,
    observed: Observed,
    passwords: Mapping[str, DesiredPassword],
    *,
    prune: bool = False,
) -> Plan:
    """What apply must do so the volume matches `desired`. Pure: no I/O, no clock, no randomness."""
    ctx = PlanContext(desired, observed, passwords, prune or desired.policy.prune)
    for kind in KINDS:
        ctx.results[kind.NAME] = kind.plan(ctx)
    results = list(ctx.results.values())
    out = KindPlan(warnings=list(observed.warnings))  # a damaged state file comes first
    for result in results:
        out.changes += result.changes
        out.unmanaged += result.unmanaged
        out.files += result.files
        out.owned.update(result.owned)
        out.managed.update(result.managed)
        out.dropped.update(result.dropped)
        out.warnings += result.warnings
        out.notes += result.notes
        out.owns_cron |= result.owns_cron

    guards = {  # the same rule for every file the state file can claim entries of
        name: deletion_guard(
            name,
            sum(c.action is Action.DELETE and c.file == name for c in out.changes)
            - out.dropped.get(name, 0),  # a dropped duplicate line or self-route: not counted
            managed,
            desired,
            "accounts" if name == accounts.FILENAME else f"entries of {name}",
        )
        for name, managed in out.managed.items()
    }
    account_guard = guards.pop(accounts.FILENAME)
    secrets: dict[str, Secret] = {
        address: p.secret
        for address, p in passwords.items()
        if p.status is Status.NEW and p.secret is not None and not address.startswith(RELAY_KEY)
    }
    return Plan(
        changes=tuple(out.changes),
        unmanaged=tuple(out.unmanaged),
        files=tuple(out.files),
        ownership=Ownership(out.owned, out.owns_cron, observed.ownership.plan_key),
        fingerprint=observed.fingerprint(),
        volume=observed.volume,
        warnings=tuple(out.warnings),
        notes=tuple(out.notes),
        unresolved=tuple(sorted(a for a, p in passwords.items() if p.status is Status.UNRESOLVED)),
        account_deletions=account_guard.deletions,
        deletion_limit=account_guard.limit,
        deletion_limit_source=account_guard.limit_source,
        secrets=secrets,
        managed_accounts=out.managed[accounts.FILENAME],
        guards=tuple(guards.values()),
    )

"""One reconcile cycle, shared by the CLI and the sidecar.

load -> observe -> resolve passwords -> plan -> (apply -> prove convergence -> record which
password files verified, see `verified`). A concurrent writer that changes a file between our read
and our write makes us re-plan from fresh state instead of overwriting its change.

Convergence is proven by reading the volume back: when every file holds the bytes we planned (the
rendered ones where we wrote, the observed ones elsewhere), planning again could only find nothing,
since a plan of its own rendering is empty (the planner's fixpoint, which the golden cases and the
fuzzer check). Only when the bytes differ (another writer, lines carried over, a new file) or new
secrets were hashed is the whole plan made again. The test suite wraps `proves_convergence` so
that every apply there also plans again and fails if the two proofs disagree.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reconciler.configvolume import Volume
from reconciler.errors import ReconcilerError, Refused, VolumeError
from reconciler.gcpause import paused
from reconciler.kinds import rspamd_controller
from reconciler.load.desired import Loaded, load_desired
from reconciler.memory import Memory
from reconciler.passwords import sources as passwords
from reconciler.passwords import verified
from reconciler.passwords.sources import VerifiedCache
from reconciler.plan import Action, Plan
from reconciler.planner import target as dms_target
from reconciler.planner.make import make_plan
from reconciler.planner.target import DmsFacts
from reconciler.volume import suspend
from reconciler.volume.atomic import VolumeChanged
from reconciler.volume.contents import render_files
from reconciler.volume.executor import (
    ApplyResult,
    apply_plan,
    check_safety,
    require_cron_folder,
    write_record,
)
from reconciler.volume.observe import (
    CRON,
    FileSnapshot,
    Observed,
    observe,
    read_snapshot,
    read_snapshots,
)

if TYPE_CHECKING:
    from reconciler.state import Ownership

MAX_ATTEMPTS = 5


@dataclass
class Target:
    """Where the desired state comes from and which volume it is applied to."""

    desired_path: str
    volume: Volume
    prune: bool = False
    offline: bool = False
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    # Reads the DMS container's release and settings (None: not looked up; planner/target.py)
    dms_facts: Callable[[], DmsFacts] | None = None

    @property
    def base_dir(self) -> str:
        """password_file paths are relative to the folder of mailserver.yaml."""
        return os.path.dirname(os.path.abspath(self.desired_path))


@dataclass(frozen=True)
class Planned:
    loaded: Loaded
    observed: Observed
    plan: Plan
    passwords: Mapping[str, passwords.DesiredPassword]
    record: frozenset[str] = frozenset()  # the `verified` facts found on the volume


@dataclass(frozen=True)
class Applied:
    planned: Planned  # the plan that was applied
    result: ApplyResult
    attempts: int
    converged: bool


@paused
def plan_once(
    target: Target,
    *,
    loaded: Loaded | None = None,
    memory: Memory | None = None,
    forget_ownership: bool = False,
) -> Planned:
    """Read everything and compute the plan; writes nothing. `memory`: what earlier reconciles
    of this process parsed and verified (None: nothing, and nothing is kept). `forget_ownership`
    plans as if the state file owned nothing (its plan key kept): see `take_ownership`."""
    loaded = loaded or load_desired(target.desired_path)
    observed = observe(target.volume, parses=memory.parses if memory else None)
    if forget_ownership:
        from reconciler.state import Ownership

        observed = dataclasses.replace(
            observed, ownership=Ownership(plan_key=observed.ownership.plan_key)
        )
    reader = passwords.SecretReader(target.base_dir, target.environ)
    record = _read_record(target.volume)
    decided = passwords.resolve(
        loaded.state,
        observed.stored_hashes(),
        reader=reader,
        offline=target.offline,
        cache=memory.verified if memory else None,
        record=record,
    )
    decided.update(
        passwords.resolve_plaintext(
            loaded.state, observed.stored_plaintext(), reader=reader, offline=target.offline
        )
    )
    decided.update(
        passwords.resolve_rspamd_controller(
            loaded.state,
            rspamd_controller.stored_hash(observed),
            reader=reader,
            offline=target.offline,
        )
    )
    plan = make_plan(loaded.state, observed, decided, prune=target.prune)
    if target.dms_facts is not None:
        plan = dms_target.annotate(plan, target.dms_facts(), loaded.state)
    if any(f.name == CRON and f.write for f in plan.files):
        require_cron_folder(target.volume)  # apply would refuse: so does the plan
    return Planned(loaded, observed, plan, decided, record)


def _read_record(volume: Volume) -> frozenset[str]:
    try:
        return verified.parse(read_snapshot(volume.path(verified.FILENAME)).data)
    except VolumeError:  # a symlink or FIFO in its place: never followed, only costs time
        return frozenset()


def _record_verified(target: Target, converged: Planned, result: ApplyResult) -> None:
    """Remember which password files verified, for the next run; nothing else depends on it.

    Only alongside another write: an apply that changes nothing writes nothing, not even this.
    """
    if not (result.written or result.state_written):
        return
    hashed = {  # relay passwords are compared as plaintext: nothing to remember for them
        key: choice
        for key, choice in converged.passwords.items()
        if not key.startswith((passwords.RELAY_KEY, passwords.RSPAMD_CONTROLLER_KEY))
    }
    facts = verified.facts_for(hashed, passwords.SecretReader(target.base_dir, target.environ))
    if facts != converged.record:
        write_record(target.volume, verified.render(facts))


def apply_once(
    target: Target,
    *,
    allow_deletions: int | None = None,
    memory: Memory | None = None,
    loaded: Loaded | None = None,
    lock_timeout: float = 120.0,
    on_wait: Callable[[str], None] | None = None,
    check: Callable[[Planned], None] | None = None,
    forget_ownership: bool = False,
    revision: str | None = None,
    while_locked: Callable[[tuple[str, ...]], None] | None = None,
    before_write: Callable[[tuple[str, ...]], None] | None = None,
) -> Applied:
    """Plan and apply until the volume matches, re-planning when another writer interferes.

    `memory`: see `plan_once`; None: a fresh one, shared by this apply's plans only.
    `check` runs on each plan before anything is written (a saved plan's staleness test).
    `forget_ownership`: see `plan_once`. `revision`: the git revision of the desired file,
    recorded in the state file when this apply writes it. A suspended volume is refused.
    `while_locked(written)`: run after each write, still under DMS's lock (`apply_plan`);
    `before_write(names)`: under the lock, just before each write (`apply_plan`).
    """
    suspend.refuse_if_suspended(target.volume.folder)
    memory = memory if memory is not None else Memory()
    loaded = loaded or load_desired(target.desired_path)
    first: Planned | None = None
    result = ApplyResult((), {}, {})
    for attempt in range(1, MAX_ATTEMPTS + 1):
        planned = plan_once(target, loaded=loaded, memory=memory, forget_ownership=forget_ownership)
        if check is not None:
            check(planned)
        planned = _with_revision(planned, revision)
        first = first or planned
        if attempt > 1 and not planned.plan.has_changes and _state_current(planned):
            _record_verified(target, planned, result)
            return Applied(first, result, attempt, converged=True)
        check_safety(planned.plan, allow_deletions=allow_deletions)
        contents = render_files(planned.plan)
        try:
            result = _merge(
                result,
                apply_plan(
                    planned.plan,
                    planned.observed,
                    contents,
                    lock_timeout=lock_timeout,
                    on_wait=on_wait,
                    while_locked=while_locked,
                    before_write=before_write,
                ),
            )
        except VolumeChanged as exc:  # files already put in place stay whole; re-plan the rest
            done = {n: planned.observed.snapshots[n].path for n in exc.written}
            result = _merge(result, ApplyResult(exc.written, done, {}, exc.carried))
            continue
        if not planned.plan.has_changes:
            # Nothing but (maybe) the state file was written, and ownership alone never makes a
            # change: planning again would only repeat the plan we just made (half of the time
            # of a no-change apply on a big host).
            _record_verified(target, planned, result)
            return Applied(first, result, attempt, converged=True)
        if proves_convergence(target, planned, contents, loaded, memory):
            _record_verified(target, planned, result)
            return Applied(first, result, attempt, converged=True)
        _remember_new_hashes(planned, contents, memory.verified)
        again = plan_once(target, loaded=loaded, memory=memory)
        if not again.plan.has_changes:
            _record_verified(target, again, result)
            return Applied(first, result, attempt, converged=True)
    raise ReconcilerError(
        f"the config volume kept changing while applying ({MAX_ATTEMPTS} attempts); another "
        "writer is editing it. Nothing half-written was left; run apply again"
    )


def _with_revision(planned: Planned, revision: str | None) -> Planned:
    """The plan with the revision its state file should record: `revision` when the apply
    writes (a file or the ownership changes), else the recorded one, so a state file is never
    rewritten for the revision alone."""
    plan, seen = planned.plan, planned.observed.ownership
    own = plan.ownership
    writes = (
        any(f.write for f in plan.files)
        or {k: v for k, v in own.entries.items() if v}
        != {k: v for k, v in seen.entries.items() if v}
        or own.owns_cron != seen.owns_cron
    )
    wanted = (revision or "") if writes else seen.revision
    if own.revision == wanted:
        return planned
    ownership = dataclasses.replace(own, revision=wanted)
    return dataclasses.replace(planned, plan=dataclasses.replace(plan, ownership=ownership))


def take_ownership(loaded: Loaded, volume: Volume) -> Applied:
    """Record as owned every entry of `loaded` (an export of this volume), writing nothing but the
    state file: what the first apply of the unchanged file would do. Then removing an exported
    entry from the file before that first apply deletes it, as it would after. Refused, with
    nothing written, when the file's plan is not empty (the volume changed since the export).

    The record becomes exactly the exported entries: planned as if nothing were owned, so an entry
    an earlier apply wrote that the export could not express (relay credentials, whose password
    cannot go into the file) becomes unmanaged, kept, instead of being planned for deletion; that
    is what export promised (left unmanaged, with a warning), and export -> plan stays empty."""
    target = Target(loaded.filename, volume)

    def no_changes(planned: Planned) -> None:
        changes = planned.plan.changes
        if changes and all(c.file == CRON and c.action is Action.UPDATE for c in changes):
            raise Refused(
                "the sa-learn cron lines are in the DMS FAQ's old form, which the first apply "
                "rewrites; ownership is recorded then"
            )
        if planned.plan.has_changes:
            first = ", ".join(f"{c.file} {c.key}" for c in changes[:3])
            more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
            raise Refused(
                f"the exported file still plans {len(changes)} change(s) ({first}{more}): the "
                "config volume changed while exporting, or apply would add what the volume "
                "lacks; run plan to see them"
            )

    return apply_once(
        target, loaded=loaded, check=no_changes, lock_timeout=30.0, forget_ownership=True
    )


def proves_convergence(
    target: Target,
    planned: Planned,
    contents: Mapping[str, bytes],
    loaded: Loaded,
    memory: Memory,
) -> bool:
    """True when the volume is proven to match `loaded` after writing `contents`: it holds the
    planned bytes (`_holds_planned_bytes`). False means: make the whole plan again. `target`,
    `loaded` and `memory` are what such a plan would take (the suite's stricter proof uses them)."""
    return _holds_planned_bytes(planned, contents)


def _holds_planned_bytes(planned: Planned, contents: Mapping[str, bytes]) -> bool:
    """True when the volume now is exactly what `planned` meant it to be: the written files hold
    the bytes we rendered, every other file the bytes we planned from, with the same mode and
    owner, and the state file records the planned ownership. Then planning again is planning
    from our own rendering, which finds nothing; see the module docstring.

    False (make the whole plan again) when new secrets were hashed (their hashes must verify),
    a secret waits for apply, or a file appeared, vanished or is new.
    """
    from reconciler import state as state_file

    plan = planned.plan
    if plan.secrets or plan.unresolved:
        return False
    before = planned.observed.snapshots
    now = read_snapshots(planned.observed.volume)
    if now.keys() != before.keys():
        return False
    for name, snap in now.items():
        if name == state_file.FILENAME:
            continue
        old = before[name]
        if old.data is None and name in contents:
            return False  # a new file: its mode and owner are the writer's, not the planner's
        if snap.data != contents.get(name, old.data) or (snap.mode, snap.uid, snap.gid) != (
            old.mode,
            old.uid,
            old.gid,
        ):
            return False
    return _records_ownership(now[state_file.FILENAME], plan.ownership)


def _state_current(planned: Planned) -> bool:
    from reconciler import state as state_file

    return _records_ownership(
        planned.observed.snapshots[state_file.FILENAME], planned.plan.ownership
    )


def _records_ownership(snap: FileSnapshot, ownership: Ownership) -> bool:
    """The state file on the volume records `ownership` (files owning nothing are not written)."""
    from reconciler import state as state_file

    if not snap.exists:
        return False
    recorded = state_file.parse(snap.text or "")[0].entries
    return recorded == {name: keys for name, keys in ownership.entries.items() if keys}


def _merge(a: ApplyResult, b: ApplyResult) -> ApplyResult:
    return ApplyResult(
        tuple(dict.fromkeys(a.written + b.written)),
        {**a.paths, **b.paths},
        {**a.sha512, **b.sha512},
        a.carried_lines + b.carried_lines,
        a.state_written or b.state_written,
    )


def _remember_new_hashes(
    planned: Planned, contents: Mapping[str, bytes], cache: VerifiedCache
) -> None:
    """The hashes we just made verify their secrets: tell the cache, so the convergence check
    (and the sidecar's next resync) does not spend seconds verifying them again."""
    from reconciler.formats import accounts

    if not planned.plan.secrets or accounts.FILENAME not in contents:
        return
    parsed = accounts.parse(contents[accounts.FILENAME].decode("utf-8", "surrogateescape"))
    for address, secret in planned.plan.secrets.items():
        entry = parsed.entries.get(address)
        if entry is not None:
            cache.put(address, secret, entry.password_hash, True)

"""What every kind plans and exports with: the keyed diff, one kind's result, the context.

Pure, like the planner: desired + observed in, changes and file plans out; no I/O. A kind module
wants entries (`Want`), diffs them against one parsed DMS file by key (`keyed_diff`: create =
wanted - on the volume, delete = on the volume - wanted, for entries we wrote or all with prune,
update = shared keys whose entries are not `same`), and hands each file's diff to its
`KindPlan`. Kinds never import each other: what a later kind needs of an earlier one (the
virtual routing needs the accounts that stay) it reads from the `PlanContext` by file name.
Export runs the other way, volume -> mailserver.yaml fields, in an `ExportContext`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from reconciler.addresses import domain_of, local_of, split_hash
from reconciler.formats import cron
from reconciler.formats._lines import ParsedFile
from reconciler.model import DesiredState
from reconciler.observed import Observed
from reconciler.passwords.sources import DesiredPassword, Status, same_hash
from reconciler.plan import (
    SENSITIVE,
    Action,
    Change,
    DeletionGuard,
    FilePlan,
    Kind,
    PendingHash,
    Unmanaged,
)

Show = Callable[[Any], dict[str, Any]]
KindOf = Callable[[str, Any], Kind]
Explain = Callable[[str, dict[str, Any], dict[str, Any]], tuple[str, ...]]


class Want(NamedTuple):
    """A desired entry: its kind and the codec entry (a tuple: one is made per entry)."""

    kind: Kind
    entry: Any


@dataclass
class FileDiff:
    """One file's keyed diff: its changes, the entries kept unmanaged, the entries the file
    holds after apply (`final`, in write order) and the keys we own then."""

    changes: list[Change]
    unmanaged: list[Unmanaged]
    final: list[Any]
    owned: set[str]
    show: Show
    kind_of: KindOf

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def keyed_diff(
    name: str,
    want: Mapping[str, Want],
    have: ParsedFile[Any],
    owned: frozenset[str],
    prune: bool,
    *,
    same: Callable[[Any, Any], bool],
    show: Show,
    kind_of: KindOf,
    explain: Explain,
) -> FileDiff:
    """Diff the wanted entries of file `name` against what the volume holds, by key."""
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
    return FileDiff(changes, unmanaged, final, set(want), show, kind_of)


def explain_fields(key: str, before: dict[str, Any], after: dict[str, Any]) -> tuple[str, ...]:
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


def with_reason(change: Change, reason: str) -> Change:
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


def dropped_duplicates(
    name: str, parsed: ParsedFile[Any], show: Show, kind_of: KindOf
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


def deletion_guard(
    name: str, deletions: int, managed: int, desired: DesiredState, what: str
) -> DeletionGuard:
    """The same rule for every file: at most policy.max_deletions deletions, by default at most
    half of the entries the state file says we manage there (so a state file claiming entries
    made by hand cannot have them all deleted)."""
    if desired.policy.max_deletions is not None:
        return DeletionGuard(name, deletions, desired.policy.max_deletions, "policy.max_deletions")
    return DeletionGuard(name, deletions, managed // 2, f"half of the {what} this tool manages")


# --- passwords: one decision for accounts, master users and relay credentials ---------------------


def password_value(
    decided: DesiredPassword, key: str, current: str | None, *, plaintext: bool = False
) -> Any:
    """What goes into the file for the password keyed `key` (`current`: the value there now).

    Unresolved (--offline, the secret unreadable): the value on the volume stays unless the
    source changed, else apply decides. A hash (accounts, masters): new or changed secrets get a
    `PendingHash` made at apply; a given or kept hash that equals the stored one in another
    spelling keeps the stored bytes. Plaintext (relay credentials): the secret itself, or the
    value on the volume when a CI placeholder matched it."""
    if decided.status is Status.UNRESOLVED:
        keep = current is not None and decided.changed_from is None
        return current if keep else PendingHash(key, True)
    if plaintext:
        if decided.status is Status.KEPT and current is not None and decided.secret is None:
            return current  # a CI placeholder that matches its source
        assert decided.secret is not None
        return decided.secret.reveal()
    if decided.status is Status.NEW:
        return PendingHash(key)
    if current is not None and same_hash(current, decided.hash or ""):
        return current  # same hash, other spelling: keep the bytes
    return decided.hash


def hash_for_yaml(stored: str) -> str:
    """A stored hash as mailserver.yaml spells it (export): a bare hash means DMS's default
    scheme, SHA512-CRYPT (libc crypt), so the scheme is spelled out."""
    scheme, body = split_hash(stored)
    if scheme is not None:
        return stored
    return ("{SHA512-CRYPT}" if body.startswith("$6$") else "{CRYPT}") + body


def show_password(value: Any) -> dict[str, Any]:
    """A password field as the plan shows it: never the value."""
    if isinstance(value, PendingHash):
        return {"password": str(value)}
    return {"password": SENSITIVE if value else "(empty)"}


def same_normalised(have: Any, want: Any) -> bool:
    """Entries of a codec that normalises its lines (access, aliases, OpenDKIM tables)."""
    return bool(have.normalised() == want.normalised())


def same_password(have: Any, want: Any) -> bool:
    """A stored hash equals the wanted one (a pending hash never does)."""
    return not isinstance(want, PendingHash) and same_hash(have, want)


# --- one kind's result, and the context kinds plan in ------------------------------------------


@dataclass
class KindPlan:
    """What one kind adds to the plan (see `add_file` for each file it manages)."""

    changes: list[Change] = field(default_factory=list)
    unmanaged: list[Unmanaged] = field(default_factory=list)
    files: list[FilePlan] = field(default_factory=list)
    owned: dict[str, frozenset[str]] = field(default_factory=dict)  # after apply, by file
    managed: dict[str, int] = field(default_factory=dict)  # guarded files: entries we own now
    # deletions the file's guard does not count: duplicate lines a rewrite drops, self-routes
    dropped: dict[str, int] = field(default_factory=dict)
    diffs: dict[str, FileDiff] = field(default_factory=dict)  # for later kinds, by file
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    owns_cron: bool = False  # the sa-learn cron file is owned whole after apply
    # lines a kind wants in the cron file, with their kind: the kind that plans that file
    # (sa_learn, after them in the registry) writes them with its own
    cron: list[tuple[Kind, Any]] = field(default_factory=list)

    def add_file(
        self,
        ctx: PlanContext,
        name: str,
        diff: FileDiff,
        parsed: ParsedFile[Any],
        *,
        listed: bool = True,
        guarded: bool = False,
        duplicates: bool = False,
    ) -> FilePlan:
        """Take one file's diff into the plan; return its file plan.

        `listed`: the plan lists the file even when it does not exist and stays unwritten (a
        kind lists the files it declares). `guarded`: apply refuses mass deletions in it (the
        deletion guard). `duplicates`: lines repeating a key are shown as deleted when the file
        is rewritten. Lines the codec could not read become warnings."""
        snap = ctx.observed.snapshots[name]
        if duplicates and diff.changed and parsed.duplicates:  # the rewrite drops them: say so
            dropped = dropped_duplicates(name, parsed, diff.show, diff.kind_of)
            diff.changes += dropped
            self.dropped[name] = len(dropped)
        self.changes.extend(diff.changes)
        self.unmanaged.extend(diff.unmanaged)
        self.owned[name] = frozenset(diff.owned)
        self.diffs[name] = diff
        if guarded:
            self.managed[name] = len(ctx.owned(name) & parsed.entries.keys())
        plan = FilePlan(
            name=name,
            write=diff.changed,
            existed=snap.exists,
            sha256_before=snap.sha256,
            content=(tuple(diff.final), parsed.comments, parsed.invalid) if diff.changed else None,
        )
        if snap.exists or listed or plan.write:
            self.files.append(plan)
        for problem in parsed.problems:
            where = f" line {problem.line}" if problem.line else ""
            self.warnings.append(f"{name}{where}: {problem.message}")
        return plan


@dataclass
class PlanContext:
    """What a kind plans from: the desired state, the volume as observed, the decided passwords,
    prune, and the results of the kinds before it (in registry order)."""

    desired: DesiredState
    observed: Observed
    passwords: Mapping[str, DesiredPassword]
    prune: bool
    results: dict[str, KindPlan] = field(default_factory=dict)  # by kind name

    def owned(self, name: str) -> frozenset[str]:
        """The keys of file `name` the state file says we wrote."""
        return self.observed.ownership.owned(name)

    def diff(
        self,
        name: str,
        want: Mapping[str, Want],
        have: ParsedFile[Any],
        *,
        same: Callable[[Any, Any], bool],
        show: Show,
        kind_of: KindOf,
        explain: Explain = explain_fields,
    ) -> FileDiff:
        """`keyed_diff` of file `name` with this plan's ownership and prune."""
        return keyed_diff(
            name,
            want,
            have,
            self.owned(name),
            self.prune,
            same=same,
            show=show,
            kind_of=kind_of,
            explain=explain,
        )

    def diff_of(self, name: str) -> FileDiff:
        """The diff an earlier kind made of file `name` (KeyError: no earlier kind did)."""
        for result in self.results.values():
            if name in result.diffs:
                return result.diffs[name]
        raise KeyError(name)


# --- export: adopting what the volume holds ---------------------------------------------------


@dataclass
class ExportContext:
    """What a kind exports from: the volume as observed, the warnings so far (each entry left
    unmanaged says why), and the DesiredState fields the kinds before it adopted."""

    observed: Observed
    warnings: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)  # DesiredState field -> value

    def accounts(self) -> set[str]:
        return {a.address for a in self.fields.get("accounts", ())}

    def aliases(self) -> set[str]:
        return {a.address for a in self.fields.get("aliases", ())}

    def catch_domains(self) -> set[str]:
        return {c.domain for c in self.fields.get("catch_all", ())}

    def known(self) -> set[str]:
        """Every address adopted so far that receives mail: accounts, aliases, devnull."""
        return self.accounts() | self.aliases() | set(self.fields.get("devnull", ()))

    def domains(self) -> set[str]:
        """The domains the adopted accounts, aliases, catch-alls and devnull addresses are in."""
        return {domain_of(a) for a in self.known()} | self.catch_domains()


def learn_lines(
    jobs: Iterable[Any], line_of: Callable[[str, str, str, str, str], str]
) -> list[Any]:
    """The cron lines of learn jobs (sa_learn's and rspamd's), in job order, without duplicates:
    one per account, per domain, or one for every mailbox; `line_of(schedule, learn, domain,
    user, folder)` writes the command."""
    out: dict[str, cron.CronLine] = {}
    for job in jobs:
        if job.accounts is not None:
            scopes = [(domain_of(a), local_of(a)) for a in job.accounts]
        elif job.domains is not None:
            scopes = [(d, "*") for d in job.domains]
        else:
            scopes = [("*", "*")]
        for domain, user in scopes:
            text = line_of(job.schedule, job.learn.value, domain, user, job.folder)
            out.setdefault(text, cron.CronLine(text))
    return list(out.values())

"""What the Rspamd kinds share: planning one override file of `rspamd/override.d/` by its
top-level items, and the words the plan says about what DMS and Rspamd do with it.

Not a kind (it is in no registry): each rspamd_* kind calls `plan_override` for the files it
owns. An override file is diffed by its top-level items (`name = value;` or `name { ... }`):
declared items are written, items we wrote and no longer declare are deleted, the rest of the
file (the user's own items and comments) is kept. A file holding lines the codec cannot read
as top-level items is never rewritten: the plan warns and leaves it as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from reconciler.formats import rspamd_ucl
from reconciler.formats._lines import ParsedFile
from reconciler.kinds.base import KindPlan, PlanContext, Want
from reconciler.plan import Action, Change, FilePlan, Kind

# What DMS does with any change under rspamd/ (v15.0.1+ check-for-changes.sh: _rspamd_changes).
RELOAD = (
    "DMS's change detector copies rspamd/override.d/ to /etc/rspamd/override.d/ and reloads "
    "Rspamd within DMS_CONFIG_POLL (2 s)"
)


def show_item(item: rspamd_ucl.Item) -> dict[str, Any]:
    if item.value is not None:
        return {"value": item.value}
    return {"value": " ".join(line.strip() for line in item.body)}


def file_plan(ctx: PlanContext, name: str, content: str | None) -> FilePlan:
    """The plan of one file under rspamd/ (`content`: its new text, None: left as it is)."""
    snap = ctx.observed.snapshots.get(name)
    exists = snap is not None and snap.exists
    sha = snap.sha256 if snap is not None else None
    write = content is not None and (snap is None or snap.text != content)
    return FilePlan(name, write, exists, sha, content if write else None)


def plan_override(
    ctx: PlanContext,
    out: KindPlan,
    name: str,
    want: Mapping[str, rspamd_ucl.Item],
    kind: Kind,
    *,
    show: Callable[[rspamd_ucl.Item], dict[str, Any]] = show_item,
    kind_of: Callable[[str, Any], Kind] | None = None,
    same: Callable[[rspamd_ucl.Item, rspamd_ucl.Item], bool] | None = None,
) -> FilePlan | None:
    """Diff override file `name` (a logical name) against the wanted items; add the changes,
    the file plan and what we own after apply to `out`. Returns the file plan (None: the file
    neither exists nor is declared)."""
    parsed: ParsedFile[rspamd_ucl.Item] = ctx.observed.rspamd_files.get(name) or ParsedFile({})
    exists = name in ctx.observed.snapshots and ctx.observed.snapshots[name].exists
    if not want and not exists and not ctx.owned(name):
        return None
    diff = ctx.diff(
        name,
        {key: Want(kind, item) for key, item in want.items()},
        parsed,
        same=same or (lambda have, wanted: bool(have == wanted)),
        show=show,
        kind_of=kind_of or (lambda key, entry: kind),
    )
    if diff.changed and parsed.invalid:
        out.warnings.append(
            f"{name} has lines that are not top-level `name = value;` settings or blocks "
            f"(line {parsed.problems[0].line}: {parsed.problems[0].message}): it is left as it "
            "is and what mailserver.yaml declares for it is not written; move those lines into "
            "another file or make them simple settings"
        )
        plan = file_plan(ctx, name, None)
        out.files.append(plan)
        out.owned[name] = ctx.owned(name)
        return plan
    out.changes.extend(diff.changes)
    out.unmanaged.extend(diff.unmanaged)
    out.owned[name] = frozenset(diff.owned)
    # the deletion guard, as for every file the state file can claim entries of
    out.managed[name] = len(ctx.owned(name) & parsed.entries.keys())
    content = None
    if diff.changed:
        content = rspamd_ucl.render(
            diff.final, comments=parsed.comments, invalid=parsed.invalid, filename=name
        )
    plan = file_plan(ctx, name, content)
    out.files.append(plan)
    return plan


def deleted(name: str, kind: Kind, key: str, reason: str, before: Any = None) -> Change:
    return Change(name, kind, key, Action.DELETE, before or {"value": key}, None, reason=reason)

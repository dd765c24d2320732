"""Regexp aliases: `regexp_aliases:` in mailserver.yaml, `postfix-regexp.cf` on the volume.

One line per pattern, `/pattern/flags target[,target...]` (a PCRE table: the first matching
pattern wins, so mailserver.yaml's order is kept and a reorder is a change). Postfix reads it
after postfix-virtual.cf's addresses and before its catch-alls; DMS watches it and reloads.
"""

from __future__ import annotations

from reconciler.formats import regexp
from reconciler.kinds.base import KindPlan, PlanContext, Want
from reconciler.model import DesiredState
from reconciler.observed import Observed
from reconciler.plan import Action, Change, Kind

NAME = "regexp"
FILE = regexp.FILENAME
NOTE = (
    "postfix-regexp.cf comes after postfix-virtual.cf in virtual_alias_maps: Postfix looks the "
    "full address up in postfix-virtual.cf, then in the regexp aliases (first matching pattern "
    "wins, in mailserver.yaml's order, entries not declared there after them), and only then "
    "tries postfix-virtual.cf's catch-alls (`@domain`). Their domains are not added to DMS's "
    "hosted domains: a pattern only gets mail for a domain that has an account or alias. DMS "
    "watches the file and reloads Postfix"
)


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    parsed = ctx.observed.regexp
    diff = ctx.diff(
        FILE,
        _want(ctx.desired),
        parsed,
        same=lambda a, b: [t.lower() for t in a.targets] == [t.lower() for t in b.targets],
        show=lambda e: {"targets": list(e.targets)},
        kind_of=lambda key, e: Kind.REGEXP_ALIAS,
    )
    order = _order_change(ctx.desired, ctx.observed)
    if order is not None:
        diff.changes.append(order)
    declared = bool(ctx.desired.regexp_aliases)
    if out.add_file(ctx, FILE, diff, parsed, listed=declared, guarded=True).write:
        out.notes.append(NOTE)
    return out


def regexp_line(pattern: str, flags: str, targets: tuple[str, ...]) -> regexp.RegexpLine:
    return regexp.RegexpLine(regexp.delimit(pattern), flags, targets)


def _want(desired: DesiredState) -> dict[str, Want]:
    out: dict[str, Want] = {}
    for alias in desired.regexp_aliases:
        line = regexp_line(alias.pattern, alias.flags, alias.targets)
        out.setdefault(line.key, Want(Kind.REGEXP_ALIAS, line))
    return out


def _order_change(desired: DesiredState, observed: Observed) -> Change | None:
    """The declared patterns that are on the volume already, but in another order: first match
    wins, so that is a change of routing."""
    want = list(_want(desired))
    have = [key for key in observed.regexp.entries if key in set(want)]
    wanted = [key for key in want if key in set(have)]
    if have == wanted:
        return None
    return Change(
        FILE,
        Kind.REGEXP_ALIAS,
        "(order)",
        Action.UPDATE,
        {"order": have},
        {"order": wanted},
        details=(
            "order: the patterns are rewritten in mailserver.yaml's order (first match wins)",
        ),
    )

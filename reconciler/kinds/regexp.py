"""Regexp aliases: `regexp_aliases:` in mailserver.yaml, `postfix-regexp.cf` on the volume.

One line per pattern, `/pattern/flags target[,target...]` (a PCRE table: the first matching
pattern wins, so mailserver.yaml's order is kept and a reorder is a change). Postfix reads it
after postfix-virtual.cf's addresses and before its catch-alls; DMS watches it and reloads.

The file also holds the self-routes: each account in a declared catch-all domain (but the
catch-all's sole target) keeps its own mail by two exact patterns, which stand where a self-alias
in postfix-virtual.cf stood in Postfix's lookups: `/^a@d$/ a@d` before every other pattern, and
`/^a\\+(.*)@d$/ a+${1}@d` after every other one (see formats/regexp.py). DMS makes no Dovecot login
of a pattern, so it has nothing to warn about (a self-alias line made it log "will not be added
to '/etc/dovecot/userdb' twice" at every start and change). They are derived, not declared: the
deletion guard does not count them.
"""

from __future__ import annotations

import re
from typing import Any

from reconciler.addresses import check_address, domain_of
from reconciler.formats import accounts, regexp
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext, Want
from reconciler.kinds.checks import DocView, Reporter
from reconciler.kinds.routing import hand_written_virtual, self_routed
from reconciler.model import DesiredState, RegexpAlias
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


SELF_ROUTE_NOTE = (
    "self-routes: an account in a catch-all domain keeps its own mail by two exact patterns in "
    "postfix-regexp.cf, `/^a@d$/` first and `/^a\\+(.*)@d$/` (its +extension addresses) last, "
    "which Postfix tries before the `@d` catch-all. DMS makes no login of a pattern, so unlike "
    "a self-alias in postfix-virtual.cf it has nothing to warn about"
)


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    parsed = ctx.observed.regexp
    first, last = self_routes(ctx)
    declared = _want(ctx.desired)
    routes = {**first, **last}
    want = {**first, **{k: w for k, w in declared.items() if k not in routes}, **last}
    diff = ctx.diff(
        FILE,
        want,
        parsed,
        same=lambda a, b: [t.lower() for t in a.targets] == [t.lower() for t in b.targets],
        show=_show,
        kind_of=lambda key, e: Kind.SELF_ROUTE if key in routes else _kind_of(key, e),
    )
    # the +extension routes after every other pattern, the unmanaged ones included
    diff.final = [e for e in diff.final if e.key not in last] + [w.entry for w in last.values()]
    order = _order_change(list(want), ctx.observed)
    if order is not None:
        diff.changes.append(order)
    listed = bool(ctx.desired.regexp_aliases or routes)
    if out.add_file(ctx, FILE, diff, parsed, listed=listed, guarded=True).write:
        if any(c.kind is Kind.REGEXP_ALIAS for c in diff.changes):
            out.notes.append(NOTE)
        if any(c.kind is Kind.SELF_ROUTE and c.action is Action.CREATE for c in diff.changes):
            out.notes.append(SELF_ROUTE_NOTE)
    # Self-routes follow the accounts and catch-alls: the deletion guard (mass deletions of
    # declared patterns) neither counts them nor the ones this tool manages.
    out.managed[FILE] = sum(
        1
        for key in ctx.owned(FILE) & parsed.entries.keys()
        if not _is_self_route(parsed, key, routes)
    )
    gone = sum(c.kind is Kind.SELF_ROUTE and c.action is Action.DELETE for c in diff.changes)
    out.dropped[FILE] = out.dropped.get(FILE, 0) + gone
    return out


def self_routes(ctx: PlanContext) -> tuple[dict[str, Want], dict[str, Want]]:
    """The self-routes this plan wants: the full addresses' patterns (first in the file) and the
    +extension ones (last), by key. Kept accounts (on the volume, not declared) get them too,
    unless a hand-written postfix-virtual.cf line routes them already."""
    kept = [u.key for u in ctx.diff_of(accounts.FILENAME).unmanaged]
    hand_written = hand_written_virtual(ctx)
    first: dict[str, Want] = {}
    last: dict[str, Want] = {}
    for address in self_routed(ctx.desired, kept_accounts=kept, hand_written=hand_written):
        line = regexp.self_route(address)
        first[line.key] = Want(Kind.SELF_ROUTE, line)
        line = regexp.self_route_extension(address)
        last[line.key] = Want(Kind.SELF_ROUTE, line)
    return first, last


def _is_self_route(parsed: Any, key: str, routes: dict[str, Want]) -> bool:
    entry = parsed.entries[key]
    wanted = routes.get(key)
    if wanted is not None and wanted.entry == entry:
        return True  # the usual case: the line is the self-route this plan wants
    return regexp.self_route_of(entry) is not None


def _kind_of(key: str, entry: regexp.RegexpLine) -> Kind:
    """A line on the volume this plan does not want: a self-route by its shape, else an alias."""
    return Kind.SELF_ROUTE if regexp.self_route_of(entry) is not None else Kind.REGEXP_ALIAS


def _show(entry: regexp.RegexpLine) -> dict[str, Any]:
    found = regexp.self_route_of(entry)
    if found is None:
        return {"targets": list(entry.targets)}
    return {"address": found[0], "targets": list(entry.targets)}


def regexp_line(pattern: str, flags: str, targets: tuple[str, ...]) -> regexp.RegexpLine:
    return regexp.RegexpLine(regexp.delimit(pattern), flags, targets)


def _want(desired: DesiredState) -> dict[str, Want]:
    out: dict[str, Want] = {}
    for alias in desired.regexp_aliases:
        line = regexp_line(alias.pattern, alias.flags, alias.targets)
        out.setdefault(line.key, Want(Kind.REGEXP_ALIAS, line))
    return out


def _order_change(want: list[str], observed: Observed) -> Change | None:
    """The wanted patterns that are on the volume already, but in another order: first match
    wins, so that is a change of routing."""
    wanted_set = set(want)
    have = [key for key in observed.regexp.entries if key in wanted_set]
    have_set = set(have)
    wanted = [key for key in want if key in have_set]
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


# --- mail rules ---------------------------------------------------------------------------------

_SUBSTITUTION = re.compile(r"\$(?:\{(\d+)\}|(\d))")


def check(report: Reporter, view: DocView) -> None:
    items = view.doc.get("regexp_aliases")
    if not isinstance(items, list):
        return
    declared = view.declared
    seen: dict[tuple[str, str], int] = {}
    known = view.known_addresses()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        pattern, flags = item.get("pattern"), item.get("flags", "")
        groups = 9
        if isinstance(pattern, str) and isinstance(flags, str):
            if any(c in pattern for c in "\n\r\0"):
                report.error(("regexp_aliases", i, "pattern"), "pattern must be one line")
                continue
            problem, groups = pcre_problem(pattern, flags)
            if problem:
                report.error(("regexp_aliases", i, "pattern"), problem)
            first = seen.setdefault((pattern, flags), i)
            if first != i:
                report.error(
                    ("regexp_aliases", i, "pattern"),
                    f"the same pattern is item {first} already; Postfix only uses the first",
                )
        targets = item.get("to")
        paths = (
            [(("regexp_aliases", i, "to"), targets)]
            if isinstance(targets, str)
            else [(("regexp_aliases", i, "to", j), t) for j, t in enumerate(targets)]
            if isinstance(targets, list)
            else []
        )
        for path, target in paths:
            if isinstance(target, str) and (problem := regexp_target_problem(target, groups)):
                report.error(path, problem)
            elif isinstance(target, str) and "$" not in target:
                domain = domain_of(target)
                if domain in declared and target not in known and domain not in view.catch_all:
                    report.error(
                        path,
                        f"target '{target}' is in hosted domain '{domain}' but is no account, "
                        "alias or devnull address, so mail to it would bounce",
                    )


def regexp_target_problem(target: str, groups: int) -> str | None:
    """A target address, where `$1`/`${1}` stand for what a group matched."""
    used = [int(a or b) for a, b in _SUBSTITUTION.findall(target)]
    for number in used:
        if number > groups or number == 0:
            return (
                f"target '{target}' uses ${number}, but the pattern has "
                f"{groups} group{'s' if groups != 1 else ''}"
            )
    plain = _SUBSTITUTION.sub("x", target)
    if "$" in plain:
        return f"target '{target}' has a '$' that is not $1 ... $9 or ${{n}}"
    problem = check_address(plain)
    if problem and used:
        return f"target '{target}' does not make an address: {problem}"
    return problem and (f"target {problem}" if problem.startswith("address") else problem)


def pcre_problem(pattern: str, flags: str) -> tuple[str | None, int]:
    """(why PCRE2 refuses `pattern`, or None; its number of capture groups), as Postfix compiles
    it: case-insensitive unless `i`, the other flags as in pcre_table(5)."""
    import pcre2  # imported here: validate needs it only for files that declare regexp_aliases

    options = 0 if "i" in flags else pcre2.I
    for flag, option in (("m", pcre2.M), ("s", pcre2.S), ("x", pcre2.X)):
        if flag in flags:
            options |= option
    try:
        compiled = pcre2.compile(pattern, flags=options)
    except pcre2.PatternError as exc:
        return f"pattern is not a valid PCRE: {exc}", 0
    except Exception as exc:  # noqa: BLE001  - the binding raises a few types for odd input
        return f"pattern is not a valid PCRE: {exc}", 0
    nested = nested_quantifier(pattern, extended="x" in flags)
    if nested is not None:
        return (
            f"pattern repeats the group '{nested}', which itself holds an unbounded quantifier: "
            "on an address that almost matches, PCRE tries exponentially many ways and Postfix "
            "gives up at its match limit, after 0.1 s or more of CPU for each such recipient "
            "(the alias then silently does not match). Write it so each part can match in one "
            "way only: drop the outer quantifier, or make the group atomic ((?>...)) or the inner "
            "quantifier possessive (a++) where what follows cannot be matched by it"
        ), int(compiled.groups)
    return None, int(compiled.groups)


_QUANTIFIER = re.compile(r"[*+?]|\{(\d*),?(\d*)\}")


def nested_quantifier(pattern: str, *, extended: bool = False) -> str | None:
    """The first group (as written) that repeats without bound (`*`, `+`, `{n,}`; not possessive)
    while holding a quantifier that backtracks without bound, as in `(a+)+`: the shape that makes
    PCRE's backtracking exponential. Possessive quantifiers and atomic groups `(?>...)` do not
    backtrack, so they do not count. Alternations of overlapping branches (`(a|aa)+`) are not
    found. `pattern` is a valid PCRE (compiled before)."""
    open_groups: list[list[Any]] = []  # [start, atomic, holds an unbounded quantifier]
    closed: tuple[int, bool] | None = None  # (start, counts) of a group that just closed
    position, length = 0, len(pattern)
    while position < length:
        char = pattern[position]
        just_closed, closed = closed, None
        if extended and char.isspace():
            closed, position = just_closed, position + 1  # `x`: space between atom and quantifier
            continue
        if extended and char == "#":
            end = pattern.find("\n", position)
            closed, position = just_closed, length if end < 0 else end + 1
            continue
        if char == "\\":
            if pattern.startswith("\\Q", position):
                end = pattern.find("\\E", position + 2)
                position = length if end < 0 else end + 2
            else:
                position += 2
            continue
        if char == "[":
            position = _class_end(pattern, position)
            continue
        if char == "(":
            if pattern.startswith(("(?#", "(*"), position):  # a comment, a verb or option
                end = pattern.find(")", position)
                position = length if end < 0 else end + 1
                continue
            open_groups.append([position, pattern.startswith("(?>", position), False])
            position += 1
            continue
        if char == ")":
            if open_groups:
                start, atomic, holds = open_groups.pop()
                closed = (start, holds and not atomic)
                if closed[1] and open_groups:
                    open_groups[-1][2] = True
            position += 1
            continue
        match = _QUANTIFIER.match(pattern, position)
        if match is None or (match.group(0).startswith("{") and not _counted(match)):
            position += 1
            continue
        end = match.end()
        possessive = pattern.startswith("+", end)
        unbounded = match.group(0) in "*+" or (match.group(1) is not None and _open_ended(match))
        if unbounded and not possessive:
            if just_closed is not None and just_closed[1]:
                return pattern[just_closed[0] : end]
            if open_groups:
                open_groups[-1][2] = True
        position = end + (1 if possessive or pattern.startswith("?", end) else 0)
    return None


def _counted(match: re.Match[str]) -> bool:
    """`{n}`, `{n,}`, `{n,m}`: a quantifier; anything else in braces is literal text."""
    return bool(match.group(1))


def _open_ended(match: re.Match[str]) -> bool:
    return "," in match.group(0) and not match.group(2)


def _class_end(pattern: str, position: int) -> int:
    """The position after the character class opening at `position`."""
    position += 1
    if pattern.startswith("^", position):
        position += 1
    if pattern.startswith("]", position):
        position += 1  # a `]` first is a literal
    while position < len(pattern):
        if pattern.startswith("[:", position):
            end = pattern.find(":]", position + 2)
            if end >= 0:
                position = end + 2
                continue
        if pattern.startswith("\\Q", position):
            end = pattern.find("\\E", position + 2)
            position = len(pattern) if end < 0 else end + 2
            continue
        if pattern[position] == "\\":
            position += 2
            continue
        if pattern[position] == "]":
            return position + 1
        position += 1
    return position


# --- export -------------------------------------------------------------------------------------


def export(ctx: ExportContext) -> None:
    """The patterns PCRE2 and the rules accept, whose plain targets exist here; not the
    self-routes of accounts in an adopted catch-all domain (nothing to declare)."""
    domains, known, catch_domains = ctx.domains(), ctx.known(), ctx.catch_domains()
    accounts = ctx.accounts()
    out = []
    for key, entry in ctx.observed.regexp.entries.items():
        found = regexp.self_route_of(entry)
        if found is not None and found[0] in accounts and domain_of(found[0]) in catch_domains:
            continue  # a self-route: the adopted catch-all implies it (the planner writes it)
        problem = None
        if entry.delimiter != "/":
            problem = "it is not written between '/' delimiters"
        else:
            problem, groups = pcre_problem(entry.pattern, entry.flags)
            for target in entry.targets:
                problem = problem or regexp_target_problem(target, groups)
                if problem is None and "$" not in target:
                    domain = domain_of(target)
                    if domain in domains and target not in known and domain not in catch_domains:
                        problem = f"target {target} is no account or alias here"
        if problem:
            ctx.warnings.append(f"postfix-regexp.cf: {key} left unmanaged: {problem}")
            continue
        out.append(RegexpAlias(entry.pattern, tuple(dict.fromkeys(entry.targets)), entry.flags))
    ctx.fields["regexp_aliases"] = tuple(out)

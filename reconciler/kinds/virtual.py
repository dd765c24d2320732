"""Virtual routing: `aliases:`, `catch_all:` and `devnull:`, in `postfix-virtual.cf`, plus the
`devnull: /dev/null` line of `postfix-aliases.cf` that devnull entries need.

Postfix looks `user@domain` up before `@domain`, so every account in a catch-all domain needs its
own route, or the catch-all would take its mail. That route is a pair of exact patterns in
postfix-regexp.cf (kinds/regexp.py), not a self-alias line here: DMS makes a Dovecot login of
every `a@d a@d` line and warned at every start and change that it already had one. Self-alias
lines this tool wrote before are deleted in the apply that writes the patterns. Unmanaged lines
that divert an account's mail after this plan are warned about, never touched.
"""

from __future__ import annotations

from typing import Any

from reconciler.addresses import check_address, check_domain, domain_of
from reconciler.formats import accounts, aliases, regexp, virtual
from reconciler.kinds.base import (
    ExportContext,
    FileDiff,
    KindPlan,
    PlanContext,
    Want,
    same_normalised,
    with_reason,
)
from reconciler.kinds.checks import DocView, Reporter, failing_targets, report_undeclared
from reconciler.kinds.routing import hand_written_virtual, self_routed, sole_catch_all_targets
from reconciler.model import Alias, CatchAll, DesiredState
from reconciler.observed import Observed
from reconciler.plan import Action, Change, Kind

NAME = "virtual"
FILE = virtual.FILENAME
DEVNULL_TARGET = "devnull"
DEVNULL_LOCAL = aliases.LocalAlias("devnull", "/dev/null")
MOVED_REASON = (
    "moved to postfix-regexp.cf as exact patterns (self-routes): DMS warned about this line at "
    "every start and change"
)
SOLE_TARGET_REASON = (
    "not needed: the account is the only target of its domain's catch-all "
    "(DMS warned about this line at every start and change)"
)


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    desired, observed = ctx.desired, ctx.observed
    account_diff = ctx.diff_of(accounts.FILENAME)
    diff = ctx.diff(
        FILE,
        want(desired),
        observed.virtual,
        same=_same,
        show=_show,
        kind_of=_kind_of,
    )
    routed = set(
        self_routed(
            desired,
            kept_accounts=[u.key for u in account_diff.unmanaged],
            hand_written=hand_written_virtual(ctx),
        )
    )
    sole_targets = sole_catch_all_targets(desired)
    diff.changes = [_self_alias_reason(c, routed, sole_targets) for c in diff.changes]
    out.add_file(ctx, FILE, diff, observed.virtual, duplicates=True)
    local_diff = ctx.diff(
        aliases.FILENAME,
        {"devnull": Want(Kind.LOCAL_ALIAS, DEVNULL_LOCAL)} if desired.devnull else {},
        observed.local_aliases,
        same=same_normalised,
        show=lambda e: {"target": e.value},
        kind_of=lambda key, e: Kind.LOCAL_ALIAS,
    )
    out.add_file(ctx, aliases.FILENAME, local_diff, observed.local_aliases, duplicates=True)
    out.warnings += shadow_warnings(desired, observed, diff, account_diff, routed)
    return out


def _self_alias_reason(change: Change, routed: set[str], sole_targets: set[str]) -> Change:
    """Why a self-alias line of ours goes: its route moved to postfix-regexp.cf, or the account
    is its catch-all's sole target; otherwise the usual reason (the account or catch-all left)."""
    if change.action is not Action.DELETE or change.kind is not Kind.SELF_ALIAS:
        return change
    if change.key in routed:
        return with_reason(change, MOVED_REASON)
    if change.key in sole_targets:
        return with_reason(change, SOLE_TARGET_REASON)
    return change


def want(desired: DesiredState) -> dict[str, Want]:
    """The managed postfix-virtual.cf entries: aliases, catch-alls and devnull addresses (the
    accounts of a catch-all domain keep their mail by patterns in postfix-regexp.cf)."""
    out: dict[str, Want] = {}
    for alias in desired.aliases:
        out[alias.address] = Want(Kind.ALIAS, virtual.VirtualLine(alias.address, alias.targets))
    for catch in desired.catch_all:
        key = "@" + catch.domain
        out[key] = Want(Kind.CATCH_ALL, virtual.VirtualLine(key, catch.targets))
    for address in desired.devnull:
        out[address] = Want(Kind.DEVNULL, virtual.VirtualLine(address, (DEVNULL_TARGET,)))
    return out


def _same(have: virtual.VirtualLine, want: virtual.VirtualLine) -> bool:
    if have.targets == want.targets:  # the usual case once we wrote the line: skip the sets
        return True
    return {t.lower() for t in have.targets} == {t.lower() for t in want.targets}


def _show(entry: virtual.VirtualLine) -> dict[str, Any]:
    return {"targets": list(entry.targets)}


def _kind_of(key: str, entry: virtual.VirtualLine) -> Kind:
    if key.startswith("@"):
        return Kind.CATCH_ALL
    if [t.lower() for t in entry.targets] == [DEVNULL_TARGET]:
        return Kind.DEVNULL
    if [t.lower() for t in entry.targets] == [key]:
        return Kind.SELF_ALIAS
    return Kind.ALIAS


def shadow_warnings(
    desired: DesiredState,
    observed: Observed,
    virtual_diff: FileDiff,
    account_diff: FileDiff,
    routed: set[str] | frozenset[str] = frozenset(),
) -> list[str]:
    """Unmanaged entries whose mail goes astray after this plan: say so, do not touch them.
    `routed`: the accounts the plan gives a self-route."""
    out: list[str] = []
    if virtual_diff.unmanaged:
        out += _unmanaged_warnings(desired, observed, virtual_diff, account_diff, routed)
    # The other way round: an alias this plan declares takes the mail of an account it keeps.
    # (A declared catch-all does not: kept accounts in its domain get a self-route.)
    if not account_diff.unmanaged:
        return out  # and then the declared entries need not be built a second time
    declared = {key: wanted.kind for key, wanted in want(desired).items()}
    for item in account_diff.unmanaged:
        if declared.get(item.key) in (Kind.ALIAS, Kind.DEVNULL):
            out.append(
                f"the {declared[item.key].value} '{item.key}' in mailserver.yaml takes "
                f"the mail of the unmanaged account '{item.key}' (Postfix delivers by the "
                "alias)"
            )
    return out


def _unmanaged_warnings(
    desired: DesiredState,
    observed: Observed,
    virtual_diff: FileDiff,
    account_diff: FileDiff,
    routed: set[str] | frozenset[str],
) -> list[str]:
    """`shadow_warnings` of the unmanaged postfix-virtual.cf lines (none on most volumes: the
    sets are built only then, and the self-routed addresses only for an unmanaged catch-all)."""
    out: list[str] = []
    account_set = {a.address for a in desired.accounts}
    deleted = {c.key for c in account_diff.changes if c.action is Action.DELETE}
    catch_domains = {catch.domain for catch in desired.catch_all}
    kept: set[str] | None = None
    for item in virtual_diff.unmanaged:
        if item.kind is Kind.CATCH_ALL:
            if kept is None:
                kept = _kept(observed, virtual_diff, routed)
            # the DMS catch-all trap: without a route of their own, Postfix hands the catch-all
            # the mail of every real account in the domain
            swallowed = sorted(
                a for a in account_set if "@" + domain_of(a) == item.key and a not in kept
            )
            if swallowed:
                out.append(
                    f"unmanaged catch-all '{item.key}' in postfix-virtual.cf takes the mail "
                    f"of account(s) {', '.join(swallowed)} (no route of their own): declare "
                    f"`catch_all: {{{item.key[1:]}: ...}}` in mailserver.yaml to fix it"
                )
        if item.kind is Kind.SELF_ALIAS and domain_of(item.key) in catch_domains:
            out.append(
                f"unmanaged self-alias '{item.key}' in postfix-virtual.cf: DMS logs `Alias "
                f"'{item.key}' will not be added to '/etc/dovecot/userdb' twice` for it at every "
                "start and change. Delete the line (or use --prune): dms-reconciler then keeps "
                "the account's mail from the catch-all by self-routes in postfix-regexp.cf"
            )
        elif item.key in account_set:
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
    return out


def _kept(
    observed: Observed, virtual_diff: FileDiff, routed: set[str] | frozenset[str]
) -> set[str]:
    """The addresses with a route of their own after this plan: a postfix-virtual.cf line, a
    self-route, or an exact self-route pattern written by hand."""
    kept_keys = {entry.key.lower() for entry in virtual_diff.final} | routed
    kept_keys |= {
        found[0]
        for entry in observed.regexp.entries.values()
        if (found := regexp.self_route_of(entry)) is not None and not found[1]
    }
    return kept_keys


# --- mail rules ---------------------------------------------------------------------------------


def check(report: Reporter, view: DocView) -> None:
    """Aliases, catch-alls and devnull addresses are safe on a DMS config line and in declared
    domains (how they route together with the accounts: kinds/routing.py)."""
    _check_addresses(report, view)


def _check_addresses(report: Reporter, view: DocView) -> None:
    """Every address is safe on a DMS config line and every hosted one in a declared domain."""
    declared = view.declared
    for address in view.aliases:
        if problem := view.address_problem(address):
            report.error(("aliases", address), problem, key=True)
        elif domain_of(address) not in declared:
            report_undeclared(
                report, view, ("aliases", address), domain_of(address), f"'{address}'", key=True
            )
    for domain in view.catch_all:
        if problem := check_domain(domain):
            report.error(("catch_all", domain), problem, key=True)
        elif domain not in declared:
            what = f"the catch-all for '{domain}'"
            report_undeclared(report, view, ("catch_all", domain), domain, what, key=True)
    for path, target in failing_targets(view.doc, view.address_problem):
        problem = view.address_problem(target) or ""
        report.error(path, f"target {problem}" if problem.startswith("address") else problem)
    for i, address in view.devnull:
        if problem := view.address_problem(address):
            report.error(("devnull", i), problem)
        elif domain_of(address) not in declared:
            report_undeclared(
                report, view, ("devnull", i), domain_of(address), f"'{address}'", key=False
            )


# --- export -------------------------------------------------------------------------------------


def export(ctx: ExportContext) -> None:
    """Aliases, catch-alls and devnull addresses that adopt without changing how mail is routed.

    Self-aliases here and self-routes in postfix-regexp.cf are not declared (the catch-all
    implies them: the planner writes the self-routes); a catch-all that swallows the mail of real
    accounts today (neither) and aliases whose targets do not resolve stay unmanaged.
    """
    account_set = ctx.accounts()
    devnull_on = (
        ctx.observed.local_aliases.entries.get("devnull") is not None
        and ctx.observed.local_aliases.entries["devnull"].normalised()[1] == "/dev/null"
    )

    aliases: dict[str, tuple[str, ...]] = {}
    catch_all: dict[str, tuple[str, ...]] = {}
    devnull: list[str] = []
    self_aliases: set[str] = set()
    for key, entry in ctx.observed.virtual.entries.items():
        targets = tuple(sorted({t.lower() for t in entry.targets}))
        if entry.key != key:
            ctx.warnings.append(
                f"postfix-virtual.cf: '{entry.key}' has uppercase letters; left unmanaged"
            )
            continue
        if key.startswith("@"):
            if check_domain(key[1:]) is None and all(check_address(t) is None for t in targets):
                catch_all[key[1:]] = targets
            else:
                ctx.warnings.append(
                    f"postfix-virtual.cf: catch-all '{key}' cannot be expressed; left unmanaged"
                )
            continue
        if targets == (DEVNULL_TARGET,):
            if devnull_on and check_address(key) is None:
                devnull.append(key)
            else:
                ctx.warnings.append(
                    f"postfix-virtual.cf: '{key} devnull' without `devnull: /dev/null` in "
                    "postfix-aliases.cf; left unmanaged"
                )
            continue
        if targets == (key,) and key in account_set:
            self_aliases.add(key)
            continue
        problem = check_address(key) or next(
            (check_address(t) for t in targets if check_address(t)), None
        )
        if problem:
            ctx.warnings.append(f"postfix-virtual.cf: alias '{key}' left unmanaged: {problem}")
            continue
        if key in account_set:
            ctx.warnings.append(
                f"postfix-virtual.cf: '{key}' is both an account and an alias; the "
                "alias is left unmanaged (Postfix delivers by it)"
            )
            continue
        aliases[key] = targets

    # Exact self-route patterns in postfix-regexp.cf keep an account's mail as a self-alias does.
    self_aliases |= {
        found[0]
        for entry in ctx.observed.regexp.entries.values()
        if (found := regexp.self_route_of(entry)) is not None and not found[1]
    }
    # A catch-all whose domain has accounts without either swallows their mail today. Its own
    # single target is not swallowed (its mail goes to it either way), and the planner wants no
    # self-route for it (`sole_catch_all_targets`): adopting changes nothing.
    for domain in sorted(catch_all):
        sole = catch_all[domain][0] if len(catch_all[domain]) == 1 else None
        trapped = sorted(
            a for a in account_set if domain_of(a) == domain and a not in self_aliases and a != sole
        )
        if trapped:
            ctx.warnings.append(
                f"catch-all @{domain} takes the mail of account(s) {', '.join(trapped[:5])}"
                f"{' ...' if len(trapped) > 5 else ''} (no self-alias or self-route); left "
                f"unmanaged so routing does not change. Add `catch_all: {{{domain}: ...}}` to "
                "mailserver.yaml to fix it"
            )
            del catch_all[domain]

    aliases = _resolvable(aliases, account_set, set(devnull), set(catch_all), ctx.warnings)
    ctx.fields["aliases"] = tuple(Alias(k, v) for k, v in sorted(aliases.items()))
    ctx.fields["catch_all"] = tuple(CatchAll(k, v) for k, v in sorted(catch_all.items()))
    ctx.fields["devnull"] = tuple(sorted(devnull))


def _resolvable(
    aliases: dict[str, tuple[str, ...]],
    accounts: set[str],
    devnull: set[str],
    catch_domains: set[str],
    warnings: list[str],
) -> dict[str, tuple[str, ...]]:
    """Drop aliases whose in-domain targets do not resolve (again and again: dropping one can
    break another)."""
    hosted = {domain_of(a) for a in accounts} | {domain_of(a) for a in aliases} | catch_domains
    hosted |= {domain_of(a) for a in devnull}
    kept = dict(aliases)
    changed = True
    while changed:
        changed = False
        known = accounts | devnull | set(kept)
        for key, targets in list(kept.items()):
            bad = [
                t
                for t in targets
                if domain_of(t) in hosted and t not in known and domain_of(t) not in catch_domains
            ]
            if bad or key in targets:
                warnings.append(
                    f"postfix-virtual.cf: alias '{key}' left unmanaged: target "
                    f"{(bad or [key])[0]} is no account or alias here"
                )
                del kept[key]
                changed = True
    return kept

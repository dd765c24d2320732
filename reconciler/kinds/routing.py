"""How mail routes through the virtual tables as a whole: the rules that span kinds.

An address is one thing (an account, an alias or a devnull address: Postfix delivers by the
alias), an alias target inside a hosted domain exists here, alias chains end (catch-alls are
nodes too), and no alias expands beyond Postfix's limit. These read the accounts and the virtual
routing (kinds/accounts.py, kinds/virtual.py) together, so they live beside the kinds, not in
one; the rules about the `domains` list and `hostname` are in load/rules.py. Here too: which
accounts need a self-route (postfix-regexp.cf, kinds/regexp.py) so a catch-all does not take their
mail, which the virtual routing (kinds/virtual.py) needs to know as well.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from reconciler.addresses import domain_of
from reconciler.formats import virtual
from reconciler.kinds.base import PlanContext
from reconciler.kinds.checks import DocView, Path, Reporter, failing_targets, find_cycles, suggest
from reconciler.model import DesiredState


def self_routed(
    desired: DesiredState,
    *,
    kept_accounts: Iterable[str] = (),
    hand_written: Collection[str] = (),
) -> list[str]:
    """The accounts in a declared catch-all domain whose own mail needs a self-route, sorted.

    Postfix tries `@domain` after the full address: without one, the catch-all would take the
    account's mail (DMS docs, provisioner/file.md). The catch-all's own single target needs none
    (its mail goes to it either way). `kept_accounts` are accounts on the volume that stay
    although mailserver.yaml does not declare them (`setup email add`): real mailboxes too. None
    for an address a postfix-virtual.cf line that stays and that we did not write routes
    (`hand_written`: Postfix reads that file first, so the line decides; the plan warns)."""
    catch_domains = {catch.domain for catch in desired.catch_all}
    sole = sole_catch_all_targets(desired)
    candidates = [a.address for a in desired.accounts] + list(kept_accounts)
    return sorted(
        {
            address
            for address in candidates
            if domain_of(address) in catch_domains
            and address not in hand_written
            and address.lower() not in sole
        }
    )


def hand_written_virtual(ctx: PlanContext) -> set[str]:
    """The postfix-virtual.cf keys that stay after this plan and that this tool did not write
    (none with prune: it deletes them all)."""
    if ctx.prune:
        return set()
    return set(ctx.observed.virtual.entries) - ctx.owned(virtual.FILENAME)


def sole_catch_all_targets(desired: DesiredState) -> set[str]:
    """Accounts that are the one target of their own domain's catch-all."""
    return {
        catch.targets[0].lower()
        for catch in desired.catch_all
        if len(catch.targets) == 1 and domain_of(catch.targets[0]) == catch.domain
    }


def check(report: Reporter, view: DocView) -> None:
    _check_expansion(report, view)
    _check_collisions(report, view)
    _check_targets_resolve(report, view)
    _check_loops(report, view)


POSTFIX_EXPANSION_LIMIT = 1000  # virtual_alias_expansion_limit, Postfix's default (DMS keeps it)


def _check_expansion(report: Reporter, view: DocView) -> None:
    """An alias that expands (through nested aliases too) to more addresses than Postfix's
    virtual_alias_expansion_limit makes cleanup refuse the mail with "unreasonable
    virtual_alias_maps map expansion size ... try again later": it is deferred, then bounced."""
    sizes: dict[str, int] = {}

    def size(root: str) -> int:
        """Addresses `root` expands to, capped just above the limit; iterative (long chains)."""
        stack, on_path = [root], {root}
        while stack:
            address = stack[-1]
            waiting = [
                t
                for t in dict.fromkeys(view.aliases[address])
                if t in view.aliases and t not in sizes and t not in on_path
            ]
            if waiting:
                stack.append(waiting[0])
                on_path.add(waiting[0])
                continue
            total = 0
            for target in dict.fromkeys(view.aliases[address]):
                total += sizes.get(target, 1)  # a final address, or a loop (reported elsewhere)
                if total > POSTFIX_EXPANSION_LIMIT:
                    break
            sizes[address] = total
            stack.pop()
            on_path.discard(address)
        return sizes[root]

    for address, targets in view.aliases.items():
        if len(targets) * 2 < POSTFIX_EXPANSION_LIMIT and not any(
            t in view.aliases for t in targets
        ):
            continue  # the common case: a short list of final addresses
        if size(address) > POSTFIX_EXPANSION_LIMIT:
            report.warning(
                ("aliases", address),
                f"alias '{address}' expands to more than {POSTFIX_EXPANSION_LIMIT} addresses, "
                "Postfix's default virtual_alias_expansion_limit: Postfix refuses such mail "
                "('unreasonable virtual_alias_maps map expansion size', deferred, then bounced); "
                "use a mailing list, or raise virtual_alias_expansion_limit in DMS's "
                "postfix-main.cf",
                key=True,
            )


def _check_collisions(report: Reporter, view: DocView) -> None:
    """An address is one thing: an account, an alias or a devnull address (Postfix: alias wins)."""
    for address in view.aliases:
        if address in view.accounts:
            report.error(
                ("aliases", address),
                f"'{address}' is both an account and an alias; Postfix would deliver by the alias "
                "and the mailbox would never get mail: remove one",
                key=True,
            )
    for i, address in view.devnull:
        if address in view.accounts:
            report.error(
                ("devnull", i), f"'{address}' is both an account and a devnull address; remove one"
            )
        elif address in view.aliases:
            report.error(
                ("devnull", i), f"'{address}' is both an alias and a devnull address; remove one"
            )


def _check_targets_resolve(report: Reporter, view: DocView) -> None:
    """A target inside a hosted domain must exist here; otherwise the mail bounces (typo guard)."""
    declared = view.declared
    known = view.known_addresses()

    def dangling(target: str) -> bool:
        if target in known or view.address_problem(target) is not None:
            return False  # most targets are accounts or aliases here
        domain = domain_of(target)
        return domain in declared and domain not in view.catch_all

    for path, target in failing_targets(view.doc, dangling):
        report.error(
            path,
            f"target '{target}' is in hosted domain '{domain_of(target)}' but is no account, "
            f"alias or devnull address, so mail to it would bounce{suggest(target, known) or ''}",
        )


def _check_loops(report: Reporter, view: DocView) -> None:
    """Alias chains must end: at an account, a devnull address or an outside forward.

    A target in a catch-all domain that is none of those resolves through the catch-all, so
    catch-alls are nodes of the graph too (`@domain`).
    """
    devnull = {a for _, a in view.devnull}
    terminal = set(view.accounts) | devnull

    def successors(node: str) -> list[str]:
        targets = (
            view.catch_all.get(node[1:], []) if node.startswith("@") else view.aliases.get(node, [])
        )
        out = []
        for target in targets:
            if target in terminal:
                continue
            if target in view.aliases:
                out.append(target)
            elif domain_of(target) in view.catch_all:
                out.append("@" + domain_of(target))
        return out

    nodes = list(view.aliases) + ["@" + d for d in view.catch_all]
    reported: set[frozenset[str]] = set()
    for cycle in find_cycles(nodes, successors):
        members = frozenset(cycle)
        if members in reported:
            continue
        reported.add(members)
        start = cycle[0]
        path: Path = ("catch_all", start[1:]) if start.startswith("@") else ("aliases", start)
        if len(cycle) == 1 and start.startswith("@"):
            message = (
                f"the catch-all for '{start[1:]}' sends to an address of the same domain that is "
                "no account, alias or devnull address, so it resolves through the catch-all "
                "again: a mail loop; send it to an account"
            )
        else:
            shown = " -> ".join(_node_name(n) for n in cycle + [cycle[0]])
            message = (
                f"alias loop: {shown}; Postfix would bounce this mail with 'mail forwarding loop'"
            )
        report.error(path, message, key=True)


def _node_name(node: str) -> str:
    return f"catch-all {node}" if node.startswith("@") else node

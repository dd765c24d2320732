"""Sender and recipient restrictions: `restrict: {send, receive}` in mailserver.yaml,
`postfix-send-access.cf` and `postfix-receive-access.cf` on the volume (`address REJECT`, what
DMS's `setup email restrict` writes). DMS does not watch them: the sidecar reloads Postfix.
"""

from __future__ import annotations

from reconciler.addresses import check_address, domain_of
from reconciler.formats import access
from reconciler.formats._lines import ParsedFile
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext, Want, same_normalised
from reconciler.kinds.checks import DocView, Reporter, not_declared, section, strings
from reconciler.model import Restrict
from reconciler.plan import Kind

NAME = "restrict"
NOTE = (
    "{files}: DMS does not watch {it}; the sidecar puts {it} in Postfix's restrictions as DMS "
    "does at start-up and runs `postfix reload` (what `setup email restrict` runs). By hand: "
    "`docker compose up -d --force-recreate`"
)


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    written = []
    for name, addresses in (
        (access.SEND, ctx.desired.restrict.send),
        (access.RECEIVE, ctx.desired.restrict.receive),
    ):
        parsed = ctx.observed.access.get(name) or ParsedFile({})
        want = {a: Want(Kind.RESTRICT, access.AccessLine(a, access.REJECT)) for a in addresses}
        diff = ctx.diff(
            name,
            want,
            parsed,
            same=same_normalised,
            show=lambda e: {"action": e.action},
            kind_of=lambda key, e: Kind.RESTRICT,
        )
        if out.add_file(ctx, name, diff, parsed, listed=bool(addresses), guarded=True).write:
            written.append(name)
    if written:
        one = len(written) == 1
        out.notes.append(NOTE.format(files=" and ".join(written), it="it" if one else "them"))
    return out


def check(report: Reporter, view: DocView) -> None:
    restrict = section(view.doc, "restrict")
    for direction in ("send", "receive"):
        for j, address in strings(restrict.get(direction)):
            path = ("restrict", direction, j)
            if problem := view.address_problem(address):
                report.error(path, problem)
            elif domain_of(address) not in view.declared:
                report.error(path, not_declared(domain_of(address), f"'{address}'"))


def export(ctx: ExportContext) -> None:
    """The REJECT lines of hosted addresses."""
    domains = ctx.domains()
    found: dict[str, list[str]] = {"send": [], "receive": []}
    for direction, name in (("send", access.SEND), ("receive", access.RECEIVE)):
        for key, entry in (ctx.observed.access.get(name) or ParsedFile({})).entries.items():
            if entry.key != key or check_address(key) or domain_of(key) not in domains:
                ctx.warnings.append(f"{name}: '{entry.key}' left unmanaged: not a hosted address")
            elif entry.normalised()[1] != access.REJECT:
                ctx.warnings.append(f"{name}: '{key}' left unmanaged: its action is not REJECT")
            else:
                found[direction].append(key)
    ctx.fields["restrict"] = Restrict(tuple(sorted(found["send"])), tuple(sorted(found["receive"])))

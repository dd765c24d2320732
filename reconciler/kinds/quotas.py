"""Mailbox quotas: an account's `quota:` in mailserver.yaml, `dovecot-quotas.cf` on the volume.

One line per account, `address:size` (DMS's `setup quota set`). DMS greps the file by substring,
so an earlier line can shadow a later one's size: the plan shows what DMS reads instead, and the
canonical rewrite orders the lines so that cannot happen (see formats/quotas.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from reconciler.addresses import check_quota, quota_bytes, quota_grace_lost
from reconciler.formats import quotas
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext, Want
from reconciler.kinds.checks import DocView, Reporter
from reconciler.plan import Kind

NAME = "quotas"
FILE = quotas.FILENAME


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    diff = ctx.diff(
        FILE,
        {
            a.address: Want(Kind.QUOTA, quotas.QuotaLine(a.address, a.quota))
            for a in ctx.desired.accounts
            if a.quota is not None
        },
        ctx.observed.quotas,
        same=lambda a, b: (
            a.size == b.size and a.address.lower() == b.address.lower() and a.shadowed is None
        ),
        show=_show,
        kind_of=lambda key, e: Kind.QUOTA,
    )
    out.add_file(ctx, FILE, diff, ctx.observed.quotas, duplicates=True)
    return out


def _show(entry: quotas.QuotaLine) -> dict[str, Any]:
    """The size; quoted with escapes when blanks or a CR make DMS misread it, and what DMS reads
    instead when an earlier line shadows it (see quotas.py)."""
    size = entry.size
    shown = size if size == size.strip() else repr(size)
    if entry.shadowed:
        shown += f" (DMS reads {entry.shadowed})"
    return {"quota": shown}


def check(report: Reporter, view: DocView) -> None:
    """Quotas Dovecot can hold (the schema checks their form)."""
    verdicts: dict[str, tuple[str | None, str | None]] = {}  # a few sizes for 10,000 accounts
    for address, account in view.accounts.items():
        quota = account.get("quota") if isinstance(account, dict) else None
        if not isinstance(quota, str):
            continue
        verdict = verdicts.get(quota)
        if verdict is None:
            problem = check_quota(quota)
            verdict = verdicts[quota] = (problem, None if problem else quota_grace_lost(quota))
        problem, lost = verdict
        if problem:
            report.error(("accounts", address, "quota"), problem)
        elif lost:
            report.warning(("accounts", address, "quota"), lost)  # DMS v16's grace


def export(ctx: ExportContext) -> None:
    """The quota of each adopted account, where DMS applies the one the line says."""
    adopted = []
    for account in ctx.fields.get("accounts", ()):
        line = ctx.observed.quotas.entries.get(account.address)
        quota = line.size if line is not None and _valid(line.size) else None
        if line is not None and line.shadowed:
            # adopting it would change the quota DMS applies today: leave it unmanaged
            ctx.warnings.append(
                f"dovecot-quotas.cf: the quota of '{account.address}' is not what DMS applies "
                f"(it reads {line.shadowed}); left unmanaged"
            )
            quota = None
        adopted.append(replace(account, quota=quota) if quota is not None else account)
    ctx.fields["accounts"] = tuple(adopted)


def _valid(size: str) -> bool:
    return quota_bytes(size) is not None and check_quota(size) is None

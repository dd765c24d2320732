"""Rspamd's action thresholds: `rspamd.actions` in mailserver.yaml, override.d/actions.conf.

Rspamd applies the action of the highest threshold a message's score reaches: greylist (a soft
4xx, retried by the sender), add_header (delivered with X-Spam headers; DMS's sieve files it in
Junk), reject (5xx at SMTP time). DMS ships 4, 6 and 11 in local.d/actions.conf; override.d wins
over it and lasts: DMS's change detector copies the folder back after every change.
"""

from __future__ import annotations

from dataclasses import replace

from reconciler.formats import rspamd_ucl
from reconciler.kinds import rspamd_files
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext
from reconciler.kinds.checks import DocView, Reporter, section
from reconciler.model import Rspamd
from reconciler.plan import Kind

NAME = "rspamd_actions"
FILE = rspamd_ucl.file_name("actions.conf")
ORDER = ("greylist", "add_header", "reject")
DMS_DEFAULTS = {"greylist": 4.0, "add_header": 6.0, "reject": 11.0}  # DMS's local.d/actions.conf


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    want = {
        name: rspamd_ucl.Item(name, rspamd_ucl.ucl_value(_number(score)))
        for name, score in ctx.desired.rspamd.actions
    }
    fp = rspamd_files.plan_override(ctx, out, FILE, want, Kind.RSPAMD_ACTION)
    if fp is not None and fp.write:
        out.notes.append(
            f"{FILE}: {rspamd_files.RELOAD}; from the next message on Rspamd greylists, adds "
            "spam headers or rejects at the declared scores (DMS's defaults 4, 6, 11 for the "
            "others)"
        )
    return out


def _number(score: float) -> int | float:
    return int(score) if float(score).is_integer() else float(score)


def effective(declared: dict[str, float]) -> dict[str, float]:
    """The thresholds Rspamd uses: declared ones over DMS's defaults."""
    return {**DMS_DEFAULTS, **declared}


def check(report: Reporter, view: DocView) -> None:
    """greylist < add_header < reject, counting DMS's default for an undeclared one."""
    actions = section(section(view.doc, "rspamd"), "actions")
    declared = {
        k: float(v)
        for k, v in actions.items()
        if k in ORDER and isinstance(v, int | float) and not isinstance(v, bool)
    }
    if not declared:
        return
    now = effective(declared)
    for low, high in zip(ORDER, ORDER[1:], strict=False):
        if now[low] >= now[high]:
            where = high if high in declared else low
            said = lambda n: f"{n} {now[n]:g}" + ("" if n in declared else " (DMS's default)")  # noqa: E731
            report.error(
                ("rspamd", "actions", where),
                f"thresholds must rise greylist < add_header < reject: {said(low)} is not below "
                f"{said(high)}; Rspamd would never reach the lower action",
            )


def export(ctx: ExportContext) -> None:
    parsed = ctx.observed.rspamd_files.get(FILE)
    found: list[tuple[str, float]] = []
    if parsed is not None:
        for key, item in parsed.entries.items():
            value = rspamd_ucl.scalar(item.value) if item.value is not None else None
            if key in ORDER and isinstance(value, int | float) and not isinstance(value, bool):
                found.append((key, float(value)))
            else:
                ctx.warnings.append(f"{FILE}: '{key}' left unmanaged: not a threshold we declare")
    ordered = tuple(sorted(found, key=lambda a: ORDER.index(a[0])))
    ctx.fields["rspamd"] = replace(ctx.fields.get("rspamd") or Rspamd(), actions=ordered)

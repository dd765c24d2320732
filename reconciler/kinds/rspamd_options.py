"""Rspamd's global options: `rspamd.options.common` in mailserver.yaml,
`rspamd/override.d/options.inc` (what DMS's `set-common-option NAME VALUE` writes at start-up).
"""

from __future__ import annotations

from dataclasses import replace

from reconciler.formats import rspamd_ucl
from reconciler.kinds import rspamd_files
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext
from reconciler.kinds.checks import DocView, Reporter, section
from reconciler.model import Rspamd
from reconciler.plan import Kind

NAME = "rspamd_options"
FILE = rspamd_ucl.file_name("options.inc")


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    want = {
        option: rspamd_ucl.Item(option, rspamd_ucl.ucl_value(value))
        for option, value in ctx.desired.rspamd.common
    }
    fp = rspamd_files.plan_override(ctx, out, FILE, want, Kind.RSPAMD_OPTION)
    if fp is not None and fp.write:
        out.notes.append(
            f"{FILE}: {rspamd_files.RELOAD}; Rspamd reads the global options at that reload"
        )
    return out


def check(report: Reporter, view: DocView) -> None:
    common = section(section(section(view.doc, "rspamd"), "options"), "common")
    _check_options(report, ("rspamd", "options", "common"), common)


def _check_options(
    report: Reporter, path: tuple[str | int, ...], options: dict[str, object]
) -> None:
    import re

    for option, value in options.items():
        where = (*path, option)
        if not re.match(r"^[a-z][a-z0-9_]*$", str(option)):
            report.error(
                where,
                f"option name '{option}' is not an Rspamd option name (lowercase letters, "
                "digits and _, starting with a letter)",
                key=True,
            )
        elif isinstance(value, str) and (problem := rspamd_ucl.value_problem(value)):
            report.error(where, f"value of '{option}' {problem}")


def export(ctx: ExportContext) -> None:
    parsed = ctx.observed.rspamd_files.get(FILE)
    found = []
    if parsed is not None:
        for key, item in parsed.entries.items():
            value = rspamd_ucl.scalar(item.value) if item.value is not None else None
            if value is None:
                ctx.warnings.append(f"{FILE}: '{key}' left unmanaged: not a simple value")
            else:
                found.append((key, value))
    ctx.fields["rspamd"] = replace(
        ctx.fields.get("rspamd") or Rspamd(), common=tuple(sorted(found))
    )

"""Rspamd modules on and off, and their options: `rspamd.modules` and `rspamd.options.module` in
mailserver.yaml, one `rspamd/override.d/<module>.conf` per module.

DMS's `enable-module`/`disable-module` and `set-option-for-module` directives write exactly these
files, but into /etc/rspamd/override.d/ at start-up only: on DMS v16 any later change under
rspamd/override.d/ empties that folder and copies back the volume's files, so what the directives
made is gone, and re-running them fails (`__rspamd__helper__enable_disable_module: command not
found`). Written on the volume, `enabled = false;` and the options last through every change.
One module's switch and options share its file, so one kind owns both.
"""

from __future__ import annotations

from dataclasses import replace

from reconciler.formats import rspamd_ucl
from reconciler.kinds import rspamd_files
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext
from reconciler.kinds.checks import DocView, Reporter, section, suggest
from reconciler.model import Rspamd
from reconciler.plan import Kind

NAME = "rspamd_modules"
OPTION = r"^[a-z][a-z0-9_]*$"


def module_of(name: str) -> str | None:
    """`rspamd/override.d/rbl.conf` -> `rbl` when it is a module's or section's file."""
    prefix = rspamd_ucl.DIRECTORY + "/"
    if not name.startswith(prefix) or not name.endswith(".conf"):
        return None
    module = name[len(prefix) : -len(".conf")]
    return module if module in rspamd_ucl.OPTION_SECTIONS else None


def wanted(r: Rspamd) -> dict[str, dict[str, rspamd_ucl.Item]]:
    out: dict[str, dict[str, rspamd_ucl.Item]] = {}
    for module, on in [*((m, True) for m in r.enable), *((m, False) for m in r.disable)]:
        out.setdefault(module, {})["enabled"] = rspamd_ucl.Item("enabled", rspamd_ucl.ucl_value(on))
    for module, options in r.module_options:
        items = out.setdefault(module, {})
        for option, value in options:
            items[option] = rspamd_ucl.Item(option, rspamd_ucl.ucl_value(value))
    return out


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    want = wanted(ctx.desired.rspamd)
    files = {rspamd_ucl.file_name(m + ".conf"): m for m in want}
    for name in ctx.observed.ownership.entries:
        module = module_of(name)
        if module is not None:
            files.setdefault(name, module)
    signing = rspamd_ucl.file_name("dkim_signing.conf")
    if ctx.desired.dkim_signer == "rspamd" or (
        "dkim_signing" not in want and "domain" in ctx.owned(signing)
    ):  # kinds/rspamd_dkim.py writes it (and removes what it wrote there)
        files.pop(signing, None)
    switched: list[str] = []
    optioned: list[str] = []
    for name, module in sorted(files.items()):
        fp = rspamd_files.plan_override(
            ctx,
            out,
            name,
            want.get(module, {}),
            Kind.RSPAMD_MODULE,
            kind_of=lambda key, entry: (
                Kind.RSPAMD_MODULE if key == "enabled" else Kind.RSPAMD_OPTION
            ),
        )
        if fp is not None and fp.write:
            (switched if "enabled" in want.get(module, {}) else optioned).append(module)
    for change in out.changes:
        if change.key != "enabled" and change.kind is Kind.RSPAMD_MODULE:
            out.changes[out.changes.index(change)] = replace(change, kind=Kind.RSPAMD_OPTION)
    if switched or optioned:
        modules = ", ".join(sorted({*switched, *optioned}))
        out.notes.append(
            f"override.d files of {modules}: {rspamd_files.RELOAD}; Rspamd loads or skips the "
            "modules and reads their options at that reload (`rspamadm configdump "
            "--modules-state` shows it). These files last through later changes, unlike "
            "custom-commands.conf's directives"
        )
    return out


def check(report: Reporter, view: DocView) -> None:
    """Module names Rspamd reads from override.d; option names and values that stay one UCL
    line; no module both on and off."""
    rspamd = section(view.doc, "rspamd")
    modules = section(rspamd, "modules")
    state: dict[str, str] = {}
    for switch in ("enable", "disable"):
        value = modules.get(switch)
        for j, module in enumerate(value if isinstance(value, list) else []):
            if not isinstance(module, str):
                continue
            path = ("rspamd", "modules", switch, j)
            if problem := module_problem(module, rspamd_ucl.MODULES):
                report.error(path, problem)
            elif module in state and state[module] != switch:
                report.error(path, f"module '{module}' is both enabled and disabled")
            state.setdefault(module, switch)
    for module, options in section(section(rspamd, "options"), "module").items():
        where: tuple[str | int, ...] = ("rspamd", "options", "module", module)
        if problem := module_problem(module, rspamd_ucl.OPTION_SECTIONS):
            report.error(where, problem, key=True)
            continue
        if isinstance(options, dict):
            check_options(report, where, options)


def module_problem(module: str, known: frozenset[str]) -> str | None:
    if module == "multimap":
        return (
            "module 'multimap' holds the sender lists (rspamd.senders, override.d/multimap.conf); "
            "it is not switched or set here"
        )
    if module in known:
        return None
    if "/" in module or ".." in module or "\\" in module:
        return f"module '{module}' is a path; give a module name such as rbl or dkim_signing"
    return f"'{module}' is not a module Rspamd 3.12 reads from override.d" + (
        suggest(module, known) or "; see `rspamadm configdump --modules-state`"
    )


def check_options(
    report: Reporter, path: tuple[str | int, ...], options: dict[str, object]
) -> None:
    import re

    for option, value in options.items():
        where = (*path, option)
        if not isinstance(option, str) or not re.match(OPTION, option):
            report.error(
                where,
                f"option name '{option}' is not an Rspamd option name (lowercase letters, "
                "digits and _, starting with a letter)",
                key=True,
            )
        elif option == "enabled":
            report.error(
                where, "switch modules with rspamd.modules enable/disable, not an option", key=True
            )
        elif isinstance(value, str) and (problem := rspamd_ucl.value_problem(value)):
            report.error(where, f"value of '{option}' {problem}")


def export(ctx: ExportContext) -> None:
    """Module files holding only `enabled` and simple scalar options."""
    enable: list[str] = []
    disable: list[str] = []
    options: list[tuple[str, tuple[tuple[str, str | int | float | bool], ...]]] = []
    for name, parsed in sorted(ctx.observed.rspamd_files.items()):
        module = module_of(name)
        if module is None or module == "multimap":
            continue
        values: dict[str, str | int | float | bool] = {}
        simple = not parsed.invalid
        for key, item in parsed.entries.items():
            value = rspamd_ucl.scalar(item.value) if item.value is not None else None
            if value is None:
                simple = False
                break
            values[key] = value
        if not simple:
            ctx.warnings.append(f"{name}: left unmanaged: not only simple `name = value;` settings")
            continue
        switch = values.pop("enabled", None)
        if switch is True and module in rspamd_ucl.MODULES:
            enable.append(module)
        elif switch is False and module in rspamd_ucl.MODULES:
            disable.append(module)
        if values:
            options.append((module, tuple(sorted(values.items()))))
    ctx.fields["rspamd"] = replace(
        ctx.fields.get("rspamd") or Rspamd(),
        enable=tuple(enable),
        disable=tuple(disable),
        module_options=tuple(options),
    )

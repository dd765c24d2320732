"""`rspamd/custom-commands.conf`: the directive lines a declaration replaces are removed; every
other line is the user's and is kept as it is.

The rspamd_* kinds write override files, never directive lines (see formats/rspamd_commands.py
for why: on DMS v16 what the directives make lasts only until the next change under
rspamd/override.d/). A directive that sets what mailserver.yaml now declares would, at the next
start-up, overwrite the declared value in /etc/rspamd/override.d/ (enable-/disable-module even
rewrite the whole module file, options included): such lines are removed, and the plan says
which declaration replaced each. Runs after the other Rspamd kinds and reads what they own.
"""

from __future__ import annotations

from reconciler.formats import rspamd_commands, rspamd_ucl
from reconciler.kinds import rspamd_files
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext
from reconciler.kinds.checks import DocView, Reporter
from reconciler.plan import Action, Change, Kind

NAME = "rspamd_commands"
FILE = rspamd_commands.FILENAME
PREFIX = rspamd_ucl.DIRECTORY + "/"


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    current = ctx.observed.rspamd_commands
    if current is None:
        return out
    declared: dict[str, set[str]] = {}  # override file -> the items declared there
    writes_overrides = False
    for result in ctx.results.values():
        for name, keys in result.owned.items():
            if name.startswith(PREFIX) and keys:
                declared.setdefault(name[len(PREFIX) :], set()).update(keys)
        writes_overrides |= any(f.write and f.name.startswith(PREFIX) for f in result.files)
    kept, removed, left = [], [], []
    for line in current.lines:
        d = line.directive
        reason = _replaced(d, declared) if d is not None else None
        if reason is None:
            kept.append(line)
            if d is not None:
                left.append(line)
            continue
        removed.append(line)
        out.changes.append(
            Change(
                FILE,
                Kind.RSPAMD_DIRECTIVE,
                line.text.strip(),
                Action.DELETE,
                {"value": f"line {line.number}"},
                None,
                reason=reason,
            )
        )
    for number, problem in current.problems():
        out.warnings.append(f"{FILE} line {number}: {problem}")
    content = rspamd_commands.render(kept, current.final_newline) if removed else None
    out.files.append(rspamd_files.file_plan(ctx, FILE, content))
    if left and (writes_overrides or removed):
        shown = ", ".join(str(line.number) for line in left[:8])
        out.warnings.append(
            f"{FILE} line{'s' if len(left) > 1 else ''} {shown}: after this change DMS's "
            "change detector replaces /etc/rspamd/override.d/ with the volume's files, so "
            "what these directives made at start-up is gone until DMS restarts (and on DMS "
            "v16 enable-/disable-module fail when the file itself changes); declare them in "
            "rspamd.modules or rspamd.options, or put them in rspamd/override.d/ files, to "
            "keep them"
        )
    return out


def _replaced(d: rspamd_commands.Directive, declared: dict[str, set[str]]) -> str | None:
    """Why a directive goes: the declaration that now sets the same thing (None: it stays)."""
    items = declared.get(d.target)
    if not items:
        return None
    where = f"override.d/{d.target}"
    if d.command in ("enable-module", "disable-module"):
        return (
            f"mailserver.yaml declares {where}, which lasts through DMS's change detector; at "
            f"start-up `{d.command}` would rewrite that whole file"
        )
    option = d.option
    if d.command == "add-line":
        item = rspamd_ucl.parse(d.value).entries
        option = next(iter(item), None)
    if option in items:
        return (
            f"mailserver.yaml declares '{option}' in {where}, which lasts through DMS's change "
            "detector; at start-up this line would overwrite it"
        )
    return None


def check(report: Reporter, view: DocView) -> None:
    """Nothing in mailserver.yaml is specific to this file."""


def export(ctx: ExportContext) -> None:
    """Directive lines into declarations: done by the kinds that own what they set, here only
    read and said (the next apply writes them as override files and removes the lines)."""
    current = ctx.observed.rspamd_commands
    if current is None:
        return
    from dataclasses import replace

    from reconciler.formats.rspamd_ucl import MODULES, OPTION_SECTIONS, scalar, value_problem
    from reconciler.model import Rspamd

    r = ctx.fields.get("rspamd") or Rspamd()
    enable, disable = dict.fromkeys(r.enable), dict.fromkeys(r.disable)
    common = dict(r.common)
    modules = {m: dict(o) for m, o in r.module_options}
    adopted = []
    for line in current.directives():
        d = line.directive
        assert d is not None
        module = d.target[: -len(".conf")] if d.target.endswith(".conf") else ""
        value = scalar(d.value) if d.option not in (None, "enabled") else None
        if isinstance(value, str) and value_problem(value):
            value = None
        if d.command in ("enable-module", "disable-module") and module in MODULES:
            (enable if d.command == "enable-module" else disable)[module] = None
            (disable if d.command == "enable-module" else enable).pop(module, None)
        elif d.command == "set-common-option" and value is not None and d.option:
            common[d.option] = value
        elif (
            d.command == "set-option-for-module" and module in OPTION_SECTIONS and value is not None
        ):
            modules.setdefault(module, {})[str(d.option)] = value
        else:
            ctx.warnings.append(
                f"{FILE} line {line.number}: left unmanaged: not expressible in rspamd:"
            )
            continue
        adopted.append(str(line.number))
    if adopted:
        ctx.warnings.append(
            f"{FILE} lines {', '.join(adopted)} adopted into rspamd: the next apply writes them "
            "as override.d files (which last through DMS's change detector) and removes the lines"
        )
    ctx.fields["rspamd"] = replace(
        r,
        enable=tuple(sorted(enable)),
        disable=tuple(sorted(disable)),
        common=tuple(sorted(common.items())),
        module_options=tuple(sorted((m, tuple(sorted(o.items()))) for m, o in modules.items())),
    )

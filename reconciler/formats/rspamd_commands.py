"""`rspamd/custom-commands.conf`: DMS's seven directive lines, read in order.

DMS (`_rspamd_handle_user_modules_adjustments`, helpers/rspamd.sh) reads the file with
`_get_valid_lines_from_file` (no blank lines, no `#` comments) and `read -r COMMAND ARG1 ARG2
ARG3`, so the last argument is the rest of the line:

    set-common-option         NAME VALUE     -> override.d/options.inc
    set-option-for-controller NAME VALUE     -> override.d/worker-controller.inc
    set-option-for-proxy      NAME VALUE     -> override.d/worker-proxy.inc
    enable-module             MODULE         -> override.d/MODULE.conf, whole: `enabled = true;`
    disable-module            MODULE         -> override.d/MODULE.conf, whole: `enabled = false;`
    set-option-for-module     MODULE NAME VALUE -> override.d/MODULE.conf
    add-line                  FILE LINE      -> appended to override.d/FILE

It runs them at start-up, after copying the volume's override.d/, and again when this file
changes; DMS v16's change detector then fails on enable-/disable-module (`__rspamd__helper__
enable_disable_module: command not found`), and any later change under override.d/ drops what
they made. The kinds therefore write override files and never add a directive line; this codec
reads the lines (export, and the lines a declaration replaces) and renders the file back byte
for byte without the lines the plan removes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

FILENAME = "rspamd/custom-commands.conf"
DIRECTIVES = (
    "set-common-option",
    "set-option-for-controller",
    "set-option-for-proxy",
    "enable-module",
    "disable-module",
    "set-option-for-module",
    "add-line",
)


@dataclass(frozen=True)
class Directive:
    """One directive line. `target` is the override file it writes (`options.inc`, `rbl.conf`,
    ...), `option` the option it sets (`enabled` for enable-/disable-module, None for add-line)."""

    command: str
    target: str
    option: str | None
    value: str  # the rest of the line (`true`/`false` for enable-/disable-module)

    @property
    def key(self) -> str:
        """What it sets: `<file> <option>` (add-line: `<file> +<line>`)."""
        return f"{self.target} {self.option if self.option is not None else '+' + self.value}"


@dataclass(frozen=True)
class Line:
    number: int
    text: str  # as in the file, without its line break
    directive: Directive | None  # None: blank, comment, or a line DMS warns about


@dataclass(frozen=True)
class CommandsFile:
    lines: tuple[Line, ...]
    final_newline: bool

    def directives(self) -> list[Line]:
        return [line for line in self.lines if line.directive is not None]

    def problems(self) -> list[tuple[int, str]]:
        return [
            (line.number, f"'{line.text.split()[0]}' is not one of DMS's directives; DMS warns")
            for line in self.lines
            if line.directive is None and _valid(line.text)
        ]


def _valid(text: str) -> bool:
    """DMS's `_get_valid_lines_from_file`: not blank, not a comment."""
    stripped = text.strip()
    return bool(stripped) and not stripped.startswith("#")


def read_directive(text: str) -> Directive | None:
    """A valid line as bash's `read -r COMMAND ARG1 ARG2 ARG3` splits it (None: unknown)."""
    parts = text.split(None, 3)
    if not parts or parts[0] not in DIRECTIVES:
        return None
    command, args = parts[0], parts[1:]
    if command in ("enable-module", "disable-module"):
        if not args:
            return None
        return Directive(
            command, f"{args[0]}.conf", "enabled", str(command == "enable-module").lower()
        )
    if command == "set-option-for-module":
        if len(args) < 3:
            return None
        return Directive(command, f"{args[0]}.conf", args[1], args[2].rstrip())
    if command == "add-line":
        if len(args) < 2:
            return None
        return Directive(command, args[0], None, " ".join(args[1:]).rstrip())
    target = {
        "set-common-option": "options.inc",
        "set-option-for-controller": "worker-controller.inc",
        "set-option-for-proxy": "worker-proxy.inc",
    }[command]
    if len(args) < 2:
        return None
    return Directive(command, target, args[0], " ".join(args[1:]).rstrip())


def parse(text: str) -> CommandsFile:
    raw = text.split("\n")
    final_newline = text.endswith("\n")
    if final_newline:
        raw = raw[:-1]
    lines = []
    for number, line in enumerate(raw, start=1):
        body = line.rstrip("\r")
        directive = read_directive(body) if _valid(body) else None
        lines.append(Line(number, line, directive))
    return CommandsFile(tuple(lines), final_newline)


def render(lines: Iterable[Line], final_newline: bool = True) -> str:
    """The lines as they were (a removed line is simply not given)."""
    texts = [line.text for line in lines]
    if not texts:
        return ""
    return "\n".join(texts) + ("\n" if final_newline else "")

"""amavis.cf: a Perl file owned by the user, with one block owned by us.

DMS copies amavis.cf to /etc/amavis/conf.d/50-user at container start. We own only the lines
between our BEGIN and END markers, which send quarantined mail to a mailbox (DMS FAQ "How can I send
quarantined mail to a mailbox?"); every other byte of the file is kept exactly. A new block goes
before the file's final `1;` (a Perl config file must end by returning true).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reconciler.formats._lines import RenderRefused

FILENAME = "amavis.cf"
BEGIN = (
    "# BEGIN dms-reconciler quarantine (managed from mailserver.yaml; edits here are overwritten)"
)
END = "# END dms-reconciler quarantine"
KINDS = ("spam", "virus", "banned", "bad_header")
# The value: what a Perl "string" holds literally, `@` written `\@` (no other escape, no `$`)
_SETTING = re.compile(r'\s*\$(\w+)_quarantine_to\s*=\s*"((?:[^"\\$@\n]|\\@)*)"\s*;\s*\Z')


@dataclass(frozen=True)
class AmavisFile:
    before: str  # everything before our block (or the whole file when there is no block)
    block: dict[str, str] | None  # kind -> mailbox, None when there is no block
    after: str  # everything after our block
    unreadable_block: bool = False  # a block with lines we do not understand: rewrite it
    broken_markers: bool = False  # BEGIN without END: where our block ends is unknown, hands off

    def __hash__(self) -> int:  # pragma: no cover - dataclass with a dict field
        return hash((self.before, tuple(sorted((self.block or {}).items())), self.after))


def parse(text: str) -> AmavisFile:
    start = _find_line(text, BEGIN, 0)
    if start < 0:
        return AmavisFile(text, None, "")
    end = _find_line(text, END, start)
    if end < 0:  # BEGIN without END: we cannot tell our lines from the user's
        return AmavisFile(text, None, "", broken_markers=True)
    body_start = text.index("\n", start) + 1
    block: dict[str, str] = {}
    bad = False
    for line in text[body_start:end].splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _SETTING.match(line)
        if match and match.group(1) in KINDS:
            block[match.group(1)] = match.group(2).replace("\\@", "@")
        else:
            bad = True
    end_of_end = text.find("\n", end)
    after = "" if end_of_end < 0 else text[end_of_end + 1 :]
    return AmavisFile(text[:start], block, after, unreadable_block=bad)


def _find_line(text: str, line: str, start: int) -> int:
    """Offset of `line` as a whole line in `text` at or after `start`, or -1."""
    pos = start
    while True:
        pos = text.find(line, pos)
        if pos < 0:
            return -1
        at_start = pos == 0 or text[pos - 1] == "\n"
        tail = text[pos + len(line) : pos + len(line) + 2]
        if at_start and (tail == "" or tail.startswith("\n") or tail == "\r\n"):
            return pos
        pos += len(line)


def render_block(block: dict[str, str]) -> str:
    lines = [BEGIN]
    for kind in KINDS:
        if kind in block:
            mailbox = block[kind].replace("@", "\\@")  # Perl would interpolate @example
            lines.append(f'${kind}_quarantine_to = "{mailbox}";')
    lines.append(END)
    return "\n".join(lines) + "\n"


def render(file: AmavisFile) -> str:
    """The file's text; refused (`RenderRefused`) when our block would not read back as the same
    settings and the user's text around it as the same bytes (see `_lines.render_lines`)."""
    if file.block is None:
        return file.before + file.after
    text = file.before + render_block(file.block) + file.after
    again = parse(text)
    if (again.block, again.before, again.after) != (file.block, file.before, file.after) or (
        again.unreadable_block
    ):
        wrong = [k for k in KINDS if (again.block or {}).get(k) != file.block.get(k)]
        kind = wrong[0] if wrong else None
        raise RenderRefused(
            FILENAME,
            f"${kind}_quarantine_to" if kind else None,
            "a mailbox holds a line break, quote or other character a Perl string cannot carry",
        )
    return text


def with_block(file: AmavisFile | None, block: dict[str, str] | None) -> AmavisFile:
    """`file` with our block set to `block` (None removes it); a missing file gets a minimal one."""
    if file is None:
        file = AmavisFile("", None, "")
    if file.broken_markers:
        raise ValueError("amavis.cf has a BEGIN marker without END")
    if file.block is not None:
        return AmavisFile(file.before, block, file.after)
    if block is None:
        return file
    text = file.before
    if not text:
        return AmavisFile("", block, "1;\n")
    final = _last_true_line(text)
    if final >= 0:  # split before the user's `1;` line: every byte of theirs stays as it is
        return AmavisFile(text[:final], block, text[final:])
    if not text.endswith("\n"):
        text += "\n"  # our block must start on a line of its own
    return AmavisFile(text, block, "1;\n")


def _last_true_line(text: str) -> int:
    """Offset of the last line that is `1;` (the Perl file's return value), or -1.

    A trailing comment is allowed: Debian's amavis conf.d files and DMS's own test `amavis.cf` end
    with `1;  # ensure a defined return`.
    """
    matches = list(re.finditer(r"(?m)^[ \t]*1;[ \t]*(?:#[^\r\n]*)?\r?$", text))
    return matches[-1].start() if matches else -1

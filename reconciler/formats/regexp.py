"""postfix-regexp.cf: regular-expression aliases, a Postfix pcre table: `/pattern/flags targets`.

DMS copies the file to /etc/postfix/regexp and appends `pcre:/etc/postfix/regexp` to
`virtual_alias_maps`, after `texthash:/etc/postfix/virtual` (postfix-virtual.cf); its change
detector watches it. The table is read top to bottom and the first matching pattern wins, so the
order of the entries is part of their meaning. A pattern is enclosed by a delimiter (we write
`/`; a `\\` escapes the next character, so a `/` inside the pattern is written `\\/`, and inside
`\\Q...\\E` as `\\E\\/\\Q`: see `delimit`), followed by optional flags (`i` makes the match
case-sensitive, the default being case-insensitive). Lines
starting with whitespace continue the previous line. `if /pattern/` ... `endif` blocks and lines
we cannot read are kept as they are, after the entries.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.formats._lines import (
    HEADER,
    ParsedFile,
    Problem,
    is_comment,
    logical_lines,
    render_lines,
    unreadable_characters,
)

FILENAME = "postfix-regexp.cf"
FLAGS = "imsxAEUX"  # what Postfix's dict_pcre reads after the closing delimiter


@dataclass(frozen=True)
class RegexpLine:
    pattern: str  # between the delimiters, as written (escapes kept)
    flags: str
    targets: tuple[str, ...]
    delimiter: str = "/"

    @property
    def key(self) -> str:
        """What identifies the entry: the pattern and its flags, as Postfix compiles them."""
        return f"/{self.pattern}/{self.flags}" if self.delimiter == "/" else self.written_key

    @property
    def written_key(self) -> str:
        return f"{self.delimiter}{self.pattern}{self.delimiter}{self.flags}"


def delimit(pattern: str) -> str:
    """`pattern` as written between `/` delimiters, meaning to PCRE exactly what `pattern` means.

    Postfix (dict_pcre) finds the closing delimiter by skipping each `\\` with the character after
    it, and hands the text in between to PCRE unchanged: it removes no `\\`. So a bare `/` is
    written `\\/`, which PCRE reads as `/`; but inside `\\Q...\\E` PCRE would read `\\/` as two
    characters (Postfix would match `a\\/b`), so there the quote is closed around it: `\\E\\/\\Q`.
    A pattern ending inside an open quote on a `\\` that would escape the closing `/` gets `\\E`.
    Checked with Postfix's own `postmap -q` (tests/kinds/test_hardening_export.py)."""
    quoted = _quoted_positions(pattern) if "\\Q" in pattern else frozenset()
    out: list[str] = []
    escaped = False  # Postfix's scan: the previous character is a `\\` that escapes this one
    for position, char in enumerate(pattern):
        if char == "/" and not escaped:
            out.append("\\E\\/\\Q" if position in quoted else "\\/")
            continue
        out.append(char)
        escaped = char == "\\" and not escaped
    if escaped:  # only inside an open quote: elsewhere PCRE refuses a pattern ending in `\\`
        out.append("\\E")
    return "".join(out)


def _quoted_positions(pattern: str) -> frozenset[int]:
    """Positions of the characters PCRE takes literally between `\\Q` and `\\E` (or the end).
    Inside a quote only `\\E` is special; outside, a `\\` escapes the next character."""
    out: set[int] = set()
    position, quoted = 0, False
    while position < len(pattern):
        if quoted:
            if pattern.startswith("\\E", position):
                quoted, position = False, position + 2
            else:
                out.add(position)
                position += 1
        elif pattern.startswith("\\Q", position):
            quoted, position = True, position + 2
        else:
            position += 2 if pattern[position] == "\\" else 1
    return frozenset(out)


# --- self-routes: an account's own mail kept from its domain's catch-all ------------------------
#
# Postfix looks a recipient up in every virtual_alias_maps table with the full address, then (with
# DMS's `recipient_delimiter = +`) in the fixed tables only with `+extension` stripped, then
# `@domain`. A self-alias `a@d a@d` in postfix-virtual.cf caught both of the first two; as patterns
# here, the full address goes first (before every other pattern, where postfix-virtual.cf stood)
# and `a+ext@d` last (after every other pattern, where the stripped lookup came). DMS turns no
# line of this file into a Dovecot login (its alias dummy accounts read postfix-virtual.cf only).


_NOT_LITERAL = re.compile(r"[^A-Za-z0-9]")


def _literal(text: str) -> str:
    """`text` as a PCRE literal: every character but ASCII letters and digits escaped."""
    return _NOT_LITERAL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    return "\\" + match.group()


def self_route(address: str) -> RegexpLine:
    """`/^a@d$/ a@d`: the full address, to itself."""
    local, _, domain = address.rpartition("@")
    return RegexpLine(f"^{_literal(local)}@{_literal(domain)}$", "", (address,))


def self_route_extension(address: str) -> RegexpLine:
    """`/^a\\+(.*)@d$/ a+${1}@d`: an address extension, kept (as Postfix keeps an unmatched one)."""
    local, _, domain = address.rpartition("@")
    pattern = f"^{_literal(local)}\\+(.*)@{_literal(domain)}$"
    return RegexpLine(pattern, "", (f"{local}+${{1}}@{domain}",))


def self_route_of(entry: RegexpLine) -> tuple[str, bool] | None:
    """(address, whether it is the extension form) when `entry` is exactly one of the two lines
    `self_route`/`self_route_extension` make for an address, else None."""
    if len(entry.targets) != 1 or entry.flags or entry.delimiter != "/":
        return None
    target = entry.targets[0]
    local, at, domain = target.rpartition("@")
    if not at:
        return None
    if local.endswith("+${1}"):
        address = local[: -len("+${1}")] + "@" + domain
        return (address, True) if entry == self_route_extension(address) else None
    return (target, False) if entry == self_route(target) else None


def split_pattern(line: str) -> tuple[str, str, str, str] | str:
    """(delimiter, pattern, flags, rest) of a table line, as dict_pcre reads it."""
    delimiter = line[0]
    if delimiter.isalnum() or delimiter.isspace() or delimiter == "\\":
        return "not `/pattern/ target`; Postfix cannot read this line"
    position = _up_to_delimiter(delimiter).match(line, 1).end()  # type: ignore[union-attr]
    if position >= len(line) or line[position] != delimiter:
        return "the pattern has no closing delimiter; Postfix cannot read this line"
    pattern = line[1:position]
    rest = line[position + 1 :]
    flags = ""
    while rest and not rest[0].isspace():
        flags += rest[0]
        rest = rest[1:]
    if any(f not in FLAGS for f in flags):
        return f"unknown pattern flag in '{flags}'; Postfix cannot read this line"
    return delimiter, pattern, flags, rest.strip()


@functools.lru_cache(maxsize=64)
def _up_to_delimiter(delimiter: str) -> re.Pattern[str]:
    """The pattern's text as dict_pcre scans it: each `\\` skips the character after it, and the
    first `delimiter` not so skipped closes it (a `\\` with nothing after it closes nothing)."""
    return re.compile(rf"(?:[^\\{re.escape(delimiter)}]|\\.)*", re.DOTALL)


def _targets(rest: str) -> tuple[str, ...]:
    return tuple(t for t in rest.replace(",", " ").split() if t)


def _read(line: str) -> tuple[str, RegexpLine] | str:
    """(key, entry) of a non-comment line outside `if` blocks, or why it is not one. A line
    opening or closing a block is not an entry: `parse` keeps it (and `render` checks each entry's
    line with this reader alone)."""
    if line.split(None, 1)[:1] in (["if"], ["!if"], ["endif"]):
        return "an `if` block line; kept as it is"
    if line[:1].isspace():
        return "line starts with whitespace but continues nothing"
    split = unreadable_characters(line) or split_pattern(line)
    if isinstance(split, str):
        return split
    delimiter, pattern, flags, rest = split
    targets = _targets(rest)
    if not targets:
        return "regexp alias has a pattern but no target"
    entry = RegexpLine(pattern, flags, targets, delimiter)
    return entry.key, entry


def parse(text: str) -> ParsedFile[RegexpLine]:
    """Entries by key in file order (the first of duplicates wins, as in Postfix), comments, and
    the lines kept verbatim: `if`/`endif` blocks and lines Postfix cannot read."""
    entries: dict[str, RegexpLine] = {}
    comments: list[str] = []
    kept: list[str] = []
    problems: list[Problem] = []
    depth = 0
    for number, line in logical_lines(text, continuation=True):
        if is_comment(line):
            if line.strip() != HEADER:
                comments.append(line.rstrip())
            continue
        word = line.split(None, 1)[0]
        if word == "if" or word == "!if" or depth:
            depth += word in ("if", "!if")
            depth -= word == "endif"
            depth = max(depth, 0)
            kept.append(line)
            continue
        if word == "endif":
            kept.append(line)
            problems.append(Problem(number, "'endif' without 'if'; Postfix ignores it"))
            continue
        read = _read(line)
        if isinstance(read, str):
            kept.append(line)
            problems.append(Problem(number, read))
            continue
        entry = read[1]
        if entry.key in entries:
            problems.append(
                Problem(number, f"duplicate pattern {entry.key}; only the first one is used")
            )
            continue
        entries[entry.key] = entry
    return ParsedFile(entries, tuple(comments), tuple(kept), tuple(problems))


def line_of(entry: RegexpLine) -> str:
    return f"{entry.written_key} {','.join(entry.targets)}"


def render(
    entries: Iterable[RegexpLine], *, comments: Iterable[str] = (), invalid: Iterable[str] = ()
) -> str:
    """Entries in the order given (first match wins), then the kept lines in their order (those
    starting with whitespace first: they must continue nothing)."""
    return render_lines(
        entries,
        line_of,
        parse=parse,
        read=_read,
        filename=FILENAME,
        comments=comments,
        invalid=invalid,
        continuation=True,
    )

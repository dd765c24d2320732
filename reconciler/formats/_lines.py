"""What every line-per-entry DMS file has in common.

DMS drops blank lines and lines whose first non-blank character is `#`; there are no inline
comments (`helpers/utils.sh:_get_valid_lines_from_file`). It turns CRLF into LF and appends a missing
final newline itself, and the first of two lines with the same key is the one that counts. A codec
parses a file into a `ParsedFile`: the entries by key (first wins), the user's comment lines, the
lines it could not read (kept verbatim, never dropped), and problems with their line numbers.
Rendering is canonical: our header, the user's comments, the entries in the order DMS's greps
need, the unreadable lines, LF endings and one final newline.

Rendering is also the last line of defence: `render_lines` reads what it rendered back with the
codec's own reader and refuses (`RenderRefused`, before anything is written) when that does not
give back exactly the entries, comments and kept lines it was given. A value holding a line
break, a NUL, a CR or a separator the validator should have refused can then never become a
second line, an extra entry or another value in a file DMS and Postfix read. Each entry's line is
read alone with the codec's single-line reader, and only the rest of the file (header, comments,
kept lines, one entry) with the whole-file `parse` (`check_by_line` says why that is the same). A line holding a
NUL or a CR (other than a CRLF ending) is never read as an entry: Postfix stops reading a value
at a NUL, takes a CR for a blank and DMS deletes every CR of a CRLF file, so what such a line
means depends on who reads it. It is kept as it is, as an unreadable line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from reconciler.errors import Refused, printable

E = TypeVar("E")

HEADER = "# Managed by dms-reconciler from mailserver.yaml. Declared entries are overwritten, others are kept."


@dataclass(frozen=True)
class Problem:
    """Something odd in a file on the volume: reported in the plan, never fatal."""

    line: int
    message: str


class RenderRefused(Refused):
    """A codec was given a value that would not read back as the same entry: an internal
    refusal (validation lets no such value through), raised before anything is written."""

    def __init__(self, filename: str, key: str | None, why: str) -> None:
        what = f"the entry '{key}'" if key is not None else "a kept line"
        super().__init__(
            printable(
                f"internal refusal: {filename}: {what} would not read back as written ({why}); "
                "nothing was written. This is a bug in dms-reconciler or a value that bypassed "
                "validation: please report it"
            )
        )
        self.filename = filename
        self.key = key


def unreadable_characters(line: str, *, keep_cr: bool = False) -> str | None:
    """Why a line holding a NUL or a CR is not read as an entry (see the module docstring).

    With `keep_cr` (a file DMS reads without its CRLF fix) only CRs that end the line are part
    of its value; elsewhere a CR is refused all the same."""
    if "\0" in line:
        return "line holds a NUL byte, where Postfix stops reading; kept as it is"
    if "\r" in (line.rstrip("\r") if keep_cr else line):
        return (
            "line holds a carriage return, which Postfix reads as a blank and DMS deletes; "
            "kept as it is"
        )
    return None


@dataclass(frozen=True)
class ParsedFile(Generic[E]):
    entries: dict[str, E]  # normalised key -> entry, in file order; the first of duplicates wins
    comments: tuple[str, ...] = ()  # the user's comment lines (our header is not one of them)
    invalid: tuple[str, ...] = ()  # lines no reader understands, kept as they are
    problems: tuple[Problem, ...] = ()
    # later lines repeating a key: (line, line of the first, key, entry). A rewrite drops them
    # (DMS never used them), so the plan lists each as deleted.
    duplicates: tuple[tuple[int, int, str, E], ...] = ()


# What a codec says of a whitespace-led line with nothing to continue (see `logical_lines`).
ORPHAN = (
    "line starts with whitespace but no entry comes before it; Postfix ignores it "
    '("logical line must not start with whitespace")'
)


def logical_lines(
    text: str, *, continuation: bool = False, keep_cr: bool = False
) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line, CR stripped unless `keep_cr`.

    `keep_cr` is for files DMS reads without its CRLF fix (dovecot-quotas.cf): there a CR is
    part of the value DMS hands on, not formatting.

    With `continuation`, a line starting with whitespace continues the previous one, as in
    Postfix tables and aliases(5). As in Postfix's `readllines`, a comment line between an entry
    and its continuation does not end the entry (`postmap -q` confirms it), so the comment is
    yielded first and the entry keeps collecting. A whitespace-led line with nothing to continue
    (at the top of the file) is yielded as it is; codecs refuse it, and `render_lines` puts such
    lines before the entries, where they cannot continue an entry we manage.
    """
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(text.split("\n"), start=1):
        # CRLF, and stray CRs DMS would strip (sed s|\r||g) anyway; kept where DMS keeps them
        line = raw if keep_cr else raw.rstrip("\r")
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if pending and not continuation:
                yield pending
                pending = None
            yield number, line
            continue
        if continuation and line[0].isspace() and pending is not None:
            pending = (pending[0], pending[1] + " " + stripped)
            continue
        if pending:
            yield pending
        pending = (number, line)
    if pending:
        yield pending


def is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def parse_lines(
    text: str,
    read: Callable[[str], tuple[str, E] | tuple[str, E, str] | str],
    *,
    continuation: bool = False,
    what: str = "entry",
    header: str = HEADER,
    keep_cr: bool = False,
    check_characters: bool = True,
) -> ParsedFile[E]:
    """Split `text` into entries with `read(line)`.

    `read` returns `(key, entry)`, `(key, entry, warning)` for a readable but suspicious line, or
    a sentence saying why the line cannot be read. Unless `check_characters` is off, a line
    holding a NUL or a CR is not handed to `read` (see `unreadable_characters`).
    """
    entries: dict[str, E] = {}
    first_line: dict[str, int] = {}
    comments: list[str] = []
    invalid: list[str] = []
    problems: list[Problem] = []
    duplicates: list[tuple[int, int, str, E]] = []
    for number, line in logical_lines(text, continuation=continuation, keep_cr=keep_cr):
        first = line[0]  # logical lines are never empty; most start with the key
        if first == "#" or (first.isspace() and is_comment(line)):
            if line.strip() != header:
                comments.append(line.rstrip())
            continue
        result = (check_characters and unreadable_characters(line, keep_cr=keep_cr)) or read(line)
        if isinstance(result, str):
            invalid.append(line)
            problems.append(Problem(number, result))
            continue
        key, entry = result[0], result[1]
        if len(result) == 3:
            problems.append(Problem(number, result[2]))
        if key in entries:
            problems.append(
                Problem(
                    number,
                    f"duplicate {what} '{key}' (first on line {first_line[key]}); "
                    "only the first one is used",
                )
            )
            duplicates.append((number, first_line[key], key, entry))
            continue
        entries[key] = entry
        first_line[key] = number
    return ParsedFile(entries, tuple(comments), tuple(invalid), tuple(problems), tuple(duplicates))


def render_lines(
    entries: Iterable[E],
    line_of: Callable[[E], str],
    *,
    parse: Callable[[str], ParsedFile[E]],
    filename: str,
    comments: Iterable[str] = (),
    invalid: Iterable[str] = (),
    header: str = HEADER,
    continuation: bool = False,
    read: Callable[[str], tuple[str, E] | tuple[str, E, str] | str] | None = None,
    keep_cr: bool = False,
    check_characters: bool = True,
) -> str:
    """Header, comments, entries (already in order), unreadable lines; LF and a final newline.

    With `continuation`, unreadable lines that start with whitespace go before the entries: there
    they continue nothing (Postfix ignores them, as it did where they were), while after an entry
    Postfix would read them as more targets of that entry.

    The text is read back and refused with `RenderRefused` unless it gives back exactly
    `entries`, `comments` and `invalid` (see the module docstring): with `read` (the codec's
    single-line reader, and the `keep_cr` and `check_characters` its `parse` passes to
    `parse_lines`) line by line, else with `parse` on the whole text.
    """
    entries = list(entries)
    comments = list(comments)
    invalid = [line.rstrip("\r") for line in invalid]  # a `keep_cr` file's lines: LF only
    indented = [line for line in invalid if continuation and line[:1].isspace()]
    rest = [line for line in invalid if not (continuation and line[:1].isspace())]
    lines = [line_of(e) for e in entries]
    before = [header, *comments, *indented] if header else [*comments, *indented]
    out = [*before, *lines, *rest]  # an empty header: OpenDKIM's tables, where none is read
    text = "\n".join(out) + "\n" if out else ""
    kept = [*indented, *rest]
    if read is None or not check_by_line(
        text,
        len(out),
        parse,
        read,
        entries,
        lines,
        before,
        rest,
        comments,
        kept,
        continuation=continuation,
        keep_cr=keep_cr,
        check_characters=check_characters,
    ):
        # the whole-file check decides, and names the entry it refuses
        check_round_trip(filename, text, parse, entries, comments, kept)
    return text


def check_by_line(
    text: str,
    count: int,
    parse: Callable[[str], ParsedFile[E]],
    read: Callable[[str], tuple[str, E] | tuple[str, E, str] | str],
    entries: list[E],
    lines: list[str],
    before: list[str],
    rest: list[str],
    comments: list[str],
    invalid: list[str],
    *,
    continuation: bool,
    keep_cr: bool,
    check_characters: bool,
) -> bool:
    """True when `parse(text)` is sure to give back exactly `entries`, `comments` and `invalid`
    (what `check_round_trip` checks), found without parsing the whole text; False when unsure.

    Why it is the same: `text` holds `count` line breaks, so its lines are exactly `before`,
    `lines` and `rest`, one each. An entry line is neither blank nor a comment nor (with
    `continuation`) starts with whitespace, and the lines of `rest` do not start with whitespace
    either, so no line after the first entry line joins another into one logical line, and no
    entry line joins the one before it. `parse_lines` reads each logical line on its own: whether
    it is a comment, an unreadable line or an entry depends on that line alone, plus the keys
    seen before it (for duplicates). So the whole text reads as `before` and `rest` read around
    one entry (the skeleton, parsed here with `parse` itself: also any state a codec's own parse
    keeps, such as postfix-regexp.cf's open `if` blocks, shows there, as that entry would not read
    back) plus every entry line read alone, as `parse_lines` reads it, with no two keys alike.
    tests/formats/test_render_check.py checks that this never says True where
    `check_round_trip` refuses.
    """
    if text.count("\n") != count:
        return False  # a value holds a line break
    skeleton = [*before, *lines[:1], *rest]
    again = parse("\n".join(skeleton) + "\n" if skeleton else "")
    if (
        list(again.entries.values()) != entries[:1]
        or list(again.comments) != comments
        or list(again.invalid) != invalid
    ):
        return False
    # Without a CR or NUL anywhere, no line needs `logical_lines`' CR stripping or the check of
    # `unreadable_characters`; an entry line that starts with neither a blank nor `#` is neither
    # blank nor a comment: the common case costs the reader and one comparison per line.
    plain = "\r" not in text and "\0" not in text
    keys: set[str] = set()
    for entry, line in zip(entries, lines, strict=True):
        if not plain:
            if not keep_cr:
                line = line.rstrip("\r")
            if check_characters and unreadable_characters(line, keep_cr=keep_cr):
                return False
        first = line[:1]
        if not first or first == "#":
            return False
        if first.isspace() and (continuation or not line.strip() or is_comment(line)):
            return False
        result = read(line)
        if isinstance(result, str) or result[1] != entry or result[0] in keys:
            return False
        keys.add(result[0])
    return True


def check_round_trip(
    filename: str,
    text: str,
    parse: Callable[[str], ParsedFile[E]],
    entries: list[E],
    comments: list[str],
    invalid: list[str],
) -> None:
    """Raise `RenderRefused` unless `parse(text)` gives back exactly what was rendered.

    Unreadable lines are compared by their words: two that start with whitespace may read back
    as one (the second continues the first, where both continue nothing, as before)."""
    parsed = parse(text)
    got = list(parsed.entries.values())
    if (
        got == entries
        and list(parsed.comments) == comments
        and (list(parsed.invalid) == invalid or _words(parsed.invalid) == _words(invalid))
    ):
        return
    for i, entry in enumerate(entries):
        if i >= len(got) or got[i] != entry:
            # Entries are written and read in the same order: the first one that differs is the
            # one whose line broke (an injected line comes right after it).
            raise RenderRefused(filename, entry_key(entry), _why(entry))
    if len(got) > len(entries):
        raise RenderRefused(filename, entry_key(entries[-1]), _why(entries[-1]))
    raise RenderRefused(filename, None, "a comment or unreadable line would read differently")


def _words(lines: Iterable[str]) -> list[str]:
    return [word for line in lines for word in line.split()]


def entry_key(entry: Any) -> str:
    """What names an entry in a message: never a value (that may be a password or a hash)."""
    for attribute in ("key", "address", "name"):
        value = getattr(entry, attribute, None)
        if isinstance(value, str):
            return value
    return type(entry).__name__


def _why(entry: Any) -> str:
    """Which kind of character broke the entry's line (never the value itself)."""
    values: list[str] = []
    for value in vars(entry).values():
        values.extend(
            v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, str)
        )
    for char, name in (("\n", "a line break"), ("\r", "a carriage return"), ("\0", "a NUL byte")):
        if any(char in v for v in values):
            return f"a value holds {name}"
    return "a value holds a blank, separator or other character that ends or splits it here"


def grep_safe_order(address: str) -> tuple[int, int, str]:
    """Sort key that puts each exact line before any longer line an unanchored grep could match.

    DMS looks accounts and quotas up with `grep "<address>"` / `grep -i "<address>:"`, unanchored and
    with `.` as a wildcard; it takes the first match. Shorter addresses first, and among equal
    lengths more dots first, so `al@d` comes before `pal@d` and `a.b@d` before `axb@d`.
    """
    return (len(address), -address.count("."), address)

"""A YAML loader that remembers where every value came from and refuses hostile input.

PyYAML's `safe_load` silently keeps the last of two duplicate keys, expands aliases without limit
and forgets positions. This loader builds plain Python values from libyaml's event stream (the C
parser when present) iteratively, so it also survives deep nesting, and records the line and column
of every key and value. It refuses: duplicate keys, non-string keys, alias expansion beyond a
budget (the "billion laughs" bomb), files over `MAX_BYTES`, non-UTF-8 bytes, NUL bytes, more than
one document and a document that is not a mapping.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from reconciler.errors import Diagnostic, Path, format_path, printable

try:  # libyaml's C parser is several times faster; fall back to pure Python where absent.
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

MAX_BYTES = 32 * 1024 * 1024  # 10,000 accounts and 20,000 aliases take about 2 MB
MAX_DEPTH = 64  # mailserver.yaml nests four levels deep; anything deeper is an attack or a mistake
MAX_EXPANDED_NODES = 2_000_000  # values after alias expansion; about 40x the largest real file


_RESOLVER = yaml.resolver.Resolver()
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("int", "float", "bool", "null", "timestamp")
)
_SEQ = "tag:yaml.org,2002:seq"
_SIMPLE_PLAIN = re.compile(r"[A-Za-z_@][A-Za-z0-9_./@ -]*\Z")
_BOOL_WORDS = {"yes", "no", "true", "false", "on", "off", "y", "n", "null", "~"}
_NUMBER_TAGS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})
# Numbers that mean the same in YAML 1.1 and 1.2: no leading zero, base prefix, `_` or `:`.
_PLAIN_NUMBER = re.compile(
    r"[-+]?((0|[1-9][0-9]*)(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?\Z"
    r"|[-+]?\.(inf|Inf|INF)\Z|\.(nan|NaN|NAN)\Z"
)


class YamlLoadError(Exception):
    """The file could not be turned into values; carries positioned diagnostics."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__("; ".join(d.format() for d in diagnostics))
        self.diagnostics = diagnostics


# (marks, key_marks) of one entry, as in `Document`, keyed from the entry's own key down.
EntryPositions = tuple[dict[Path, tuple[int, int]], dict[Path, tuple[int, int]]]


@dataclass
class Document:
    """Plain values plus the position of each (`marks`) and of each mapping key (`key_marks`).

    `load_yaml_bytes` leaves the two position tables empty and fills them on first use (by
    reading the text again), because a valid file never needs them: recording 150,000 positions
    for 10,000 accounts cost 15% of the load and 25 MB.
    """

    value: Any
    filename: str
    marks: dict[Path, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path, tuple[int, int]] = field(default_factory=dict)
    problems: list[Diagnostic] = field(default_factory=list)
    # An empty value whose next line starts in its key's column (the lines meant to belong to
    # the key were not indented): path -> that line's number. Filled with the positions.
    unindented: dict[Path, int] = field(default_factory=dict)
    _unread_text: str | None = field(default=None, repr=False, compare=False)
    plain: bool | None = field(
        default=None, repr=False, compare=False
    )  # plain_ascii(value), if known
    # Positions read from one entry's own text (`_entry_position`): section -> its entries'
    # spans (None: that section cannot be read so); an entry's text -> its positions counted from
    # its first line (None: not readable alone). The sidecar's loader hands the same
    # `entry_positions` to each document, so an unchanged entry is not read again.
    _spans: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    entry_positions: dict[str, EntryPositions | None] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __getattribute__(self, name: str) -> Any:
        if name in _POSITION_TABLES and object.__getattribute__(self, "_unread_text") is not None:
            text = object.__getattribute__(self, "_unread_text")
            self._unread_text = None
            full = DocumentBuilder(self.filename).build(text)
            self.marks, self.key_marks = full.marks, full.key_marks
            self.unindented = full.unindented
        return object.__getattribute__(self, name)

    def position(self, path: Path, *, key: bool = False) -> tuple[int | None, int | None]:
        """Best known 1-based (line, column) for `path`, walking up to the nearest known parent."""
        if len(path) >= 2 and object.__getattribute__(self, "_unread_text") is not None:
            found = self._entry_position(path, key)
            if found is not None:
                return found
        table = self.key_marks if key else self.marks
        probe = tuple(path)
        while True:
            if probe in table:
                line, column = table[probe]
                return line, column
            if key and probe in self.marks:
                line, column = self.marks[probe]
                return line, column
            if not probe:
                return None, None
            probe = probe[:-1]

    def may_hold(self, needle: str) -> bool:
        """False when no string in the document can contain `needle`: it is not in the file's
        text, and the text has no `\\` (a double-quoted escape could write it). True when it may,
        or the text is no longer kept (once the positions were read)."""
        text = object.__getattribute__(self, "_unread_text")
        return text is None or needle in text or "\\" in text

    def _entry_position(self, path: Path, key: bool) -> tuple[int, int] | None:
        """`position` of a path inside an entry of a section (`accounts.<address>...`), read
        from that entry's text alone, the way `yamlchunks` reads it: a warning on 2,000 of
        10,000 accounts need not read the whole file again. None where the entry's text cannot
        be told apart for certain (then the whole text is read)."""
        text: str = object.__getattribute__(self, "_unread_text")
        section, entry = path[0], path[1]
        if not isinstance(section, str) or not isinstance(entry, str):
            return None
        spans = self._spans
        if section not in spans:
            spans[section] = _entry_spans(text, section, self.value.get(section))
        span = spans[section].get(entry) if spans[section] is not None else None
        if span is None:
            return None
        start, stop, before = span
        chunk = text[start:stop]
        known = self.entry_positions
        if chunk not in known:  # the same text reads the same wherever it stands
            known[chunk] = _read_entry(chunk, entry)
        tables = known[chunk]
        if tables is None:
            return None
        marks, key_marks = tables
        table = key_marks if key else marks
        probe = tuple(path[1:])
        while probe:  # as `position`, down to the entry itself (always in both tables)
            found = table.get(probe) or (marks.get(probe) if key else None)
            if found is not None:
                return found[0] + before, found[1]
            probe = probe[:-1]
        return None


# Text whose lines or meaning could differ in a slice: tabs, a BOM, line breaks other than \n and
# \r\n (libyaml counts them as lines), document markers.
_ENTRY_DOUBTS = ("\t", "\n---", "\n...")
_WIDE_DOUBTS = ("\ufeff", "\x85", "\u2028", "\u2029")  # only in text that is not ASCII
_COLUMN_ZERO = re.compile(r"\n(?=[^ #\r\n])")
_FIRST_INDENTED = re.compile(r"\n( +)(?=[^ #\r\n])")
_HEADER_REST = re.compile(r":[ ]*(?:[ ]#[^\n]*)?\r?\n")


def _entry_spans(text: str, section: str, value: Any) -> dict[str, tuple[int, int, int]] | None:
    """entry -> (start, end, lines before it) of each entry of the block mapping `section:` at the
    top level; None unless the lines at the entries' indentation name exactly the document's own
    keys, in order (then each slice is exactly one entry, and reads alone as in the whole)."""
    if not isinstance(value, dict) or not value:
        return None
    if any(doubt in text for doubt in _ENTRY_DOUBTS) or (
        not text.isascii() and any(doubt in text for doubt in _WIDE_DOUBTS)
    ):
        return None
    if "\r" in text and text.count("\r") != text.count("\r\n"):
        return None
    lines = [0] if text.startswith(section) else []  # `section:` lines at column 0
    at = text.find("\n" + section)  # (str.find: a regex anchored to lines is ten times slower)
    while at >= 0:
        lines.append(at + 1)
        at = text.find("\n" + section, at + 1)
    found = [rest for at in lines if (rest := _HEADER_REST.match(text, at + len(section)))]
    if len(found) != 1:
        return None
    body = found[0].end()
    after = _COLUMN_ZERO.search(text, body - 1)
    end = after.start() + 1 if after is not None else len(text)
    first = _FIRST_INDENTED.search(text, body - 1, end)
    if first is None:
        return None
    indent = len(first.group(1))
    if indent > 1 and re.compile(rf"\n {{1,{indent - 1}}}(?=[^ #\r\n])").search(
        text, body - 1, end
    ):
        return None
    starts = [
        line.start() + 1
        for line in re.compile(rf"\n {{{indent}}}(?=[^ #\r\n])").finditer(text, body - 1, end)
    ]
    names = list(value)
    if len(starts) != len(names):
        return None
    for name, start in zip(names, starts, strict=True):
        # the line is `<name>:` then a blank or its end, as the key is written plain
        colon = start + indent + len(name)
        if (
            not text.startswith(name, start + indent)
            or text[colon : colon + 1] != ":"
            or text[colon + 1 : colon + 2] not in ("", " ", "\r", "\n")
            or ": " in name
        ):
            return None
    spans: dict[str, tuple[int, int, int]] = {}
    before, counted = text.count("\n", 0, starts[0]), starts[0]
    for name, start, stop in zip(names, starts, starts[1:] + [end], strict=True):
        before += text.count("\n", counted, start)
        counted = start
        spans[name] = (start, stop, before)
    return spans


def _read_entry(chunk: str, entry: str) -> EntryPositions | None:
    """The positions inside one entry (paths from the entry down; lines counted from the
    chunk's first), from its text alone: `DocumentBuilder`'s marks without building the values
    (this runs once per diagnostic). None when it does not read as that one entry, or holds an
    anchor or alias (their positions are the whole text's to tell)."""
    marks: dict[Path, tuple[int, int]] = {}
    key_marks: dict[Path, tuple[int, int]] = {}
    stack: list[list[Any]] = []  # per open collection: [path, is mapping, key waiting, items]
    next_event = _Loader(chunk).get_event
    scalar, mapping, sequence = yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent
    try:
        while True:
            event = next_event()
            kind = type(event)
            if kind is scalar or kind is mapping or kind is sequence:
                if event.anchor is not None:
                    return None
                mark = event.start_mark
                if not stack:  # the chunk's own mapping: not the section's position
                    if kind is not mapping:
                        return None
                    stack.append([(), True, None, 0])
                    continue
                top = stack[-1]
                if top[1] and top[2] is None:  # a key
                    if kind is not scalar:
                        return None
                    top[2] = event.value
                    key_marks[top[0] + (event.value,)] = (mark.line + 1, mark.column + 1)
                    continue
                if top[1]:
                    path = top[0] + (top[2],)
                    top[2] = None
                else:
                    path = top[0] + (top[3],)
                    top[3] += 1
                marks[path] = (mark.line + 1, mark.column + 1)
                if kind is not scalar:
                    stack.append([path, kind is mapping, None, 0])
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                stack.pop()
            elif kind is yaml.AliasEvent:
                return None
            elif event is None or kind is yaml.StreamEndEvent:
                break
    except yaml.YAMLError:
        return None
    if [path for path in key_marks if len(path) == 1] != [(entry,)]:
        return None
    return marks, key_marks


_POSITION_TABLES = frozenset({"marks", "key_marks", "unindented"})


_SAFE_INT = 2**53


def plain_ascii(value: Any) -> bool:
    """JSON-like data whose strings are printable ASCII (iterative: deep input is safe).

    Where this holds, the compiled tools (jsonschema-rs, libyaml's emitter) give the same answer
    as the pure-Python ones; `export.dump_yaml` relies on it too.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            if not (item.isascii() and item.isprintable()):
                return False
        elif kind is dict:
            for key in item:
                if type(key) is not str or not (key.isascii() and key.isprintable()):
                    return False
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is int:
            if not -_SAFE_INT < item < _SAFE_INT:
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif item is not None and kind is not bool:
            return False
    return True


def load_yaml_bytes(data: bytes, filename: str) -> Document:
    """Parse `data` into a `Document`, or raise `YamlLoadError` naming the place."""
    text = decode_text(data, filename)
    doc = DocumentBuilder(filename, record_marks=False).build(text)
    doc._unread_text = text  # positions are read again from it when first asked for
    return doc


def decode_text(data: bytes, filename: str) -> str:
    """The checks before any parsing (size, BOM, UTF-8, NUL, empty): the text, or the error."""

    def fail(message: str, line: int | None = None, column: int | None = None) -> YamlLoadError:
        return YamlLoadError([Diagnostic(filename, line, column, "", message)])

    if len(data) > MAX_BYTES:
        raise fail(
            f"the file is {len(data) / 1048576:.1f} MiB; the limit is {MAX_BYTES // 1048576} MiB"
            " (10,000 mailboxes take about 2 MiB)"
        )
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_col(data, exc.start)
        raise fail(
            f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8",
            line,
            column,
        ) from None
    nul = text.find("\0")
    if nul >= 0:
        line, column = _line_col(text, nul)
        raise fail("the file contains a NUL byte: it is binary, not YAML", line, column)
    if not text.strip():
        raise fail("the file is empty; it needs at least `version`, `domains` and `accounts`", 1, 1)
    return text


def _line_col(buf: bytes | str, offset: int) -> tuple[int, int]:
    newline: Any = b"\n" if isinstance(buf, bytes) else "\n"
    line = buf.count(newline, 0, offset) + 1
    column = offset - (buf.rfind(newline, 0, offset) + 1) + 1
    return line, column


class _Frame:
    __slots__ = (
        "container",
        "is_map",
        "path",
        "key",
        "key_mark",
        "seen",
        "anchor",
        "start_nodes",
        "mark",
    )

    def __init__(
        self, container: Any, path: Path, anchor: str | None, start_nodes: int, mark: Any
    ) -> None:
        self.container = container
        self.is_map = type(container) is dict
        self.path = path
        self.key: str | None = None  # mappings: the key waiting for its value
        self.key_mark: tuple[int, int] | None = None
        self.seen: dict[str, int] = {}
        self.anchor = anchor
        self.start_nodes = start_nodes
        self.mark = mark


class DocumentBuilder:
    """Turns libyaml events into values; a stack instead of recursion keeps deep input safe."""

    def __init__(self, filename: str, *, record_marks: bool = True) -> None:
        self.filename = filename
        self.record_marks = record_marks  # False: the inlined path records no positions
        self.doc = Document(value=None, filename=filename)
        self.anchors: dict[str, tuple[Any, int]] = {}  # anchor -> (value, expanded node count)
        self.nodes = 0
        self.documents = 0
        self._lines: list[str] | None = None  # the text's lines, split when first needed

    def diag(self, mark: Any, path: Path, message: str) -> Diagnostic:
        return Diagnostic(self.filename, mark.line + 1, mark.column + 1, format_path(path), message)

    def build(self, text: str) -> Document:
        stack: list[_Frame] = []
        marks, key_marks = self.doc.marks, self.doc.key_marks
        record = self.record_marks
        scalar_event, stream_end = yaml.ScalarEvent, yaml.StreamEndEvent
        loader = _Loader(text)
        try:
            next_event = loader.get_event
            while True:
                event = next_event()
                kind = type(event)
                if kind is scalar_event:
                    # Inlined for the common case (a plain scalar as a key or a value): this loop
                    # runs once per YAML node, 150,000 times for 10,000 accounts.
                    top = stack[-1] if stack else None
                    if top is not None and top.is_map and top.key is None:
                        self.nodes += 1
                        if self.nodes > MAX_EXPANDED_NODES:
                            raise self._too_many(event, top.path)
                        key = event.value
                        if event.tag is not None or key == "<<" or key in top.seen:
                            self._key(top, key, event)  # merge keys, tags and duplicates
                            continue
                        mark = event.start_mark
                        top.seen[key] = mark.line + 1
                        top.key = key
                        if record:
                            top.key_mark = key_marks[top.path + (key,)] = (
                                mark.line + 1,
                                mark.column + 1,
                            )
                        continue
                    value = event.value
                    tag = event.tag
                    if not (
                        (tag is None or tag == "!")
                        and (
                            not event.implicit[0]
                            or (_SIMPLE_PLAIN.match(value) and value.lower() not in _BOOL_WORDS)
                        )
                    ):
                        value = self._scalar(event, stack)
                    if top is None:
                        self._value(stack, value, event, 1)
                        continue
                    self.nodes += 1
                    if self.nodes > MAX_EXPANDED_NODES:
                        raise self._too_many(event, self._child_path(stack))
                    if record:
                        child: Any = top.key if top.is_map else len(top.container)
                        path = top.path + (child,)
                        mark = event.start_mark
                        marks[path] = (mark.line + 1, mark.column + 1)
                        if value is None and top.is_map and top.key_mark is not None:
                            self._note_unindented(path, top.key_mark, text)
                    if event.anchor is not None:
                        self.anchors[event.anchor] = (value, 1)
                    if top.is_map:
                        top.container[top.key] = value
                        top.key = None
                    else:
                        top.container.append(value)
                elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                    self._start(stack, event, {} if kind is yaml.MappingStartEvent else [])
                elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                    frame = stack.pop()
                    size = self.nodes - frame.start_nodes + 1
                    if frame.anchor is not None:
                        self.anchors[frame.anchor] = (frame.container, size)
                    if stack:
                        self._attach(stack, frame.container, frame.mark, frame.path)
                    else:
                        self.doc.value = frame.container
                elif kind is yaml.AliasEvent:
                    self._alias(stack, event)
                elif kind is yaml.DocumentStartEvent:
                    self.documents += 1
                    if self.documents > 1:
                        raise YamlLoadError(
                            [
                                self.diag(
                                    event.start_mark,
                                    (),
                                    "the file holds more than one YAML "
                                    "document (a second `---`); keep everything in one",
                                )
                            ]
                        )
                elif kind is stream_end or event is None:
                    break
        except yaml.MarkedYAMLError as exc:
            raise YamlLoadError([self._syntax_error(exc, text)]) from None
        except yaml.YAMLError as exc:  # pragma: no cover - libyaml reports marks for all we know
            raise YamlLoadError([Diagnostic(self.filename, None, None, "", str(exc))]) from None
        if self.doc.problems:
            raise YamlLoadError(self.doc.problems)
        if self.doc.value is None:
            raise YamlLoadError(
                [
                    Diagnostic(
                        self.filename,
                        1,
                        1,
                        "",
                        "the file is empty (only comments or blank "
                        "lines); it needs at least `version`, `domains` and `accounts`",
                    )
                ]
            )
        if not isinstance(self.doc.value, dict):
            got = _type_name(self.doc.value)
            raise YamlLoadError(
                [
                    Diagnostic(
                        self.filename,
                        1,
                        1,
                        "",
                        f"the file must be a mapping of keys (version, domains, accounts ...),"
                        f" not {got}",
                    )
                ]
            )
        return self.doc

    def _note_unindented(self, path: Path, key_mark: tuple[int, int], text: str) -> None:
        """Remember an empty value whose next content line starts in its key's column."""
        if self._lines is None:
            self._lines = text.split("\n")
        key_line, key_column = key_mark
        for number in range(key_line, len(self._lines)):
            row = self._lines[number]
            body = row.lstrip(" ")
            if not body.strip() or body.startswith("#"):
                continue
            if len(row) - len(body) == key_column - 1 and not body.startswith("-"):
                self.doc.unindented[path] = number + 1
            return

    def _start(self, stack: list[_Frame], event: Any, container: Any) -> None:
        path = self._child_path(stack)
        if len(stack) >= MAX_DEPTH:
            raise YamlLoadError(
                [
                    self.diag(
                        event.start_mark,
                        path[:4],
                        f"nesting deeper than {MAX_DEPTH} levels; mailserver.yaml needs four",
                    )
                ]
            )
        self._count(event, path, 1)
        mark = event.start_mark
        if event.tag not in (None, "!", _MAP, _SEQ):  # e.g. !!python/object/apply, !!set, !!omap
            self.doc.problems.append(
                self.diag(
                    mark,
                    path,
                    f"unsupported YAML tag {printable(event.tag)[:80]}; only plain "
                    "mappings and lists are allowed",
                )
            )
        if self.record_marks:
            self.doc.marks[path] = (mark.line + 1, mark.column + 1)
        stack.append(_Frame(container, path, event.anchor, self.nodes, mark))

    def _value(self, stack: list[_Frame], value: Any, event: Any, size: int) -> None:
        path = self._child_path(stack)
        self._count(event, path, size)
        if stack and stack[-1].is_map and stack[-1].key is None:
            self._key(stack[-1], value, event)
            return
        mark = event.start_mark
        self.doc.marks[path] = (mark.line + 1, mark.column + 1)
        if getattr(event, "anchor", None) is not None:
            self.anchors[event.anchor] = (value, 1)
        if stack:
            self._attach(stack, value, mark, path)
        else:
            self.doc.value = value

    def _key(self, frame: _Frame, value: Any, event: Any) -> None:
        mark = event.start_mark
        if type(event) is not yaml.ScalarEvent:
            self.doc.problems.append(
                self.diag(mark, frame.path, "a key must be a plain string, not a list or mapping")
            )
            key = f"<invalid key at line {mark.line + 1}>"
        else:
            key = event.value  # keys stay the text as written: `yes:` is the key "yes"
        if event.tag == "tag:yaml.org,2002:merge" or (key == "<<" and event.implicit[0]):
            self.doc.problems.append(
                self.diag(
                    mark,
                    frame.path,
                    "YAML merge keys (`<<`) are not supported here; write the keys out",
                )
            )
        if key in frame.seen:
            self.doc.problems.append(
                self.diag(
                    mark,
                    frame.path + (key,),
                    f"duplicate key '{key}' (first on line {frame.seen[key]}); YAML would "
                    "silently keep only the last one: merge the two",
                )
            )
        else:
            frame.seen[key] = mark.line + 1
        frame.key = key
        frame.key_mark = (mark.line + 1, mark.column + 1)
        self.doc.key_marks[frame.path + (key,)] = frame.key_mark

    def _attach(self, stack: list[_Frame], value: Any, mark: Any, path: Path) -> None:
        parent = stack[-1]
        if parent.is_map:
            if parent.key is None:  # a mapping or sequence used as a key
                self._key(parent, value, _FakeEvent(mark))
                return
            parent.container[parent.key] = value
            parent.key = None
        else:
            parent.container.append(value)

    def _alias(self, stack: list[_Frame], event: Any) -> None:
        if event.anchor not in self.anchors:
            raise YamlLoadError(
                [
                    self.diag(
                        event.start_mark,
                        self._child_path(stack),
                        f"alias *{event.anchor} refers to an anchor that is not complete "
                        "(recursive) or not defined",
                    )
                ]
            )
        value, size = self.anchors[event.anchor]
        self._value(stack, value, _FakeEvent(event.start_mark, value), size)

    def _count(self, event: Any, path: Path, size: int) -> None:
        self.nodes += size
        if self.nodes > MAX_EXPANDED_NODES:
            raise self._too_many(event, path)

    def _too_many(self, event: Any, path: Path) -> YamlLoadError:
        return YamlLoadError(
            [
                self.diag(
                    event.start_mark,
                    path,
                    "the document expands to more than "
                    f"{MAX_EXPANDED_NODES:,} values through YAML aliases (*ref): "
                    "refusing a possible 'billion laughs' bomb",
                )
            ]
        )

    def _child_path(self, stack: list[_Frame]) -> Path:
        if not stack:
            return ()
        top = stack[-1]
        if top.is_map:
            return top.path + (top.key,) if top.key is not None else top.path
        return top.path + (len(top.container),)

    def _scalar(self, event: Any, stack: list[_Frame]) -> Any:
        value: str = event.value
        plain, _quoted = event.implicit
        tag = event.tag
        if stack and stack[-1].is_map and stack[-1].key is None:
            return value  # a key: resolved in `_key`
        if tag is None or tag == "!":
            if not plain:
                return value
            if _SIMPLE_PLAIN.match(value) and value.lower() not in _BOOL_WORDS:
                return value  # fast path: most values are addresses, domains and words
            tag = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))
            if tag in _NUMBER_TAGS and not _PLAIN_NUMBER.match(value):
                self.doc.problems.append(self._yaml11_number(event, stack, tag))
        if tag == _STR:
            return value
        if tag not in _SCALAR_TAGS:  # !!binary, !!map on a scalar, !!python/...: never built
            raise YamlLoadError(
                [
                    self.diag(
                        event.start_mark,
                        self._child_path(stack),
                        f"unsupported YAML tag {printable(tag)[:80]}; only plain values are "
                        "allowed",
                    )
                ]
            )
        node = yaml.ScalarNode(tag, value, event.start_mark, event.end_mark, event.style)
        try:
            return _CONSTRUCTOR.construct_object(node)
        except yaml.YAMLError:
            raise YamlLoadError(
                [
                    self.diag(
                        event.start_mark,
                        self._child_path(stack),
                        f"unsupported YAML tag {tag}; only plain values are allowed",
                    )
                ]
            ) from None
        except (ValueError, LookupError, TypeError, ArithmeticError, AttributeError):
            # PyYAML's constructors fail so on `!!float ''`, `!!bool ''`, a 5000-digit integer
            shown = f"'{value[:40]}...'" if len(value) > 40 else f"'{value}'"
            raise YamlLoadError(
                [
                    self.diag(
                        event.start_mark,
                        self._child_path(stack),
                        f"{shown} is not a valid {tag.rsplit(':', 1)[-1]} value",
                    )
                ]
            ) from None

    def _yaml11_number(self, event: Any, stack: list[_Frame], tag: str) -> Diagnostic:
        """`010`, `0x10`, `1_000`, `10:00` are numbers only in YAML 1.1, which PyYAML reads (8,
        16, 1000, 600): YAML 1.2 tools, editors and readers see 10, a string or 10:00. Refused
        rather than silently reinterpreted; quoting keeps the text, plain digits the number."""
        value = event.value
        try:
            read = repr(
                _CONSTRUCTOR.construct_object(
                    yaml.ScalarNode(tag, value, event.start_mark, event.end_mark)
                )
            )
        except (ValueError, ArithmeticError):  # thousands of digits
            read = "a huge number"
        read = read if len(read) <= 40 else "a huge number"
        return self.diag(
            event.start_mark,
            self._child_path(stack),
            f"'{value[:40]}' is a YAML 1.1 number form that reads as {read}, not what it "
            f"looks like; write {read} as plain digits, or quote it ('{value[:40]}') for text",
        )

    def _syntax_error(self, exc: yaml.MarkedYAMLError, text: str) -> Diagnostic:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        problem = exc.problem or "invalid YAML"
        message = f"YAML syntax error: {problem}"
        if exc.context:
            message += f" ({exc.context})"
        if "'\\t'" in problem or (mark is not None and _char_at(text, mark.index) == "\t"):
            message += "; YAML does not allow tabs for indentation, use spaces"
        elif mark is not None and (hint := _indentation_hint(exc, text)) is not None:
            message, column = hint
        return Diagnostic(self.filename, line, column, "", message)


class _FakeEvent:
    """Stands in for a scalar event when a collection or alias takes a key's place."""

    def __init__(self, mark: Any, value: Any = None) -> None:
        self.start_mark = mark
        self.tag = None
        self.implicit = (False, False)
        self.value = value if isinstance(value, str) else f"<line {mark.line + 1}>"
        self.anchor = None


def _indentation_hint(exc: yaml.MarkedYAMLError, text: str) -> tuple[str, int] | None:
    """(message, 1-based column) when a YAML syntax error comes from a line indented unlike its
    siblings: libyaml's "did not find expected key" (the line is right of the keys of the
    mapping it ends up in) and "mapping values are not allowed" (a `key:` line indented under a
    `key: value` line reads as the continuation of that value)."""
    mark, problem = exc.problem_mark, exc.problem or ""
    lines = text.split("\n")
    if mark is None or not 0 <= mark.line < len(lines):
        return None
    row = lines[mark.line]
    indent = len(row) - len(row.lstrip(" "))
    line = mark.line + 1
    context = exc.context_mark
    if "expected key" in problem or "expected <block end>" in problem:
        if context is None or mark.column == context.column:
            return None
        return (
            f"YAML syntax error: line {line} starts in column {mark.column + 1}, but the mapping "
            f"it falls in has its keys in column {context.column + 1} (line {context.line + 1}): "
            "is this line indented like its siblings?",
            mark.column + 1,
        )
    if "mapping values are not allowed" in problem:
        above = next(
            (
                lines[i]
                for i in range(mark.line - 1, -1, -1)
                if lines[i].strip() and not lines[i].lstrip().startswith("#")
            ),
            None,
        )
        if above is None or ": " in row[indent : mark.column] or ":\t" in row[indent : mark.column]:
            return None  # `a: b: c` on one line: not an indentation mistake
        if len(above) - len(above.lstrip(" ")) >= indent or above.rstrip().endswith(":"):
            return None
        return (
            f"YAML syntax error: line {line} is indented further than the `key: value` line "
            "above it, so YAML reads it as part of that value: is this line indented like its "
            "siblings?",
            indent + 1,
        )
    return None


def _char_at(text: str, index: int) -> str:
    return text[index] if 0 <= index < len(text) else ""


def _type_name(value: Any) -> str:
    return {
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "true/false",
        type(None): "empty",
    }.get(type(value), type(value).__name__)


class _ScalarConstructor(yaml.constructor.SafeConstructor):
    """Only used for the rare scalar that is not a plain string (numbers, booleans, null)."""


_CONSTRUCTOR = _ScalarConstructor()

"""Reload mailserver.yaml by parsing again only the parts of the text that changed.

The sidecar loads the whole file after every save; at 10,000 accounts the YAML load alone is most
of a second's budget, for one edited line. `IncrementalLoader` cuts the text into top-level
sections and, inside a plain `key:` section holding a block mapping (accounts, aliases ...), into
one chunk per entry. A chunk whose exact text was seen in the last load keeps its value (and what
was learnt of it: its node count, whether it is plain ASCII); only new chunks go through
`yamlload`'s builder.

The result is always what `yamlload.load_yaml_bytes` returns for the same bytes: the same value or
the same error. Where chunks could mean something else alone than in the whole file (anchors and
aliases, tags, directives, tabs, unusual line breaks, document markers, keys that are not plain
words, a chunk that fails, duplicates, deep nesting, huge node counts) it does the full load.
Positions stay lazy, read from the full text when a diagnostic first asks for one.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from reconciler.load.yamlload import (
    MAX_DEPTH,
    MAX_EXPANDED_NODES,
    Document,
    DocumentBuilder,
    EntryPositions,
    YamlLoadError,
    decode_text,
    load_yaml_bytes,
    plain_ascii,
)

# A key that means the same alone as in context: a plain word, address or domain, then `: ` or
# the end of the line.
_KEY = r"[A-Za-z0-9_@][A-Za-z0-9_.+=@-]*:(?:[ \r\n]|\Z)"
_SECTION_KEY = re.compile(_KEY)
# `key:` with nothing but an optional comment after it: its entries may be split.
_SPLITTABLE_HEADER = re.compile(r"[A-Za-z0-9_@][A-Za-z0-9_.+=@-]*:[ ]*(?:[ ]#[^\n]*)?\r?(?:\n|\Z)")
_SECTION_START = re.compile(r"\n(?=[^ #\r\n])")  # a line starting at column 0 with content
_INDENTED_CONTENT = re.compile(r"\n( +)(?=[^ #\r\n])")
_LEADING_CONTENT = re.compile(r"(?:\A|\n)[ ]*[^ #\r\n]")  # text before the first section
# Text that could make a chunk mean something else alone: tabs, a BOM, line breaks other than \n
# and \r\n, document markers. Anchors and aliases are judged by the parser (`_chunk`), directives
# (`%` at column 0) by `_SECTION_KEY`; a tag (`!!str`) means the same anywhere without them.
_DOUBT = re.compile(r"[\t\ufeff\x85\u2028\u2029]|\r(?!\n)|\n(?:---|\.\.\.)")
_DEPTH_LIMIT = MAX_DEPTH // 2  # mailserver.yaml nests four levels; deeper goes the full way
_NODE_LIMIT = MAX_EXPANDED_NODES // 2


# What a chunk's text gives: its value (a one-key mapping), node count and `plain_ascii(value)`.
_Chunk = tuple[dict[str, Any], int, bool]


class _Doubt(Exception):
    """The chunks might not add up to the full load's answer: do the full load."""


@lru_cache(maxsize=16)
def _child_start(indent: int) -> re.Pattern[str]:
    """Entry lines at `indent`; the group `key` is None on a line whose key is not plain."""
    return re.compile(rf"\n {{{indent}}}(?:(?={_KEY})(?P<key>)|(?=[^ #\r\n]))")


@lru_cache(maxsize=16)
def _shallower(indent: int) -> re.Pattern[str]:
    return re.compile(rf"\n {{1,{indent - 1}}}(?=[^ #\r\n])")


class IncrementalLoader:
    """`load` = `yamlload.load_yaml_bytes`, faster when most of the text was in the last load.

    The cache holds the chunks of the last load only, so memory does not grow with edits. Values
    from it are shared between the documents it returns: nothing downstream mutates them.
    """

    def __init__(self) -> None:
        self._cache: dict[str, _Chunk] = {}
        # Positions read from an entry's text for a diagnostic (`Document.entry_positions`):
        # kept for the entries of the last load, so a warning on an unchanged entry costs nothing.
        self._positions: dict[str, EntryPositions | None] = {}
        self.parsed = 0  # chunks parsed by the last load (the rest came from the cache)
        self.reused = 0  # chunks taken from the cache by the last load
        self.fell_back = False  # the last load was the full load

    def load(self, data: bytes, filename: str) -> Document:
        """Parse `data` into a `Document`, or raise `YamlLoadError` naming the place."""
        text = decode_text(data, filename)
        fresh: dict[str, _Chunk] = {}
        self.parsed = self.reused = 0
        try:
            value, plain = self._assemble(text, filename, fresh)
        except _Doubt:
            self.fell_back = True
            self._cache = fresh  # what parsed fine still saves work next time
            doc = load_yaml_bytes(data, filename)
        else:
            self.fell_back = False
            self._cache = fresh
            doc = Document(value=value, filename=filename, plain=plain)
            doc._unread_text = text  # positions are read from the full text when first asked for
        known = self._positions
        self._positions = doc.entry_positions = {
            chunk: known[chunk] for chunk in fresh.keys() & known.keys()
        }
        return doc

    def _assemble(
        self, text: str, filename: str, fresh: dict[str, _Chunk]
    ) -> tuple[dict[str, Any], bool]:
        starts = [m.end() for m in _SECTION_START.finditer(text)]
        if not text.startswith((" ", "#", "\r", "\n")):
            starts.insert(0, 0)
        if not starts or _LEADING_CONTENT.search(text, 0, starts[0]):
            raise _Doubt  # only comments, or content indented before the first section
        if _DOUBT.search(text, 0, starts[0]):
            raise _Doubt  # e.g. a lone \r in a comment, which YAML reads as a line break
        ends = starts[1:] + [len(text)]
        document: dict[str, Any] = {}
        nodes = 0
        plain = True  # the section keys are plain words: _SECTION_KEY
        for start, end in zip(starts, ends, strict=True):
            if not _SECTION_KEY.match(text, start):
                raise _Doubt  # a quoted or complex key, `---`, a list at the top ...
            header = _SPLITTABLE_HEADER.match(text, start)
            entries = self._entries(text, header.end(), end) if header else None
            if entries is not None and _DOUBT.search(text, start, entries[0][0]):
                raise _Doubt  # the header and its comments are in no chunk: checked here
            if entries is None:
                section, size, plain_section = self._chunk(text[start:end], filename, fresh)
            else:
                section, size, plain_section = self._mapping(text, entries, filename, fresh)
                key = text[start : text.index(":", start)]
                section = {key: section}
            nodes += size
            plain = plain and plain_section
            for key, item in section.items():
                if key in document:
                    raise _Doubt  # a duplicate key: the full load names both lines
                document[key] = item
        if nodes > _NODE_LIMIT:
            raise _Doubt
        return document, plain

    @staticmethod
    def _entries(text: str, body: int, end: int) -> list[tuple[int, int]] | None:
        """The (start, end) of each entry of a block mapping in text[body:end], or None when the
        section is not one (a list, a scalar, flow style, a key that is not a plain word)."""
        first = _INDENTED_CONTENT.search(text, body - 1, end)
        if first is None:
            return None
        indent = len(first.group(1))
        if indent > 1 and _shallower(indent).search(text, body - 1, end):
            return None
        starts = []
        for line in _child_start(indent).finditer(text, body - 1, end):
            if line.group("key") is None:
                return None
            starts.append(line.start() + 1)
        return list(zip(starts, starts[1:] + [end], strict=True))

    def _mapping(
        self,
        text: str,
        entries: list[tuple[int, int]],
        filename: str,
        fresh: dict[str, _Chunk],
    ) -> _Chunk:
        # Runs once per account and alias: the cache hit is inlined.
        mapping: dict[str, Any] = {}
        nodes = 1
        plain = True
        known_before = self._cache.get
        for start, end in entries:
            chunk = text[start:end]
            known = known_before(chunk)
            if known is None:
                known = self._chunk(chunk, filename, fresh)
            else:
                fresh[chunk] = known
                self.reused += 1
            entry, size, plain_entry = known
            nodes += size
            plain = plain and plain_entry
            count = len(mapping)
            mapping.update(entry)  # one key: parsed alone, each chunk is a one-key mapping
            if len(mapping) == count:
                raise _Doubt  # a duplicate key
        return mapping, nodes, plain

    def _chunk(self, chunk: str, filename: str, fresh: dict[str, _Chunk]) -> _Chunk:
        """The value of one chunk (a one-key mapping), its node count and whether it is plain
        ASCII, from the cache when the same text was in the last load."""
        known = self._cache.get(chunk) or fresh.get(chunk)
        if known is not None:
            self.reused += 1
            fresh[chunk] = known
            return known
        if _DOUBT.search(chunk):
            raise _Doubt
        builder = DocumentBuilder(filename, record_marks=False)
        try:
            value = builder.build(chunk).value
        except YamlLoadError:  # includes an alias whose anchor is in another chunk
            raise _Doubt from None
        if builder.anchors or len(value) != 1 or _depth(value) > _DEPTH_LIMIT:
            raise _Doubt
        self.parsed += 1
        known = fresh[chunk] = (value, builder.nodes, plain_ascii(value))
        return known


def _depth(value: Any) -> int:
    """How deeply lists and mappings nest in `value` (iterative: a chunk may be hostile)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest

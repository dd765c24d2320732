"""Postfix lookup tables read as `texthash:` files: `key<whitespace>value`, one key per line.

Shared by the access, relay-map and SASL-password codecs (and OpenDKIM's tables, which have the
same shape). As in Postfix, a line starting with whitespace continues the previous one, and the
first of two lines with the same key wins; keys are case-insensitive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from reconciler.formats._lines import ORPHAN

E = TypeVar("E")


def split_entry(line: str) -> tuple[str, str] | str:
    """(key, value) of one logical line; the value is the rest of the line, trimmed."""
    if line[:1].isspace():  # a continuation with nothing to continue (see `logical_lines`)
        return ORPHAN
    fields = line.split(None, 1)
    return fields[0], fields[1].strip() if len(fields) > 1 else ""


def reader(
    make: Callable[[str, str], E | str], *, empty_value: str | None
) -> Callable[[str], tuple[str, E] | str]:
    """A `parse_lines` reader: split the line, refuse an empty value unless allowed, build."""

    def read(line: str) -> tuple[str, E] | str:
        split = split_entry(line)
        if isinstance(split, str):
            return split
        key, value = split
        if not value and empty_value is not None:
            return empty_value
        made = make(key, value)
        if isinstance(made, str):
            return made
        return key.lower(), made

    return read

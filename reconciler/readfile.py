"""Read a file a user named without letting it hang or flood the process.

A path on the command line or in mailserver.yaml can be anything: a FIFO (reading blocks until a
writer comes, forever), a character device (`/dev/zero` never ends), a socket, a directory or a
file of gigabytes. Every reader of such a path (the desired file, a saved plan) goes through
`read_regular`: it opens without blocking, accepts regular files only and reads at most `limit`
bytes, so a bad path is a message, never a wedged command or sidecar loop.

The JSON files the tool reads back (the state file, the record of verified password files, a
saved plan) go through `load_json`: json's parser recurses once per nesting level, so a file of
100,000 `[` would end in a RecursionError, and a parsed value nested a few hundred levels deep
still breaks whatever walks it later (`str`, `==`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from itertools import accumulate
from typing import Any

MAX_JSON_DEPTH = 64  # the files we write nest 4 levels deep (a saved plan's change details)
# A JSON string, or a run of anything that is neither a bracket nor a quote: what is left after
# removing these is the document's brackets outside strings, in order.
_NOT_A_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[^\[\]{}"]+')


class NotReadable(Exception):
    """`path` cannot be read as a regular file; `reason` says why, in words, for a message."""

    def __init__(self, reason: str, *, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing


def kind_of(mode: int) -> str:
    """What a non-regular file is, in an admin's words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_regular(path: str, limit: int) -> bytes:
    """The bytes of the regular file `path` (symlinks followed), at most `limit` of them.

    Raises `NotReadable` for a missing path, anything that is not a regular file, a file larger
    than `limit`, or an OS error. O_NONBLOCK makes opening a FIFO return at once (it would wait
    for a writer); the file type is then checked on the open descriptor, so a swap between a check
    and the open cannot slip a FIFO in.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotReadable("no such file", missing=True) from None
    except IsADirectoryError:
        raise NotReadable("is a directory, not a file") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # opening a Unix socket
            raise NotReadable("is a socket, not a regular file") from None
        raise NotReadable(f"cannot be read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = kind_of(info.st_mode)
            raise NotReadable(
                f"is {kind}, not a regular file" if kind.startswith("a") else f"is {kind}"
            )
        if info.st_size > limit:
            raise NotReadable(_too_large(info.st_size, limit))
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, min(1 << 20, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # grew while being read
            raise NotReadable(_too_large(size, limit))
        return b"".join(chunks)
    except OSError as exc:
        raise NotReadable(f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _too_large(size: int, limit: int) -> str:
    return f"is {size / 1048576:.1f} MiB; the limit is {limit / 1048576:g} MiB"


class TooDeep(ValueError):
    """A JSON document nested deeper than `load_json` accepts (a ValueError, as any bad JSON)."""


def load_json(data: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads(data)`, refusing a document nested deeper than `max_depth` with `TooDeep`.

    The depth is measured before parsing: a document with no more brackets than `max_depth`
    cannot be deeper (the files we write take that path); otherwise the brackets outside strings
    are counted (about 15 ms a megabyte). Bad JSON raises ValueError as json does."""
    if isinstance(data, bytes):  # as json.loads decodes bytes
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    text = data
    if text.count("[") + text.count("{") > max_depth:
        brackets = _NOT_A_BRACKET.sub("", text)
        steps = (1 if c in "[{" else -1 if c in "]}" else 0 for c in brackets)
        if max(accumulate(steps), default=0) > max_depth:
            raise TooDeep(f"its JSON is nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except RecursionError:  # not reached after the check above; kept as the last line of defence
        raise TooDeep(f"its JSON is nested deeper than {max_depth} levels") from None

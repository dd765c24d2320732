"""The event source of the sidecar: which folders to watch, and a watchdog observer on them.

A file-system event only means "look again": this module notes that one arrived (debounce
bookkeeping) and wakes the loop; the loop decides what it means. It never reads mailserver.yaml.

What is watched is the FOLDER holding the file, resolved, plus the folder of every symlink on the
way: git pulls and editors replace the file (a new inode), Kubernetes ConfigMaps swap a `..data`
symlink, and git-sync swaps the symlink of the whole checkout. The parent of each of those folders
is watched too, for events naming the folder itself: a folder renamed away or removed and made
again is only seen there. Watches are re-resolved after every event (`refresh`), so a swapped or
recreated folder is followed.

A file written in place is only worth reading once its writer is done: while the desired file was
modified and not closed since (inotify's close-after-write), the burst is held open (up to
`WRITER_HOLD_SECONDS` without a write, in case the close was missed), and a burst with an
in-place write is marked, so that the loop applies its content only once it reads the same twice.
A burst whose last event renamed a file onto the desired one (what git, editors and `mv` do)
proves that write complete: it is due after a shorter quiet period (`quick`), which still
gathers the renames of one pull.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

IGNORED_EVENTS = {"opened", "closed_no_write"}  # our own reads must not wake us up
MAX_SYMLINK_HOPS = 40
WRITER_HOLD_SECONDS = 30.0  # a writer that keeps the file open this long without writing: go on


def guard_dirs(folders: set[str]) -> set[str]:
    """The parent of each watched folder. Renaming a folder away, or removing it and making it
    again, is an event in its parent, never in the folder (a watch follows the old inode)."""
    return {os.path.dirname(folder) for folder in folders if folder != os.sep}


def relevant(event_paths: tuple[str, ...], folders: frozenset[str]) -> bool:
    """An event matters when it names a watched folder or something directly inside one; the
    guard watches on the parents also report the folders' siblings, which do not matter."""
    return any(path in folders or os.path.dirname(path) in folders for path in event_paths if path)


def watch_dirs(path: str) -> set[str]:
    """The real folders to watch so that every way `path` can change is seen.

    The folder finally holding the file, and the real folder holding each symlink met while
    resolving the path (where a ConfigMap or git-sync swap happens). A missing folder is replaced
    by its nearest existing ancestor, so its creation is seen.
    """
    out: set[str] = set()
    current = os.path.abspath(path)
    for _ in range(MAX_SYMLINK_HOPS):
        parts = [p for p in current.split(os.sep) if p]
        real = os.sep
        for index, part in enumerate(parts):
            candidate = os.path.join(real, part)
            if os.path.islink(candidate):
                out.add(real)
                target = os.readlink(candidate)
                rest = parts[index + 1 :]
                current = os.path.normpath(os.path.join(real, target, *rest))
                break
            real = candidate
        else:
            break  # no symlink left on the way
    parent = os.path.dirname(current)
    while parent != os.sep and not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    out.add(parent)
    return out


@dataclass
class _Burst:
    """Events not taken by the loop yet; shared with the watchdog thread (guarded by `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    dirty: bool = False
    first: float = 0.0
    last: float = 0.0
    count: int = 0
    stale: set[str] = field(default_factory=set)  # watched folders an event named: watch anew
    in_place: bool = False  # the desired file itself was written (not replaced whole)
    writing: float | None = None  # last write to the desired file while its writer has it open
    renamed: bool = False  # the last event renamed a file onto the desired one: written whole


class Taken(NamedTuple):
    """The events the loop took: how many, and whether its look must wait for the content to
    settle (the file was written in place, or events were still arriving when it was taken)."""

    events: int
    in_place: bool
    last: float  # when the last one arrived
    renamed: bool = False  # the last one renamed a complete file onto the desired one


class EventSource:
    """The folder watches for one desired file. `wake` is called (from the watchdog thread) after
    every relevant event; `due` says when the burst so far should be looked at."""

    def __init__(
        self,
        path: str,
        *,
        clock: Callable[[], float],
        wake: Callable[[], None],
        log: logging.Logger,
        interval: float,
    ) -> None:
        self.path = path
        self.clock = clock
        self.wake = wake
        self.log = log
        self.interval = interval  # only for the message when a folder cannot be watched
        self._burst = _Burst()
        self._observer: Any = None
        self._handler: Any = None
        self._watches: dict[str, tuple[Any, int]] = {}  # real dir -> (watch, inode)
        self._folders: frozenset[str] = frozenset()  # watch_dirs now (read by the event thread)
        self._file = os.path.realpath(path)  # where writes in place land (read by the event thread)

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        source = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                source.on_event(event)

        self._handler = Handler()
        self._observer = Observer()
        self._observer.daemon = True
        self.refresh()
        self._observer.start()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    def alive(self) -> bool:
        observer = self._observer
        return observer is None or bool(observer.is_alive())

    def due(self, *, debounce: float, max_delay: float, quick: float | None = None) -> float | None:
        """When the pending burst should be looked at: a quiet period after its last event
        (`quick` when that event renamed a complete file onto the desired one), but never later
        than `max_delay` after its first, unless a writer still has the file open (then a quiet
        period after its close). None: no event is pending."""
        with self._burst.lock:
            dirty, first, last = self._burst.dirty, self._burst.first, self._burst.last
            writing, renamed = self._burst.writing, self._burst.renamed
        if not dirty:
            return None
        if writing is not None and self.clock() < writing + WRITER_HOLD_SECONDS:
            return writing + WRITER_HOLD_SECONDS  # the close is an event: it comes sooner
        quiet = quick if renamed and quick is not None else debounce
        return min(last + quiet, first + max_delay)

    def writer_open(self) -> bool:
        """Has a writer modified the desired file in place and not closed it yet?"""
        with self._burst.lock:
            writing = self._burst.writing
        return writing is not None and self.clock() < writing + WRITER_HOLD_SECONDS

    def take(self) -> Taken:
        """Mark the pending events as seen."""
        with self._burst.lock:
            burst = self._burst
            taken = Taken(burst.count, burst.in_place, burst.last, burst.renamed)
            burst.dirty = False
            burst.count = 0
            burst.in_place = False
            burst.renamed = False
        return taken

    def on_event(self, event: Any) -> None:
        """Watchdog thread: note the event; the loop decides what it means."""
        if getattr(event, "event_type", "") in IGNORED_EVENTS:
            return
        paths = tuple(
            os.fsdecode(p)
            for p in (getattr(event, "src_path", ""), getattr(event, "dest_path", ""))
            if p
        )
        folders = self._folders
        if not relevant(paths, folders):
            return
        now = self.clock()
        kind = getattr(event, "event_type", "")
        with self._burst.lock:
            if kind in ("created", "deleted", "moved"):
                self._burst.stale.update(p for p in paths if p in folders)
            if paths[-1] == self._file:  # the file itself, or what was moved onto it
                if kind in ("modified", "created"):  # opened for writing, written in place
                    self._burst.in_place = True
                    self._burst.writing = now
                elif kind in ("closed", "deleted", "moved"):  # closed, gone or replaced whole
                    self._burst.writing = None
            elif kind == "moved" and paths[0] == self._file:  # moved away: no writer of ours
                self._burst.writing = None
            if not (kind == "modified" and getattr(event, "is_directory", False)):
                # a folder's own "modified" follows every rename in it: not a new write
                self._burst.renamed = kind == "moved" and paths[-1] == self._file
            if not self._burst.dirty:
                self._burst.first = now
            self._burst.dirty = True
            self._burst.last = now
            self._burst.count += 1
        self.wake()

    def refresh(self) -> None:
        """(Re-)watch the folders `watch_dirs` names now, and their parents; follow swapped or
        recreated folders.

        A watch is renewed when its folder has another inode now, when an event named the folder
        itself (removed, renamed, made), or when its inotify watch ended (the folder was deleted).
        The inode alone cannot tell: a folder removed and made again often gets the same number.
        """
        if self._observer is None:
            return
        folders = watch_dirs(self.path)
        self._folders = frozenset(folders)
        self._file = os.path.realpath(self.path)
        with self._burst.lock:
            stale, self._burst.stale = self._burst.stale, set()
        wanted: dict[str, int] = {}
        for directory in folders | guard_dirs(folders):
            try:
                wanted[directory] = os.stat(directory).st_ino
            except OSError:
                continue
        live = {emitter.watch for emitter in self._observer.emitters if emitter.is_alive()}
        for directory, (watch, inode) in list(self._watches.items()):
            if wanted.get(directory) != inode or directory in stale or watch not in live:
                try:
                    self._observer.unschedule(watch)
                except Exception:  # noqa: BLE001 - its folder may be gone already
                    pass
                del self._watches[directory]
        for directory, inode in wanted.items():
            if directory in self._watches:
                continue
            try:
                watch = self._observer.schedule(self._handler, directory, recursive=False)
            except OSError as exc:
                if directory in folders:
                    self.log.error(
                        f"cannot watch {directory}: {exc.strerror}; changes are picked "
                        f"up every {self.interval:.0f} s instead"
                    )
                else:  # only a parent: the folder's own watch still sees every edit
                    self.log.debug(f"cannot watch {directory}: {exc.strerror}")
                continue
            self._watches[directory] = (watch, inode)
            self.log.debug("watching folder", extra={"fields": {"folder": directory}})

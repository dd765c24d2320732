"""The event source alone, fed watchdog's own event objects at the times of an injected clock:
when a burst is due, and what it says about a file written in place (the real inotify events are
in tests/sidecar/test_watch.py and tests/sidecar/test_watch_inplace.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from watchdog.events import (
    DirModifiedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from reconciler.watch.events import WRITER_HOLD_SECONDS, EventSource


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def source(tmp_path: Path, clock: Clock) -> tuple[EventSource, list[int]]:
    wakes: list[int] = []
    events = EventSource(str(tmp_path / "mailserver.yaml"), clock=clock,
                         wake=lambda: wakes.append(1), log=logging.getLogger("test.events"),
                         interval=60)
    events._folders = frozenset({str(tmp_path)})  # what refresh() sets once the observer runs
    return events, wakes


def test_a_burst_is_due_after_a_quiet_period_but_no_later_than_the_cap(tmp_path: Path) -> None:
    clock = Clock()
    events, wakes = source(tmp_path, clock)
    assert events.due(debounce=0.25, max_delay=2) is None
    for _ in range(10):  # an event every 0.2 s: never quiet, so the cap decides
        events.on_event(FileMovedEvent(str(tmp_path / ".swp"), str(tmp_path / "mailserver.yaml")))
        clock.now += 0.2
    assert events.due(debounce=0.25, max_delay=2) == 102.0
    assert len(wakes) == 10
    taken = events.take()
    assert taken.events == 10 and not taken.in_place  # replaced whole
    assert events.due(debounce=0.25, max_delay=2) is None


def test_our_own_reads_and_other_folders_are_not_events(tmp_path: Path) -> None:
    clock = Clock()
    events, wakes = source(tmp_path, clock)
    events.on_event(FileOpenedEvent(str(tmp_path / "mailserver.yaml")))
    events.on_event(FileModifiedEvent(str(tmp_path / "elsewhere" / "mailserver.yaml")))
    assert wakes == [] and events.due(debounce=0.25, max_delay=2) is None


def test_a_file_open_for_writing_holds_the_burst_until_it_is_closed(tmp_path: Path) -> None:
    clock = Clock()
    events, _ = source(tmp_path, clock)
    path = str(tmp_path / "mailserver.yaml")
    events.on_event(FileModifiedEvent(path))  # truncated, then written
    clock.now += 1.0  # a pause longer than the debounce, longer than the cap
    events.on_event(FileModifiedEvent(path))
    assert events.writer_open()
    assert events.due(debounce=0.25, max_delay=2) == clock.now + WRITER_HOLD_SECONDS
    clock.now += 1.0
    events.on_event(FileClosedEvent(path))
    assert not events.writer_open()
    assert events.due(debounce=0.25, max_delay=2) == 102.0  # the cap, from the first event
    assert events.take().in_place


def test_a_writer_that_never_closes_is_waited_for_a_bounded_time(tmp_path: Path) -> None:
    clock = Clock()
    events, _ = source(tmp_path, clock)
    events.on_event(FileCreatedEvent(str(tmp_path / "mailserver.yaml")))
    assert events.writer_open()
    clock.now += WRITER_HOLD_SECONDS
    assert not events.writer_open()
    assert events.due(debounce=0.25, max_delay=2) == 100.25  # due long ago: looked at now


def test_a_sibling_being_written_does_not_hold_the_file(tmp_path: Path) -> None:
    clock = Clock()
    events, _ = source(tmp_path, clock)
    events.on_event(FileModifiedEvent(str(tmp_path / ".mailserver.yaml.swp")))
    assert not events.writer_open() and not events.take().in_place
    events.on_event(FileModifiedEvent(str(tmp_path / "mailserver.yaml")))
    events.on_event(FileMovedEvent(str(tmp_path / ".new"), str(tmp_path / "mailserver.yaml")))
    assert not events.writer_open()  # replaced whole: the in-place writer's file is gone


def test_a_rename_onto_the_file_is_due_after_the_short_quiet_period_only_as_the_last_event(
        tmp_path: Path) -> None:
    clock = Clock()
    events, _ = source(tmp_path, clock)
    path = str(tmp_path / "mailserver.yaml")
    events.on_event(FileMovedEvent(str(tmp_path / ".swp"), path))  # written whole, then renamed
    events.on_event(DirModifiedEvent(str(tmp_path)))  # inotify reports the folder after it
    assert events.due(debounce=0.25, max_delay=2, quick=0.05) == 100.05
    clock.now += 0.01  # a password file of the same pull lands after it: the full debounce
    events.on_event(FileModifiedEvent(str(tmp_path / "secret.txt")))
    assert events.due(debounce=0.25, max_delay=2, quick=0.05) == 100.26
    events.on_event(FileMovedEvent(str(tmp_path / ".swp"), path))
    taken = events.take()
    assert taken.renamed and not taken.in_place
    events.on_event(FileModifiedEvent(path))  # written in place: never quick, and it settles
    events.on_event(FileClosedEvent(path))
    assert events.due(debounce=0.25, max_delay=2, quick=0.05) == 100.26
    taken = events.take()
    assert not taken.renamed and taken.in_place
    events.on_event(FileMovedEvent(path, str(tmp_path / "old.yaml")))  # moved away: not written
    assert events.due(debounce=0.25, max_delay=2, quick=0.05) == 100.26

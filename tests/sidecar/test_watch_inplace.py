"""A mailserver.yaml written in place, in chunks, while the real `watch` process looks at it: a
valid first part must never be applied (it would delete the accounts of the part still to come);
the complete file is.

Every prefix the writer leaves on disk is itself a valid mailserver.yaml (the chunks end on line
boundaries after `accounts:`), so only the watcher's own care stands between a half-written file and
deleted accounts. The volume is polled throughout.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from reconciler.formats import accounts as accounts_format
from tests.support.util import Volume
from tests.support.watch_process import ADMIN_HASH, WatchProcess, wait_until

ACCOUNTS = 120


def desired(count: int, *, extra: tuple[str, ...] = ()) -> str:
    names = [f"user{i:03d}@example.com" for i in range(count)] + list(extra)
    lines = ["version: 1", "domains: [example.com]", "accounts:"]
    lines += [f'  {name}: {{password_hash: "{ADMIN_HASH}"}}' for name in names]
    return "\n".join(lines) + "\n"


def on_volume(volume: Volume) -> set[str]:
    text = volume.read(accounts_format.FILENAME) or ""
    return {line.split("|", 1)[0] for line in text.splitlines() if "|" in line}


def chunks(text: str, count: int) -> list[str]:
    """`text` cut into `count` pieces at line ends: every prefix is a valid, shorter file."""
    lines = text.splitlines(keepends=True)
    cuts = [len(lines) * i // count for i in range(count + 1)]
    return ["".join(lines[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]


class Poller:
    """Reads the volume's accounts every few milliseconds while the writer writes."""

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.seen: list[set[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen.append(on_volume(self.volume))
            time.sleep(0.01)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def write_in_place(path: Path, pieces: list[str], pause: float, *, reopen: bool) -> None:
    """One writer that keeps the file open (truncate, then write and flush each piece), or one
    that opens, appends and closes for each piece, like `echo ... >> file` in a loop."""
    if not reopen:
        with open(path, "w") as handle:  # truncates: the file is empty, then grows
            for piece in pieces:
                handle.write(piece)
                handle.flush()
                os.fsync(handle.fileno())
                time.sleep(pause)
        return
    for index, piece in enumerate(pieces):
        with open(path, "w" if index == 0 else "a") as handle:
            handle.write(piece)
        time.sleep(pause)


@pytest.mark.parametrize("reopen,pieces,pause", [
    pytest.param(False, 10, 0.4, id="one-open-writer-pausing-longer-than-the-debounce"),
    pytest.param(True, 30, 0.1, id="reopened-per-chunk-for-longer-than-the-burst-cap"),
])
def test_a_file_written_in_place_is_applied_only_once_it_is_complete(
        tmp_path: Path, volume: Volume, reopen: bool, pieces: int, pause: float) -> None:
    path = tmp_path / "desired" / "mailserver.yaml"
    path.parent.mkdir()
    path.write_text(desired(ACCOUNTS))
    everyone = {f"user{i:03d}@example.com" for i in range(ACCOUNTS)}
    args = ["-f", str(path), *volume.args(), "--interval", "3600"]
    with WatchProcess(args, cwd=tmp_path) as watcher:
        watcher.wait_for_log(lambda r: r["message"] == "applied", what="the first apply")
        assert on_volume(volume) == everyone
        mark = watcher.count()
        final = desired(ACCOUNTS, extra=("late@example.com",))
        parts = chunks(final, pieces)
        assert len(parts) == pieces
        with Poller(volume) as poller:
            started = time.monotonic()
            write_in_place(path, parts, pause, reopen=reopen)
            took = time.monotonic() - started
            wait_until(lambda: "late@example.com" in on_volume(volume), 15,
                       "the complete file to be applied")
            time.sleep(0.5)  # and nothing after it
        assert took > 2.0 + pause  # longer than the burst cap (--max-delay 2 s): it was tested
        lost = [everyone - seen for seen in poller.seen if not everyone <= seen]
        assert not lost, (f"{len(lost[0])} accounts deleted while the file was being written, "
                          f"e.g. {sorted(lost[0])[:3]}")
        assert len(poller.seen) > 100  # the volume was really looked at throughout
        applies = [r for r in watcher.records()[mark:] if r["message"] in ("applied",
                                                                           "repaired drift")]
        assert [(r["added"], r["destroyed"]) for r in applies] == [(1, 0)], watcher.raw_log()
        assert on_volume(volume) == everyone | {"late@example.com"}
        assert watcher.terminate() == 0

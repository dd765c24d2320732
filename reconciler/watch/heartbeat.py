"""Is the loop making progress? The heartbeat behind /healthz.

The loop says what it is doing before each step (`busy`) and how long it means to sleep (`idle`).
A step that runs longer than the bound (`--stuck-after`), or a sleep that overruns its wake-up
time by as much, means the loop is wedged (a hung mount, a call that never returns): /healthz
fails with the reason, so an orchestrator restarts the sidecar. Written by the loop, read by the
HTTP threads: each beat replaces one immutable tuple.
"""

from __future__ import annotations

from collections.abc import Callable


class Heartbeat:
    def __init__(self, bound: float, *, clock: Callable[[], float]) -> None:
        self.bound = bound
        self.clock = clock
        # (what the loop does, since when, by when it should be done), None: not started yet
        self._beat: tuple[str, float, float] | None = None

    def busy(self, what: str) -> None:
        """A step starts; it should end within the bound."""
        now = self.clock()
        self._beat = (what, now, now + self.bound)

    def idle(self, until: float) -> None:
        """The loop sleeps until `until` (or an event, or a signal)."""
        now = self.clock()
        self._beat = ("sleeping", now, max(now, until) + self.bound)

    def step(self) -> str | None:
        """What the loop is doing, when it is not sleeping."""
        beat = self._beat
        return None if beat is None or beat[0] == "sleeping" else beat[0]

    def stuck(self) -> str | None:
        """Why the loop is not making progress, or None while it is."""
        beat = self._beat
        if beat is None:
            return None
        what, since, deadline = beat
        now = self.clock()
        if now <= deadline:
            return None
        return (
            f"the loop has been {what} for {now - since:.0f} s, more than the "
            f"{self.bound:g} s a step may take (--stuck-after): it is not making progress"
        )

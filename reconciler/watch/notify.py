"""Notifications: the sidecar tells people what happened, through Apprise.

Targets are Apprise URLs (`json://`, `slack://`, `matrix://`, `mailto://` ...) from
`DMS_RECONCILER_NOTIFY` (separated by spaces, or commas before the next URL) or `--notify-file`
(one or more a line, `#` comments), never from mailserver.yaml: their tokens stay out of git.
Each is checked at start: one Apprise cannot parse stops `watch` with a message naming its
place and scheme (never the URL: it may hold a token).

Sending never holds up a reconcile: `event` only appends to a bounded queue. Each target has its
own thread, so a target that hangs delays no other; a burst of events becomes one message (the
first event waits `gather` seconds for the rest of the burst, and a target gets at most one
message every `every` seconds, holding everything that happened since). A queue that overflows
drops the oldest events and says how many in the next message. Apprise's own timeouts end a
hanging send (4 s connect and read for HTTP targets, by default; `?cto=&rto=` in the URL set
them); the worker then goes on. On stop, what is queued gets `flush_seconds` to go out.

Messages are made from what the log lines say (counts, entry keys, revisions, error messages)
and pass through `errors.redact`: never a password or a hash. Apprise's own logger is silenced
(its lines are not JSON and may name a URL); each failure is logged here, per target, by place
and scheme.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.errors import ReconcilerError, redact

ENV = "DMS_RECONCILER_NOTIFY"
MAX_QUEUED = 200  # events per target; more are dropped, oldest first, and counted
MAX_LINES = 30  # events shown in one message
_SPLIT = re.compile(r"\s+|,(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)")
KINDS = ("applied", "drift", "failed", "suspended", "resumed", "recovered")


@dataclass(frozen=True)
class Event:
    kind: str  # one of KINDS
    text: str
    at: float  # wall time


def split_urls(text: str) -> list[str]:
    """URLs separated by white space, or by commas that start the next URL (a comma inside a
    URL, as in `mailto://...?to=a@x,b@x`, stays)."""
    return [part.strip() for part in _SPLIT.split(text) if part and part.strip()]


def read_urls(environ: dict[str, str] | Any, notify_file: str | None) -> list[tuple[str, str]]:
    """(place, url) for every target: `DMS_RECONCILER_NOTIFY` entry N, `FILE:LINE`."""
    found: list[tuple[str, str]] = []
    for index, url in enumerate(split_urls(environ.get(ENV, "")), start=1):
        found.append((f"{ENV} entry {index}", url))
    if notify_file:
        try:
            with open(notify_file, encoding="utf-8") as handle:
                lines = handle.read(1024 * 1024).splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ReconcilerError(
                f"--notify-file {notify_file}: cannot read it ({reason})"
            ) from None
        for number, line in enumerate(lines, start=1):
            if line.lstrip().startswith("#"):
                continue
            for url in split_urls(line):
                found.append((f"{notify_file}:{number}", url))
    return found


def _scheme(url: str) -> str:
    head = url.split("://", 1)[0] if "://" in url else ""
    return f"{head}://" if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,30}", head) else "no scheme"


class _Target:
    """One Apprise URL with its own queue and thread."""

    def __init__(self, place: str, url: str) -> None:
        import apprise

        self.place = place
        self.scheme = _scheme(url)
        self.apprise = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))
        if not self.apprise.add(url):
            raise ReconcilerError(
                f"{place} ({self.scheme}): not a notification URL Apprise can use; see "
                "https://github.com/caronc/apprise/wiki for the forms. Nothing was started"
            )
        self.events: deque[Event] = deque()
        self.dropped = 0
        self.thread: threading.Thread | None = None

    def describe(self) -> str:
        return f"{self.place} ({self.scheme})"


class Notifier:
    """`event(kind, text)` from the loop; sending happens in one thread per target."""

    def __init__(
        self,
        targets: Iterable[tuple[str, str]],
        *,
        log: logging.Logger,
        gather: float = 2.0,
        every: float = 30.0,
        flush_seconds: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_result: Callable[[str], None] | None = None,
        title: str = "dms-reconciler",
    ) -> None:
        _quiet_apprise()
        self.targets = [_Target(place, url) for place, url in targets]
        self.log = log
        self.gather = gather
        self.every = every
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.wall_clock = wall_clock
        self.on_result = on_result or (lambda result: None)
        self.title = title
        self._cond = threading.Condition()
        self._closing = False

    @classmethod
    def from_config(
        cls, environ: Any, notify_file: str | None, *, log: logging.Logger, **options: Any
    ) -> Notifier | None:
        """The notifier for the configured targets, None when there is none; a broken URL or
        an unreadable file raises ReconcilerError."""
        urls = read_urls(environ, notify_file)
        if not urls:
            return None
        every = environ.get("DMS_RECONCILER_NOTIFY_EVERY")
        if every is not None:
            try:
                options["every"] = max(0.0, float(every))
                options["gather"] = min(options.get("gather", 2.0), options["every"])
            except ValueError:
                raise ReconcilerError(
                    f"DMS_RECONCILER_NOTIFY_EVERY={every!r}: expected seconds, like 30"
                ) from None
        return cls(urls, log=log, **options)

    def describe(self) -> list[str]:
        return [t.describe() for t in self.targets]

    def start(self) -> Notifier:
        for target in self.targets:
            target.thread = threading.Thread(
                target=self._run, args=(target,), name=f"notify-{target.scheme}", daemon=True
            )
            target.thread.start()
        return self

    def event(self, kind: str, text: str) -> None:
        """Queue an event for every target; never blocks (beyond a lock held for microseconds)."""
        item = Event(kind, redact(text), self.wall_clock())
        with self._cond:
            for target in self.targets:
                if len(target.events) >= MAX_QUEUED:
                    target.events.popleft()
                    target.dropped += 1
                target.events.append(item)
            self._cond.notify_all()

    def close(self) -> None:
        """Send what is queued, waiting at most `flush_seconds` in all; a target still sending
        then is left behind (its thread is a daemon)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = self.clock() + self.flush_seconds
        for target in self.targets:
            if target.thread is not None:
                target.thread.join(max(0.0, deadline - self.clock()))

    # --- the worker ------------------------------------------------------------------------------

    def _run(self, target: _Target) -> None:
        last_sent = -float("inf")
        while True:
            with self._cond:
                while not target.events and not self._closing:
                    self._cond.wait()
                if not target.events:
                    return  # closing, nothing left
                first = self.clock()
                due = max(first + self.gather, last_sent + self.every)
                while not self._closing and self.clock() < due:
                    self._cond.wait(max(0.0, due - self.clock()))
                events = list(target.events)
                target.events.clear()
                dropped, target.dropped = target.dropped, 0
            last_sent = self.clock()
            self._send(target, events, dropped)

    def _send(self, target: _Target, events: Sequence[Event], dropped: int) -> None:
        title, body = compose(events, dropped, title=self.title)
        try:
            # Each service's own `notify`, in this daemon thread: `Apprise.notify` dispatches
            # through a thread pool that Python joins at exit, so a target that hangs would
            # keep the sidecar from stopping.
            ok = all([bool(service.notify(body=body, title=title)) for service in target.apprise])
        except Exception as exc:  # noqa: BLE001 - a plugin's bug must not end the worker
            ok = False
            self.log.warning(
                f"notification to {target.describe()} failed ({type(exc).__name__})",
                extra={"fields": {"events": len(events)}},
            )
        else:
            if not ok:
                self.log.warning(
                    f"notification to {target.describe()} failed (refused, unreachable or "
                    "timed out); the events stay in this log",
                    extra={"fields": {"events": len(events)}},
                )
        self.on_result("sent" if ok else "failed")


def compose(
    events: Sequence[Event], dropped: int = 0, *, title: str = "dms-reconciler"
) -> tuple[str, str]:
    """One message for a burst: a title naming the worst event and how many, a line each."""
    order = ("failed", "suspended", "drift", "applied", "resumed", "recovered")
    worst = min(events, key=lambda e: order.index(e.kind) if e.kind in order else len(order))
    more = f" (+{len(events) - 1} more)" if len(events) > 1 else ""
    head = f"{title}: {worst.kind}{more}"
    lines = [
        f"{time.strftime('%H:%M:%SZ', time.gmtime(e.at))} {e.kind}: {e.text}"
        for e in events[-MAX_LINES:]
    ]
    if len(events) > MAX_LINES:
        lines.insert(0, f"({len(events) - MAX_LINES} earlier event(s) not shown; see the log)")
    if dropped:
        lines.insert(0, f"({dropped} earlier event(s) dropped: the target was too slow)")
    host = os.environ.get("HOSTNAME")
    if host:
        lines.append(f"(from the sidecar on {host})")
    return redact(head), redact("\n".join(lines))


def _quiet_apprise() -> None:
    """Apprise logs in plain text through the root logger, sometimes naming a URL: not here."""
    logger = logging.getLogger("apprise")
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = False

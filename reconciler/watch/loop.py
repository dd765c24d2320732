"""The serial reconcile loop of the sidecar, and when it does what.

Level-triggered and serial, like a Kubernetes controller: one reconcile at a time, in the main
thread. `Schedule.next_step` decides, from the clock alone, what the loop does next:

- while DMS applies our last write (the confirmer awaits it): poll DMS when a poll is due; a
  debounced change is only planned, to report it (`preview`), and written once DMS confirms;
- otherwise: ask DMS again about a write it could not be asked about; reconcile a debounced
  change (or one deferred while DMS applied); look again at a change that was still settling
  (written in place: applied only once it reads the same twice, `settle` seconds apart);
  re-plan at the `--interval` (drift repair), on SIGHUP, or after a failed reconcile (1 s
  doubling up to `--interval`);
- else sleep until the earliest of those, or until an event or a signal wakes it (self-pipe).

Every step beats the heartbeat behind /healthz. SIGTERM/SIGINT let the step in flight finish,
then `run` returns 0; a step still running `stop_grace` seconds later is interrupted (the
executor replaces files whole and cleans up as it unwinds), so the process always gets out.
"""

from __future__ import annotations

import math
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from reconciler import log as logs
from reconciler.errors import ReconcilerError
from reconciler.memory import Memory
from reconciler.planner.target import DmsFacts
from reconciler.reconcile import Target
from reconciler.watch import dms as dms_mod
from reconciler.watch.confirm import Confirmer
from reconciler.watch.cycle import SETTLING, ReconcileCycle
from reconciler.watch.events import EventSource, Taken
from reconciler.watch.fastapply import FastApply
from reconciler.watch.health import HealthServer, Metrics, Status
from reconciler.watch.heartbeat import Heartbeat
from reconciler.watch.inputs import InputReader
from reconciler.watch.notify import Notifier
from reconciler.watch.report import Reporter, internal_error

RETRY_FIRST_SECONDS = 1.0  # after a failed reconcile: 1 s, doubling up to --interval

Action = Literal["poll_dms", "preview", "reconfirm", "change", "settle", "resync", "sleep"]


FACTS_RETRY_AFTER = 30.0  # seconds before the engine is asked for DMS facts after a failure


class StopTimedOut(BaseException):
    """Raised in the main thread when the step in flight outlives the stop grace period.

    A BaseException, so that no `except Exception` on the way swallows it; the lock and the
    executor release and clean up on the way out, as they do for Ctrl-C."""


@dataclass
class WatchOptions:
    interval: float = 60.0  # seconds between drift checks
    debounce: float = 0.25  # quiet period after the last event
    quick: float = 0.05  # quiet period after a rename onto the file (written whole)
    max_delay: float = 2.0  # but never wait longer than this after the first event of a burst
    listen: str | None = None  # HOST:PORT for /healthz, /readyz, /metrics
    lock_timeout: float = 120.0
    dms_poll: float = 1.0  # first interval between looks at DMS's checksum file (grows to 5 s)
    settle: float = 0.5  # a change written in place must read the same again after this long
    stuck_after: float = 300.0  # a step running longer makes /healthz fail (the loop is wedged)
    # After SIGTERM the step in flight may run this long, then it is interrupted: under Docker's
    # 10 s stop timeout, so the sidecar gets out on its own (DMS's lock released) before SIGKILL.
    stop_grace: float = 8.0
    # Bring DMS's generated files up to date ourselves under DMS's lock (watch/fastapply.py);
    # False: DMS's change detector applies every change (--no-fast-apply)
    fast_apply: bool = True


@dataclass(frozen=True)
class Step:
    action: Action
    wake_at: float = math.inf  # for "sleep": when something is due


def retry_delay(failures: int, *, interval: float) -> float:
    """Seconds until the next try after `failures` failed reconciles in a row."""
    delay = RETRY_FIRST_SECONDS * 2 ** min(max(failures, 1) - 1, 20)
    return max(RETRY_FIRST_SECONDS, min(interval, delay))


class Schedule:
    """When the next reconcile is due: the interval timer, retries after failures, a resync asked
    for (SIGHUP), and a change deferred while DMS applied our last write."""

    def __init__(self, interval: float, *, clock: Callable[[], float]) -> None:
        self.interval = interval
        self.clock = clock
        self.resync_at = 0.0
        self.resync_requested = False
        self.deferred = False  # a change seen while DMS was applying: reconcile once it confirms
        self.failures = 0  # reconciles in a row that ended in an error
        self.retry_at: float | None = None  # when to try again after an error
        self.settle_at: float | None = None  # when to look again at a change still settling
        self.settle_owed = False  # the deferred change was written in place: let it settle

    def retry_delay(self, failures: int) -> float:
        return retry_delay(failures, interval=self.interval)

    def next_retry_delay(self) -> float:
        """The wait before the next try should the reconcile in flight fail too."""
        return self.retry_delay(self.failures + 1)

    def finished(self, result: str | None) -> None:
        """A reconcile ended with `result` (None: it found nothing to look at). After an error
        (a volume read-only, full or away for a moment, DMS's lock held too long) try again soon,
        not only at the next --interval: the change is written as soon as the volume takes it."""
        if result is None:
            return
        if result == "error":
            self.failures += 1
            self.retry_at = self.clock() + self.retry_delay(self.failures)
        else:
            self.failures = 0
            self.retry_at = None

    def resync_started(self) -> None:
        self.resync_requested = False
        self.retry_at = None

    def resync_done(self) -> None:
        self.resync_at = self.clock() + self.interval

    def next_step(
        self,
        now: float,
        *,
        change_due: float | None,
        dms_poll_at: float | None,
        reconfirm_at: float | None,
    ) -> Step:
        """What to do at `now`. `change_due`: when the pending burst of events is due (None: no
        event); `dms_poll_at`: when to look at DMS again for the write it is applying (None: no
        write awaited); `reconfirm_at`: when to ask DMS again about a write it could not be asked
        about."""
        if dms_poll_at is not None:
            if now >= dms_poll_at:
                return Step("poll_dms")
            if change_due is not None and now >= change_due:
                return Step("preview")
            return Step("sleep", min(dms_poll_at, math.inf if change_due is None else change_due))
        if reconfirm_at is not None and now >= reconfirm_at:
            return Step("reconfirm")
        if self.deferred or (change_due is not None and now >= change_due):
            return Step("change")
        if self.settle_at is not None and now >= self.settle_at:
            return Step("settle")
        retry_due = self.retry_at is not None and now >= self.retry_at
        if now >= self.resync_at or self.resync_requested or retry_due:
            return Step("resync")
        wake_at = self.resync_at
        for due in (self.retry_at, reconfirm_at, change_due, self.settle_at):
            if due is not None:
                wake_at = min(wake_at, due)
        return Step("sleep", wake_at)


class Waker:
    """A self-pipe: `sleep` returns early once `wake` is called (from a thread or a signal)."""

    def __init__(self) -> None:
        self._r = self._w = -1

    def open(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def close(self) -> None:
        fds = (self._r, self._w)
        self._r = self._w = -1  # first, so a late signal never writes to a reused fd
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def wake(self) -> None:
        if self._w < 0:
            return
        try:
            os.write(self._w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: a wake-up is already pending

    def sleep(self, seconds: float) -> None:
        """Until `seconds` pass, or `wake` is called."""
        try:
            readable, _, _ = select.select([self._r], [], [], seconds)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select itself
            return
        if readable:
            try:
                while os.read(self._r, 4096):
                    pass
            except BlockingIOError:
                pass


class Watcher:
    """`run()` blocks until SIGTERM/SIGINT (or `stop()`), then returns 0."""

    def __init__(
        self,
        target: Target,
        options: WatchOptions | None = None,
        *,
        dms: dms_mod.Dms | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        notifier: Notifier | None = None,
    ) -> None:
        self.target = target
        self.options = options or WatchOptions()
        self.dms = dms
        self.metrics = metrics or Metrics()
        self.notifier = notifier
        notify = notifier.event if notifier is not None else None
        self.clock = clock
        self.heartbeat = Heartbeat(self.options.stuck_after, clock=clock)
        self.status = Status(alive=self._alive, stuck=self.heartbeat.stuck)
        self._facts: DmsFacts | None = None  # the DMS release and settings last reported
        self._facts_read_at: float | None = None  # when (clock) they were last asked for
        if dms is not None and target.dms_facts is None:
            target.dms_facts = self._dms_facts  # every plan is made for the DMS seen then
        self.log = logs.get("watch")
        self._stop_requested = False
        self._signals = False  # installed: run() in the main thread
        self._waker = Waker()
        self._server: HealthServer | None = None
        self.events = EventSource(
            target.desired_path,
            clock=clock,
            wake=self._waker.wake,
            log=self.log,
            interval=self.options.interval,
        )
        self.schedule = Schedule(self.options.interval, clock=clock)
        self.confirmer = Confirmer(
            dms,
            config_dir=target.volume.folder,
            metrics=self.metrics,
            status=self.status,
            log=self.log,
            clock=clock,
            poll_seconds=self.options.dms_poll,
            notify=notify,
        )
        self.memory = Memory()  # what this sidecar parsed and verified, for its life
        self.cycle = ReconcileCycle(
            target,
            inputs=InputReader(target),
            reporter=Reporter(
                desired_path=target.desired_path,
                metrics=self.metrics,
                status=self.status,
                log=self.log,
                clock=clock,
                notify=notify,
            ),
            confirmer=self.confirmer,
            memory=self.memory,
            log=self.log,
            clock=clock,
            lock_timeout=self.options.lock_timeout,
            retry_in=self.schedule.next_retry_delay,
            fast_apply=(
                FastApply(dms, target.volume.folder)
                if dms is not None and self.options.fast_apply
                else None
            ),
        )

    def _dms_facts(self) -> DmsFacts:
        """The DMS container's release and settings, read for each plan; logged and exported
        (`dms_reconciler_dms_info`) when they change (a new container, an upgrade). After the
        engine could not say, it is asked again only FACTS_RETRY_AFTER later: a slow or hung
        engine must not cost every change a query timeout."""
        assert self.dms is not None
        now = self.clock()
        if (
            self._facts is not None
            and self._facts.error
            and self._facts_read_at is not None
            and now - self._facts_read_at < FACTS_RETRY_AFTER
        ):
            return self._facts
        self._facts_read_at = now
        facts = self.dms.read_facts()
        if facts != self._facts:
            self._facts = facts
            self.metrics.dms_info.info(facts.info_labels())
            fields = {"fields": {"dms_target": facts.to_dict()}}
            if facts.error:
                self.log.warning(facts.summary(), extra=fields)
            else:
                self.log.info(facts.summary(), extra=fields)
        return facts

    # --- public ---------------------------------------------------------------------------------

    def run(self) -> int:
        self._waker.open()
        self._install_signals()
        if self.options.listen:
            try:
                self._server = HealthServer(self.options.listen, self.metrics, self.status).start()
            except OSError as exc:
                raise ReconcilerError(
                    f"cannot listen on {self.options.listen}: {exc.strerror}"
                ) from None
            except ValueError as exc:
                raise ReconcilerError(str(exc)) from None
            host, port = self._server.address
            self.log.info(
                "serving /healthz, /readyz and /metrics",
                extra={"fields": {"listen": f"{host}:{port}"}},
            )
        try:
            self.events.start()
            if self.notifier is not None:
                self.notifier.start()
            self.log.info(
                "watching for changes",
                extra={
                    "fields": {
                        "file": self.target.desired_path,
                        "config_dir": self.target.volume.folder,
                        "interval_seconds": self.options.interval,
                        "dms": self.dms.describe() if self.dms else "off",
                        "notify": self.notifier.describe() if self.notifier else [],
                    }
                },
            )
            self.heartbeat.busy("reconciling (startup)")
            self.reconcile("startup")
            self.schedule.resync_done()
            while not self._stop_requested:
                self._step()
            self.log.info("stopping: asked to stop; the reconcile in flight, if any, finished")
        except StopTimedOut:
            self.log.warning(
                f"stopping: the step in flight ({self.heartbeat.step() or 'unknown'}) did not end "
                f"within {self.options.stop_grace:g} s of the stop request; interrupted it. "
                "Files are replaced whole: none is left half-written"
            )
        finally:
            self._disarm()
            self._shutdown()
        return 0

    def stop(self) -> None:
        """Ask the loop to stop after the step in flight (safe from a signal handler). A step
        still running `stop_grace` seconds later is interrupted."""
        first = not self._stop_requested
        self._stop_requested = True
        self._waker.wake()
        if first and self.heartbeat.step() is not None:
            self._arm(self.options.stop_grace)

    def resync(self) -> None:
        """Re-plan now, as the timer would (SIGHUP)."""
        self.schedule.resync_requested = True
        self._waker.wake()

    def reconcile(self, trigger: str = "interval", *, settle: bool = False) -> None:
        """One reconcile: load, plan, apply, report. `trigger` is startup, change or interval.
        With `settle`, changed content is applied only once it reads the same after `settle`
        seconds; never while a writer has the file open.

        Never raises: the sidecar must outlive any single failure, including its own bugs.
        """
        result = self.cycle.run(trigger, settle=settle, writer_open=self.events.writer_open())
        if result == SETTLING:
            self.schedule.settle_at = self.clock() + self.options.settle
            return
        self.schedule.settle_at = None
        self.schedule.finished(result)

    # --- the loop -------------------------------------------------------------------------------

    def _needs_settle(self, taken: Taken) -> bool:
        """Written in place, or events still arriving when the burst was taken (the cap)."""
        quiet = self.options.quick if taken.renamed else self.options.debounce
        return taken.in_place or self.clock() - taken.last < quiet

    def _step(self) -> None:
        awaiting = self.confirmer.awaiting
        step = self.schedule.next_step(
            self.clock(),
            change_due=self.events.due(
                debounce=self.options.debounce,
                max_delay=self.options.max_delay,
                quick=self.options.quick,
            ),
            dms_poll_at=None if awaiting is None else awaiting.next_poll,
            reconfirm_at=self.confirmer.reconfirm_at,
        )
        if step.action != "sleep":
            self.heartbeat.busy(_DOING[step.action])
        if step.action == "poll_dms":
            try:
                self.confirmer.poll()
            except Exception as exc:  # never wait forever on a look that keeps crashing
                self.confirmer.awaiting = None
                internal_error(self.log, "checking DMS's confirmation", exc)
        elif step.action == "preview":
            try:
                taken = self.events.take()
                self.schedule.deferred = True  # written once DMS confirms
                self.schedule.settle_owed |= self._needs_settle(taken)
                self.events.refresh()
                self.cycle.preview()
            except Exception as exc:  # only a report: the apply after confirmation decides
                internal_error(self.log, "planning a pending change", exc)
        elif step.action == "reconfirm":
            try:
                self.confirmer.reconfirm()
            except Exception as exc:  # only a report: never stop the loop for it
                self.confirmer.reconfirm_at = None
                internal_error(self.log, "asking DMS again", exc)
        elif step.action == "change":
            settle = self._needs_settle(self.events.take()) or self.schedule.settle_owed
            self.schedule.deferred = self.schedule.settle_owed = False
            self.events.refresh()
            self.reconcile("change", settle=settle)
        elif step.action == "settle":
            self.events.refresh()
            self.reconcile("change", settle=True)
        elif step.action == "resync":
            self.schedule.resync_started()
            self.events.refresh()
            self.reconcile("interval")
            self.schedule.resync_done()
        else:
            self.heartbeat.idle(step.wake_at)
            self._waker.sleep(max(0.0, step.wake_at - self.clock()))

    def _alive(self) -> bool:
        return not self._stop_requested and self.events.alive()

    # --- process --------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._signals = True
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self.resync())
        signal.signal(signal.SIGALRM, self._stop_timed_out)

    def _arm(self, seconds: float) -> None:
        """Interrupt the step in flight in `seconds` (SIGALRM: its handler runs in this thread,
        also while it waits in a system call)."""
        if self._signals:
            signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))

    def _disarm(self) -> None:
        if self._signals:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _stop_timed_out(self, *_: object) -> None:
        if self._stop_requested and self.heartbeat.step() is not None:
            raise StopTimedOut()

    def _shutdown(self) -> None:
        if self.confirmer.awaiting is not None:
            self.log.info(
                "stopping before DMS confirmed the last write; the files are complete "
                "and DMS applies them on its own"
            )
        self.events.stop()
        if self.notifier is not None:
            self.notifier.close()  # what is queued gets a few seconds to go out
        if self._server is not None:
            self._server.close()
        if self.dms is not None:
            self.dms.close()
        self._waker.close()


_DOING: dict[str, str] = {  # what /healthz says the loop is doing, by step
    "poll_dms": "checking DMS's confirmation",
    "preview": "planning a change that waits for DMS",
    "reconfirm": "asking DMS again",
    "change": "reconciling (change)",
    "settle": "reconciling (change)",
    "resync": "reconciling (interval)",
}

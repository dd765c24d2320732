"""The sidecar loop (`dms-reconciler watch`): keep the config volume at mailserver.yaml.

Level-triggered and serial, like a Kubernetes controller:
- a file-system event only means "look again". Events are debounced (a quiet period, capped), and
  the sha256 of the file (and of the password files it names) decides whether anything changed;
- a timer (`--interval`) re-plans from scratch and repairs drift (hand edits to managed entries);
- the reconcile itself is `reconcile.apply_once`, exactly what `apply` runs; one at a time, in
  the main thread. SIGTERM lets the one in flight finish, then the process exits 0;
- an invalid or unreadable file changes nothing: its errors are logged, the last good state stays
  applied (the timer keeps repairing drift against it), /readyz and the metrics show the failure,
  and the next good version is applied;
- after a write, DMS's change detector needs time to regenerate (minutes on a big server). Until
  it confirms (`dms`), new changes are only planned, to report them, and are written together in
  one apply once it confirms or the wait times out.

What is watched is the FOLDER holding the file, resolved, plus the folder of every symlink on the
way: git pulls and editors replace the file (a new inode), Kubernetes ConfigMaps swap a `..data`
symlink, and git-sync swaps the symlink of the whole checkout. The parent of each of those folders
is watched too, for events naming the folder itself: a folder renamed away or removed and made
again is only seen there. Watches are re-resolved after every event, so a swapped or recreated
folder is followed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import select
import signal
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler import dms as dms_mod
from reconciler import log as logs
from reconciler import state as state_file
from reconciler.desired import Loaded, load_desired_bytes, read_desired_bytes
from reconciler.errors import InvalidDesiredState, ReconcilerError, Refused
from reconciler.executor import ApplyResult
from reconciler.formats import amavis
from reconciler.health import HealthServer, Metrics, Status
from reconciler.model import PasswordEnv, PasswordFile
from reconciler.observe import CRON, ENTRY_FILES, read_snapshot
from reconciler.passwords import VerifiedCache
from reconciler.reconcile import Applied, Target, apply_once, plan_once

IGNORED_EVENTS = {"opened", "closed_no_write"}  # our own reads must not wake us up
MAX_SYMLINK_HOPS = 40
UNCONFIRMED_GIVE_UP = 3
RETRY_FIRST_SECONDS = 1.0  # after a failed reconcile: 1 s, doubling up to --interval
RECONFIRM_MAX_SECONDS = 15.0  # DMS could not be asked: look again, 1 s doubling up to this


@dataclass
class WatchOptions:
    interval: float = 60.0  # seconds between drift checks
    debounce: float = 0.25  # quiet period after the last event
    max_delay: float = 2.0  # but never wait longer than this after the first event of a burst
    listen: str | None = None  # HOST:PORT for /healthz, /readyz, /metrics
    lock_timeout: float = 120.0
    dms_poll: float = 1.0  # first interval between looks at DMS's checksum file (grows to 5 s)


@dataclass
class _Awaiting:
    """A write DMS has not confirmed yet."""

    expected: dict[str, str]  # monitored file -> sha512 we wrote
    started: float
    deadline: float
    next_poll: float
    polls: int = 0
    failures: int = 0  # looks in a row that could not ask DMS
    accounts: int = 0  # how big the write was (the timeout grows with it)


@dataclass
class _Events:
    """Shared between the watchdog thread and the loop (guarded by `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    dirty: bool = False
    first: float = 0.0
    last: float = 0.0
    count: int = 0
    stale: set[str] = field(default_factory=set)  # watched folders an event named: watch anew


def _peek_secret_file(path: str) -> bytes | None:
    """The start of a password file, for the change digest; None when it is missing or not a
    regular file. Opened non-blocking: a FIFO put there must not stop the loop (the reconcile
    then reports the file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 8193)
    except OSError:
        return None
    finally:
        os.close(fd)


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
    ) -> None:
        self.target = target
        self.options = options or WatchOptions()
        self.dms = dms
        self.metrics = metrics or Metrics()
        self.status = Status(alive=self._alive)
        self.cache = VerifiedCache()  # memory only: what was verified, for this process's lifetime
        self._input_key = secrets.token_bytes(32)
        self.clock = clock
        self.log = logs.get("watch")
        self._events = _Events()
        self._stop_requested = False
        self._resync_requested = False
        self._wake_r = self._wake_w = -1  # the self-pipe, made by run()
        self._observer: Any = None
        self._watches: dict[str, tuple[Any, int]] = {}  # real dir -> (watch, inode)
        self._folders: frozenset[str] = frozenset()  # watch_dirs now (read by the event thread)
        self._good: Loaded | None = None  # the last valid desired state
        self._digest_seen: str | None = None  # input digest at the last reconcile attempt
        self._digest_applied: str | None = None  # input digest at the last successful reconcile
        self._digest_peeked: str | None = None  # input digest last planned while DMS applied
        # (input digest, volume fingerprint) of the last plan that found nothing to do
        self._clean: tuple[str, dict[str, str | None]] | None = None
        self._invalid_logged: str | None = None
        self._awaiting: _Awaiting | None = None
        self._deferred = False  # a change seen while DMS was applying: reconcile once it confirms
        self._dms_note: str | None = None
        # Writes DMS could not be asked about (no engine, no container), and an Amavis restart
        # that could not be done: looked at again until DMS answers.
        self._unconfirmed: dict[str, str] = {}
        self._unconfirmed_accounts = 0
        self._reload_owed = False
        self._reconfirm_at: float | None = None
        self._reconfirm_tries = 0
        self._next_resync = 0.0
        self._failures = 0  # reconciles in a row that ended in an error
        self._retry_at: float | None = None  # when to try again after an error
        self._server: HealthServer | None = None

    # --- public ---------------------------------------------------------------------------------

    def run(self) -> int:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
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
            self._start_observer()
            self.log.info(
                "watching for changes",
                extra={
                    "fields": {
                        "file": self.target.desired_path,
                        "config_dir": self.target.config_dir,
                        "interval_seconds": self.options.interval,
                        "dms": self.dms.describe() if self.dms else "off",
                    }
                },
            )
            self.reconcile("startup")
            self._next_resync = self.clock() + self.options.interval
            while not self._stop_requested:
                self._step()
            self.log.info("stopping: asked to stop; the reconcile in flight, if any, finished")
        finally:
            self._shutdown()
        return 0

    def stop(self) -> None:
        """Ask the loop to stop after the reconcile in flight (safe from a signal handler)."""
        self._stop_requested = True
        self._wake()

    def resync(self) -> None:
        """Re-plan now, as the timer would (SIGHUP)."""
        self._resync_requested = True
        self._wake()

    # --- the loop -------------------------------------------------------------------------------

    def _step(self) -> None:
        now = self.clock()
        with self._events.lock:
            dirty, first, last = self._events.dirty, self._events.first, self._events.last
        change_due = None
        if dirty:
            change_due = min(last + self.options.debounce, first + self.options.max_delay)
        if self._awaiting is not None:
            if now >= self._awaiting.next_poll:
                try:
                    self._poll_dms()
                except Exception as exc:  # never wait forever on a look that keeps crashing
                    self._awaiting = None
                    self._internal_error("checking DMS's confirmation", exc)
                return
            if change_due is not None and now >= change_due:
                try:
                    self._peek_pending()
                except Exception as exc:  # only a report: the apply after confirmation decides
                    self._internal_error("planning a pending change", exc)
                return
            wake_at = self._awaiting.next_poll
            if change_due is not None:
                wake_at = min(wake_at, change_due)
        else:
            if self._reconfirm_at is not None and now >= self._reconfirm_at:
                try:
                    self._reconfirm()
                except Exception as exc:  # only a report: never stop the loop for it
                    self._reconfirm_at = None
                    self._internal_error("asking DMS again", exc)
                return
            if self._deferred or (change_due is not None and now >= change_due):
                self._deferred = False
                self._take_events()
                self._refresh_watches()
                self.reconcile("change")
                return
            retry_due = self._retry_at is not None and now >= self._retry_at
            if now >= self._next_resync or self._resync_requested or retry_due:
                self._resync_requested = False
                self._retry_at = None
                self._refresh_watches()
                self.reconcile("interval")
                self._next_resync = self.clock() + self.options.interval
                return
            wake_at = self._next_resync
            for due in (self._retry_at, self._reconfirm_at):
                if due is not None:
                    wake_at = min(wake_at, due)
            if change_due is not None:
                wake_at = min(wake_at, change_due)
        self._sleep(max(0.0, wake_at - self.clock()))

    def _sleep(self, seconds: float) -> None:
        """Until `seconds` pass, an event arrives or a signal asks to stop (self-pipe wake-up)."""
        try:
            readable, _, _ = select.select([self._wake_r], [], [], seconds)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select itself
            return
        if readable:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def _wake(self) -> None:
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: a wake-up is already pending

    def _on_event(self, event: Any) -> None:
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
        with self._events.lock:
            if getattr(event, "event_type", "") in ("created", "deleted", "moved"):
                self._events.stale.update(p for p in paths if p in folders)
            if not self._events.dirty:
                self._events.first = now
            self._events.dirty = True
            self._events.last = now
            self._events.count += 1
        self._wake()

    def _take_events(self) -> int:
        with self._events.lock:
            count = self._events.count
            self._events.dirty = False
            self._events.count = 0
        return count

    # --- one reconcile --------------------------------------------------------------------------

    def _read_inputs(self) -> tuple[bytes | None, str, InvalidDesiredState | None]:
        """The desired file's bytes and the digest of everything a reconcile depends on.

        The digest covers the plaintext secrets too (a rotated secret is a change), so it is
        keyed with a per-process random key, like `VerifiedCache`: memory only, and no fast way
        to test password guesses against it.
        """
        digest = hmac.new(self._input_key, digestmod="sha256")
        try:
            data: bytes | None = read_desired_bytes(self.target.desired_path)
            problem = None
        except InvalidDesiredState as exc:
            data, problem = None, exc
        digest.update(b"missing" if data is None else hashlib.sha256(data).digest())
        if self._good is not None:  # a rotated password_file or variable is a change too
            for account in self._good.state.accounts:
                source = account.password
                if isinstance(source, PasswordFile):
                    path = os.path.join(self.target.base_dir, os.path.expanduser(source.path))
                    secret: bytes | None = _peek_secret_file(path)
                elif isinstance(source, PasswordEnv):
                    value = self.target.environ.get(source.name)
                    secret = None if value is None else value.encode("utf-8", "surrogatepass")
                else:
                    continue
                digest.update(hashlib.sha256(repr(source).encode()).digest())
                digest.update(
                    b"\0missing" if secret is None else b"\1" + hashlib.sha256(secret).digest()
                )
        return data, digest.hexdigest(), problem

    def reconcile(self, trigger: str = "interval") -> None:
        """One reconcile: load, plan, apply, report. `trigger` is startup, change or interval.

        Never raises: the sidecar must outlive any single failure, including its own bugs.
        """
        started = self.clock()
        try:
            self._reconcile(trigger, started)
        except Exception as exc:  # a bug: keep running, say what kind, never print local data
            self._internal_error("reconcile", exc)
            self._finish(trigger, "error", started, f"internal error ({type(exc).__name__})")

    def _internal_error(self, where: str, exc: BaseException) -> None:
        self.log.error(
            f"{where} failed with an internal error; please report it",
            extra={"fields": {"error": type(exc).__name__}},
        )
        if os.environ.get("DMS_RECONCILER_DEBUG"):
            self.log.error(logs.safe_traceback(exc))

    def _reconcile(self, trigger: str, started: float) -> None:
        data, digest, problem = self._read_inputs()
        if trigger == "change" and digest == self._digest_seen:
            self.log.debug("an event, but mailserver.yaml and its password files are unchanged")
            return
        self._digest_seen = digest
        if trigger == "interval" and self._still_clean(digest):
            self._finish(trigger, "unchanged", started, "the volume matches", success=True)
            return
        self._clean = None
        loud = trigger != "interval"
        if loud:
            self.log.info("reconciling", extra={"fields": {"trigger": trigger}})
        loaded: Loaded | None = None
        reused = False
        if problem is None and data is not None:
            if self._good is not None and hashlib.sha256(data).hexdigest() == self._good.sha256:
                # The same bytes validate the same way: skip the schema pass (seconds at 10k
                # accounts) on every timer tick.
                loaded, reused = self._good, True
            else:
                try:
                    loaded = load_desired_bytes(data, self.target.desired_path)
                except InvalidDesiredState as exc:
                    problem = exc
        if problem is not None:
            self._report_invalid(problem, digest)
            if self._good is None or trigger != "interval":
                self._finish(
                    trigger,
                    "invalid",
                    started,
                    f"{self.target.desired_path} is invalid; nothing was changed",
                )
                return
            loaded = self._good  # keep the last good state applied: repair drift against it
        else:
            assert loaded is not None
            self._good = loaded
            self._invalid_logged = None
            self.metrics.desired_valid.set(1)
            self.status.update(desired_valid=True)
            for warning in () if reused else loaded.warnings:
                self.log.warning(warning.format())
        try:
            applied = self._quiet_check(loaded) if trigger == "interval" else None
            if applied is None:
                applied = apply_once(
                    self.target,
                    loaded=loaded,
                    cache=self.cache,
                    lock_timeout=self.options.lock_timeout,
                    on_wait=lambda message: self.log.info(message),
                )
        except Refused as exc:
            self._count_pending(loaded)
            self.log.error(f"refused: {exc}")
            self._finish(trigger, "refused", started, str(exc), problem)
            return
        except ReconcilerError as exc:
            self.log.error(
                f"reconcile failed: {exc}",
                extra={
                    "fields": {
                        "error": type(exc).__name__,
                        "retry_in_seconds": self._retry_delay(self._failures + 1),
                    }
                },
            )
            self._finish(trigger, "error", started, str(exc), problem)
            return
        except Exception as exc:  # a bug: keep running, say what kind, never print local data
            self._internal_error("reconcile", exc)
            self._finish(
                trigger, "error", started, f"internal error ({type(exc).__name__})", problem
            )
            return
        self._after_apply(trigger, applied, digest, started, problem)

    def _still_clean(self, digest: str) -> bool:
        """Same inputs and the same volume, byte for byte, as the last plan that found nothing to
        do: the plan would be the same, so skip it (a plan takes about a second at 10k accounts)."""
        if self._clean is None or self._clean[0] != digest:
            return False
        names = {
            name: os.path.join(self.target.config_dir, name)
            for name in (*ENTRY_FILES, amavis.FILENAME, state_file.FILENAME)
        }
        names[CRON] = self.target.cron_path
        try:
            now = {name: read_snapshot(path).sha256 for name, path in sorted(names.items())}
        except ReconcilerError:
            return False
        return now == self._clean[1]

    def _quiet_check(self, loaded: Loaded) -> Applied | None:
        """The timer's common case, nothing to do, for the price of one plan: apply_once would
        plan a second time to prove convergence. None: there is something to apply."""
        planned = plan_once(self.target, loaded=loaded, cache=self.cache)
        own, seen = planned.plan.ownership, planned.observed.ownership
        current = (
            planned.observed.snapshots[state_file.FILENAME].exists
            and own.entries == seen.entries
            and own.owns_cron == seen.owns_cron
        )
        if planned.plan.has_changes or not current:
            return None
        return Applied(planned, ApplyResult((), {}, {}), attempts=0, converged=True)

    def _after_apply(
        self,
        trigger: str,
        applied: Applied,
        digest: str,
        started: float,
        problem: InvalidDesiredState | None,
    ) -> None:
        plan = applied.planned.plan
        written = applied.result.written
        counts = plan.counts
        drifted = (
            bool(written)
            and self._digest_applied is not None
            and (digest == self._digest_applied or problem is not None)
        )
        changed_keys = [f"{c.file}:{c.key}" for c in plan.changes]
        if written:
            self.log.info(
                "applied" if not drifted else "repaired drift",
                extra={
                    "fields": {
                        "trigger": trigger,
                        "added": counts["add"],
                        "changed": counts["change"],
                        "destroyed": counts["destroy"],
                        "files_written": list(written),
                        "entries": changed_keys[:50],
                        "attempts": applied.attempts,
                    }
                },
            )
        elif trigger != "interval":
            self.log.info("no changes: the config volume matches mailserver.yaml")
        self.metrics.drift.set(len(plan.changes) if drifted else 0)
        if drifted:
            self.metrics.drift_repaired.inc(len(plan.changes))
        self.metrics.unmanaged.clear()
        per_file: dict[str, int] = {}
        for entry in plan.unmanaged:
            per_file[entry.file] = per_file.get(entry.file, 0) + 1
        for name, count in per_file.items():
            self.metrics.unmanaged.labels(file=name).set(count)
        self.metrics.managed_accounts.set(len(applied.planned.loaded.state.accounts))
        self.metrics.pending.set(0)
        if problem is None:
            self._digest_applied = digest
        if not written:
            self._forget_stale_verifications(applied)
            if problem is None:
                self._clean = (digest, applied.planned.observed.fingerprint())
        result = "changed" if written else "unchanged"
        if problem is not None:
            self._finish(
                trigger,
                "invalid",
                started,
                f"{self.target.desired_path} is invalid; the last good state stays applied",
                problem,
            )
        else:
            message = (
                f"applied: {counts['add']} added, {counts['change']} changed, "
                f"{counts['destroy']} destroyed"
                if written
                else "the volume matches"
            )
            self._finish(trigger, result, started, message, None, success=True)
        if written:
            try:
                self._after_write(applied)
            except Exception as exc:  # the files are written; only the DMS follow-up failed
                self._internal_error("talking to DMS", exc)

    def _retry_delay(self, failures: int) -> float:
        """Seconds until the next try after `failures` failed reconciles in a row."""
        delay = RETRY_FIRST_SECONDS * 2 ** min(max(failures, 1) - 1, 20)
        return max(RETRY_FIRST_SECONDS, min(self.options.interval, delay))

    def _finish(
        self,
        trigger: str,
        result: str,
        started: float,
        message: str,
        problem: InvalidDesiredState | None = None,
        *,
        success: bool = False,
    ) -> None:
        """Count and publish one reconcile's end. After an error (a volume read-only, full or
        away for a moment, DMS's lock held too long) try again soon, not only at the next
        --interval: the change is written as soon as the volume takes it."""
        if result == "error":
            self._failures += 1
            self._retry_at = self.clock() + self._retry_delay(self._failures)
        else:
            self._failures = 0
            self._retry_at = None
        now = time.time()
        self.metrics.reconciles.labels(result=result, trigger=trigger).inc()
        self.metrics.duration.observe(max(0.0, self.clock() - started))
        self.metrics.last_reconcile.set(now)
        changes: dict[str, Any] = {
            "last_result": result,
            "last_message": message,
            "reconciles": self.status.reconciles + 1,
        }
        if success:
            self.metrics.last_success.set(now)
            changes["last_success"] = now
        self.status.update(**changes)

    def _report_invalid(self, problem: InvalidDesiredState, digest: str) -> None:
        self.metrics.desired_valid.set(0)
        self.status.update(desired_valid=False)
        if self._invalid_logged == digest:
            self.log.warning(
                f"{self.target.desired_path} is still invalid; the last good state stays applied"
            )
            return
        self._invalid_logged = digest
        diagnostics = [d.format() for d in problem.diagnostics]
        self.log.error(
            f"{self.target.desired_path} is invalid; nothing was changed, the last good "
            "state stays applied",
            extra={"fields": {"errors": diagnostics[:100], "error_count": len(diagnostics)}},
        )

    def _count_pending(self, loaded: Loaded) -> None:
        """How many entry changes wait (a refused plan): plan again, read-only."""
        try:
            planned = plan_once(self.target, loaded=loaded, cache=self.cache)
        except Exception:  # noqa: BLE001 - only a metric: the error itself is already logged
            return
        self.metrics.pending.set(len(planned.plan.changes))

    def _forget_stale_verifications(self, applied: Applied) -> None:
        """Keep the cache to the hashes on the volume, so it does not grow with every rotation."""
        live = {
            (address, entry.password_hash)
            for address, entry in applied.planned.observed.accounts.entries.items()
        }
        self.cache.retain(live)

    # --- DMS ------------------------------------------------------------------------------------

    def _after_write(self, applied: Applied) -> None:
        if self.dms is None:
            return
        written = applied.result.written
        # DMS could not be asked after an earlier write and the re-check asks again on its own
        # schedule: do not ask now too. A hung engine would hold the loop for each write.
        out_of_reach = self._reconfirm_at is not None
        if amavis.FILENAME in written:
            self._reload_owed = True
            if not out_of_reach:
                self._reload_amavis(retry=False)
        # what DMS could not be asked about earlier is asked about together with this write
        expected = {**self._unconfirmed, **dms_mod.monitored_checksums(applied.result.sha512)}
        self._unconfirmed = {}
        accounts = max(
            len(applied.planned.loaded.state.accounts),
            len(applied.planned.observed.accounts.entries),
        )
        if out_of_reach:
            assert self._reconfirm_at is not None
            self._unconfirmed, self._unconfirmed_accounts = expected, accounts
            wait = max(0.0, self._reconfirm_at - self.clock())
            self._dms_state(
                "unconfirmed",
                "applied, but could not confirm that DMS picked the "
                f"change up: DMS is still out of reach (asked again in {wait:.0f} s)",
                quiet=True,
            )
            return
        if expected:
            try:
                self.dms.find()
            except dms_mod.DmsUnavailable as exc:
                self._could_not_ask(
                    expected,
                    accounts,
                    f"applied, but could not confirm that DMS picked the change up: {exc}",
                )
            else:
                self._await(expected, accounts)
        self._schedule_reconfirm(first=True)

    def _reload_amavis(self, *, retry: bool) -> None:
        """Restart Amavis for a new amavis.cf. When DMS cannot be asked it stays owed, and is
        done by `_reconfirm` once it can (counted and logged then, not on every try)."""
        assert self.dms is not None
        report = self.dms.reload_amavis()
        if report.state == "unconfirmed" and retry:
            self.log.debug(report.message, extra={"fields": {"service": "amavis"}})
            return
        self._reload_owed = report.state == "unconfirmed"
        self.metrics.dms_reloads.labels(service="amavis", result=report.state).inc()
        level = self.log.info if report.ok else self.log.warning
        level(report.message, extra={"fields": {"service": "amavis", "result": report.state}})

    def _await(self, expected: dict[str, str], accounts: int) -> None:
        timeout = dms_mod.confirm_timeout(accounts)
        now = self.clock()
        self._awaiting = _Awaiting(
            expected, now, now + timeout, now + self.options.dms_poll, accounts=accounts
        )
        self._dms_state(
            "waiting",
            f"waiting for DMS to apply {', '.join(sorted(expected))} (up to {timeout:.0f} s)",
            quiet=True,
        )

    def _could_not_ask(self, expected: dict[str, str], accounts: int, message: str) -> None:
        self._unconfirmed = dict(expected)
        self._unconfirmed_accounts = accounts
        self._dms_state("unconfirmed", message)

    def _schedule_reconfirm(self, *, first: bool = False) -> None:
        if not (self._unconfirmed or self._reload_owed):
            self._reconfirm_at, self._reconfirm_tries = None, 0
            return
        self._reconfirm_tries = 0 if first else self._reconfirm_tries + 1
        delay = min(
            RECONFIRM_MAX_SECONDS, self.options.dms_poll * 2 ** min(self._reconfirm_tries, 20)
        )
        self._reconfirm_at = self.clock() + delay

    def _reconfirm(self) -> None:
        """DMS could not be asked after a write (the engine stopped, the container gone or
        replaced): look again, quietly, until it answers. Then the owed Amavis restart is done,
        and the confirmation is read as after any write (or waited for, if DMS is still busy)."""
        assert self.dms is not None
        self._reconfirm_at = None
        if self._reload_owed:
            self._reload_amavis(retry=True)
        if self._unconfirmed:
            report = self.dms.check_applied(self._unconfirmed, self._current_sha512)
            if report.state == "confirmed":
                self._unconfirmed = {}
                self._dms_state(
                    "confirmed", "DMS applied the change (confirmed once DMS could be asked again)"
                )
            elif report.state == "waiting":  # DMS answers, but has not applied it (yet)
                expected, self._unconfirmed = self._unconfirmed, {}
                self._await(expected, self._unconfirmed_accounts)
            else:
                message = f"applied, but {report.message}"
                self.status.update(dms_message=message)
                self.log.debug(message, extra={"fields": {"dms": "unconfirmed"}})
        self._schedule_reconfirm()

    def _poll_dms(self) -> None:
        awaiting = self._awaiting
        assert awaiting is not None and self.dms is not None
        awaiting.polls += 1
        report = self.dms.check_applied(awaiting.expected, self._current_sha512)
        now = self.clock()
        if report.state == "confirmed":
            took = now - awaiting.started
            self.metrics.dms_confirm_seconds.set(took)
            self._awaiting = None
            self._dms_state("confirmed", f"DMS applied the change in {took:.1f} s")
            return
        awaiting.failures = awaiting.failures + 1 if report.state == "unconfirmed" else 0
        if awaiting.failures >= UNCONFIRMED_GIVE_UP:  # one failed look may be a hiccup; three not
            self._awaiting = None
            self._could_not_ask(
                awaiting.expected, awaiting.accounts, f"applied, but {report.message}"
            )
            self._schedule_reconfirm(first=True)
            return
        if now >= awaiting.deadline:
            self._awaiting = None
            waited = awaiting.deadline - awaiting.started
            self._dms_state(
                "timed_out",
                f"DMS did not confirm the change within {waited:.0f} s "
                f"({report.message}); its change detector may be stuck: see "
                "/var/log/supervisor/changedetector.log in the DMS container. Writing "
                "again is allowed now",
            )
            return
        step = min(5.0, self.options.dms_poll * (1 + awaiting.polls / 10))
        awaiting.next_poll = now + step

    def _current_sha512(self, name: str) -> str | None:
        return dms_mod.file_sha512(os.path.join(self.target.config_dir, name))

    def _dms_state(self, state: str, message: str, *, quiet: bool = False) -> None:
        self.metrics.dms_state.state(state)
        self.metrics.dms_confirmed.set(1 if state == "confirmed" else 0)
        self.status.update(dms=state, dms_message=message)
        # A problem is a warning the first time; the same one on every apply is only noise.
        if not quiet and state != "confirmed" and message != self._dms_note:
            self.log.warning(message, extra={"fields": {"dms": state}})
        else:
            self.log.info(message, extra={"fields": {"dms": state}})
        self._dms_note = message if state != "confirmed" else None

    def _peek_pending(self) -> None:
        """A change arrived while DMS applies our last write: plan it (read-only) to report it;
        it is written, with anything else that arrives, once DMS confirms."""
        self._take_events()
        self._deferred = True  # written once DMS confirms
        self._refresh_watches()
        data, digest, problem = self._read_inputs()
        if digest in (self._digest_seen, self._digest_peeked):
            return
        self._digest_peeked = digest
        try:
            if problem is not None or data is None:
                raise problem or InvalidDesiredState([])
            loaded = load_desired_bytes(data, self.target.desired_path)
            planned = plan_once(self.target, loaded=loaded, cache=self.cache)
        except InvalidDesiredState as exc:
            self._report_invalid(exc, digest)
            return
        except Exception as exc:  # noqa: BLE001 - the apply after the confirmation reports it
            self.log.info(f"a change is waiting for DMS; planning it failed: {type(exc).__name__}")
            return
        pending = len(planned.plan.changes)
        self.metrics.pending.set(pending)
        self.log.info(
            f"mailserver.yaml changed while DMS is still applying the last write; "
            f"{pending} entry change(s) will be written once DMS confirms",
            extra={"fields": {"pending": pending}},
        )

    # --- watching -------------------------------------------------------------------------------

    def _start_observer(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                watcher._on_event(event)

        self._handler = Handler()
        self._observer = Observer()
        self._observer.daemon = True
        self._refresh_watches()
        self._observer.start()

    def _refresh_watches(self) -> None:
        """(Re-)watch the folders `watch_dirs` names now, and their parents; follow swapped or
        recreated folders.

        A watch is renewed when its folder has another inode now, when an event named the folder
        itself (removed, renamed, made), or when its inotify watch ended (the folder was deleted).
        The inode alone cannot tell: a folder removed and made again often gets the same number.
        """
        if self._observer is None:
            return
        folders = watch_dirs(self.target.desired_path)
        self._folders = frozenset(folders)
        with self._events.lock:
            stale, self._events.stale = self._events.stale, set()
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
                        f"up every {self.options.interval:.0f} s instead"
                    )
                else:  # only a parent: the folder's own watch still sees every edit
                    self.log.debug(f"cannot watch {directory}: {exc.strerror}")
                continue
            self._watches[directory] = (watch, inode)
            self.log.debug("watching folder", extra={"fields": {"folder": directory}})

    def _alive(self) -> bool:
        observer = self._observer
        return not self._stop_requested and (observer is None or observer.is_alive())

    # --- process --------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self.resync())

    def _shutdown(self) -> None:
        if self._awaiting is not None:
            self.log.info(
                "stopping before DMS confirmed the last write; the files are complete "
                "and DMS applies them on its own"
            )
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._server is not None:
            self._server.close()
        if self.dms is not None:
            self.dms.close()
        fds = (self._wake_r, self._wake_w)
        self._wake_r = self._wake_w = -1  # first, so a late signal never writes to a reused fd
        for fd in fds:
            if fd >= 0:
                os.close(fd)

"""One reconcile of the sidecar: read the inputs, load, plan, apply, report, hand the write to the
DMS confirmer. The writing itself is `reconcile.apply_once`, exactly what `apply` runs.

It remembers, between cycles, what makes the timer cheap and a bad file harmless: the last valid
desired state (kept applied while the file is invalid), the digest of the inputs last seen and
last applied, and whether the last plan found nothing to do on a byte-identical volume.

A change written in place is applied only once it reads the same twice, a settle period apart
(`run(settle=True)`), and never while a writer has the file open: a valid first half of a file
still being written would delete the accounts of the second half.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence

from reconciler import state as state_file
from reconciler.errors import Diagnostic, InvalidDesiredState, ReconcilerError, Refused
from reconciler.gitrev import GitRevision, revision_of
from reconciler.load.desired import Loaded, load_desired_bytes
from reconciler.memory import Memory
from reconciler.reconcile import Applied, Target, apply_once, plan_once
from reconciler.volume import suspend
from reconciler.volume.executor import ApplyResult
from reconciler.volume.observe import prepare_next_read, read_fingerprint
from reconciler.watch.confirm import Confirmer
from reconciler.watch.fastapply import FastApply, Result
from reconciler.watch.inputs import InputReader, Inputs
from reconciler.watch.report import Reporter, internal_error

SETTLING = "settling"  # run()'s answer when the content may still change: look again shortly


class ReconcileCycle:
    """`run(trigger)` reconciles once and never raises; it returns the result it reported
    (changed, unchanged, invalid, refused, error), None when it found nothing to look at, or
    SETTLING when it did not look because the content may still change."""

    def __init__(
        self,
        target: Target,
        *,
        inputs: InputReader,
        reporter: Reporter,
        confirmer: Confirmer,
        memory: Memory,
        log: logging.Logger,
        clock: Callable[[], float],
        lock_timeout: float,
        retry_in: Callable[[], float],
        fast_apply: FastApply | None = None,
    ) -> None:
        self.target = target
        self.inputs = inputs
        self.reporter = reporter
        self.confirmer = confirmer
        self.memory = memory  # what this process parsed and verified, for its lifetime
        self.log = log
        self.clock = clock
        self.lock_timeout = lock_timeout
        self.retry_in = retry_in  # seconds until the next try should this one fail
        self.fast_apply = fast_apply  # None: DMS's change detector applies every change
        self._fast: Result | None = None  # how the last write was applied (fast apply or DMS)
        self.good: Loaded | None = None  # the last valid desired state
        self._digest_seen: str | None = None  # input digest at the last reconcile attempt
        self._digest_applied: str | None = None  # input digest at the last successful reconcile
        self._digest_peeked: str | None = None  # input digest last planned while DMS applied
        # (input digest, volume fingerprint) of the last plan that found nothing to do
        self._clean: tuple[str, dict[str, str | None]] | None = None
        self._settling: str | None = None  # input digest read while waiting for it to settle
        self._settle_looks = 0  # looks in a row that found the content still changing
        self._good_revision: str | None = None  # the git revision of `good`
        self._revision_problem: str | None = None  # why git could not say, last logged
        self._target_warnings: tuple[str, ...] = ()  # the DMS target's warnings last logged
        self._logged_warnings: set[tuple[str, str]] = set()  # mailserver.yaml's, as logged
        # this reconcile's load (monotonic end, seconds), for fast apply's timing note
        self._loaded_at: float | None = None
        self._load_took = 0.0

    def run(self, trigger: str, *, settle: bool = False, writer_open: bool = False) -> str | None:
        """One reconcile: load, plan, apply, report. `trigger` is startup, change or interval.

        Changed inputs are only used when they are stable: with `settle`, when they read the same
        as at the look before (SETTLING until then); with `writer_open`, not at all (SETTLING).
        Never raises: the sidecar must outlive any single failure, including its own bugs.
        """
        started = self.clock()
        try:
            inputs = self.inputs.read(self.good)
            if self._unsettled(inputs.digest, settle=settle, writer_open=writer_open):
                return SETTLING
            return self._reconcile(trigger, started, inputs)
        except Exception as exc:  # a bug: keep running, say what kind, never print local data
            internal_error(self.log, "reconcile", exc)
            return self._finish(trigger, "error", started, f"internal error ({type(exc).__name__})")

    def preview(self) -> None:
        """A change arrived while DMS applies our last write: plan it (read-only) to report it;
        it is written, with anything else that arrives, once DMS confirms."""
        data, digest, problem = self.inputs.read(self.good)
        if digest in (self._digest_seen, self._digest_peeked):
            return
        self._digest_peeked = digest
        try:
            if problem is not None or data is None:
                raise problem or InvalidDesiredState([])
            loaded = load_desired_bytes(
                data, self.target.desired_path, loader=self.memory.yaml, models=self.memory.models
            )
            planned = plan_once(self.target, loaded=loaded, memory=self.memory)
        except InvalidDesiredState as exc:
            self.reporter.invalid(exc, digest)
            return
        except Exception as exc:  # noqa: BLE001 - the apply after the confirmation reports it
            self.log.info(f"a change is waiting for DMS; planning it failed: {type(exc).__name__}")
            return
        pending = len(planned.plan.changes)
        self.reporter.pending(pending)
        self.log.info(
            f"mailserver.yaml changed while DMS is still applying the last write; "
            f"{pending} entry change(s) will be written once DMS confirms",
            extra={"fields": {"pending": pending}},
        )

    # --- inside ---------------------------------------------------------------------------------

    def _finish(
        self, trigger: str, result: str, started: float, message: str, *, success: bool = False
    ) -> str:
        self.reporter.finish(trigger, result, started, message, success=success)
        return result

    def _unsettled(self, digest: str, *, settle: bool, writer_open: bool) -> bool:
        """Should a look at these inputs wait? Only a change can be unsettled."""
        changed = digest != self._digest_seen
        if changed and (writer_open or (settle and digest != self._settling)):
            self._settle_looks += 1
            self._settling = digest
            if self._settle_looks == 2:  # the first look of a write in place is the usual case
                self.log.info(
                    "mailserver.yaml is still being written; it is applied once its content "
                    "stays the same",
                    extra={"fields": {"writer_open": writer_open}},
                )
            return True
        self._settling, self._settle_looks = None, 0
        return False

    def _reconcile(self, trigger: str, started: float, inputs: Inputs) -> str | None:
        data, digest, problem = inputs
        git = self._revision_of(data)
        if trigger == "change" and digest == self._digest_seen:
            self.log.debug("an event, but mailserver.yaml and its password files are unchanged")
            if digest == self._digest_applied:  # e.g. git-sync checked out a commit that
                self._at_revision(git.revision)  # did not touch the file: the volume matches it
            return None
        self._digest_seen = digest
        found = suspend.read(self.target.volume.folder)
        if found is None:
            self.reporter.not_suspended()
        if trigger == "interval" and found is None and self._still_clean(digest):
            self._at_revision(git.revision)
            return self._finish(trigger, "unchanged", started, "the volume matches", success=True)
        self._clean = None
        self._loaded_at = None
        loud = trigger != "interval"
        if loud:
            self.log.info("reconciling", extra={"fields": {"trigger": trigger}})
        loaded: Loaded | None = None
        reused = False
        if problem is None and data is not None:
            if self.good is not None and hashlib.sha256(data).hexdigest() == self.good.sha256:
                # The same bytes validate the same way: skip the schema pass (seconds at 10k
                # accounts) on every timer tick.
                loaded, reused = self.good, True
            else:
                try:
                    began = time.monotonic()
                    loaded = load_desired_bytes(
                        data,
                        self.target.desired_path,
                        loader=self.memory.yaml,
                        models=self.memory.models,
                    )
                    self._loaded_at = time.monotonic()
                    self._load_took = self._loaded_at - began
                except InvalidDesiredState as exc:
                    problem = exc
        if problem is not None:
            self.reporter.invalid(problem, digest)
            if self.good is None or trigger != "interval":
                return self._finish(
                    trigger,
                    "invalid",
                    started,
                    f"{self.target.desired_path} is invalid; nothing was changed",
                )
            loaded = self.good  # keep the last good state applied: repair drift against it
        else:
            assert loaded is not None
            self.good, self._good_revision = loaded, git.revision
            self.reporter.valid()
            if not reused:
                self._report_warnings(loaded.warnings)
        revision = self._good_revision
        if found is not None:
            return self._plan_only(trigger, started, loaded, found, digest)
        try:
            applied = self._quiet_check(loaded) if trigger == "interval" else None
            if applied is None:
                self._fast = None
                try:
                    applied = apply_once(
                        self.target,
                        loaded=loaded,
                        memory=self.memory,
                        lock_timeout=self.lock_timeout,
                        on_wait=lambda message: self.log.info(message),
                        revision=revision,
                        while_locked=self._while_locked if self.fast_apply else None,
                        before_write=self._before_write if self.fast_apply else None,
                    )
                finally:
                    if self.fast_apply is not None:
                        self._release_fast_apply()
        except suspend.Suspended:  # suspended between our look and the apply's: nothing written
            found = suspend.read(self.target.volume.folder) or suspend.Suspension()
            return self._plan_only(trigger, started, loaded, found, digest)
        except Refused as exc:
            self._count_pending(loaded)
            self.log.error(f"refused: {exc}")
            return self._finish(trigger, "refused", started, str(exc))
        except ReconcilerError as exc:
            self.log.error(
                f"reconcile failed: {exc}",
                extra={
                    "fields": {"error": type(exc).__name__, "retry_in_seconds": self.retry_in()}
                },
            )
            return self._finish(trigger, "error", started, str(exc))
        except Exception as exc:  # a bug: keep running, say what kind, never print local data
            internal_error(self.log, "reconcile", exc)
            return self._finish(trigger, "error", started, f"internal error ({type(exc).__name__})")
        return self._after_apply(trigger, applied, digest, started, problem, revision)

    def _revision_of(self, data: bytes | None) -> GitRevision:
        """The git revision of the bytes just read; a problem is logged once (it is no failure)."""
        if data is None:
            return GitRevision()
        found = revision_of(self.target.desired_path, data)
        if found.problem and found.problem != self._revision_problem:
            self.log.warning(f"{found.problem}; reconciling without it")
        self._revision_problem = found.problem
        return found

    def _at_revision(self, revision: str | None) -> None:
        """The volume matches the current file, now at `revision` (its bytes unchanged)."""
        if revision != self._good_revision:
            self._good_revision = revision
            if revision:
                self.log.info(
                    "mailserver.yaml is unchanged at a new git revision",
                    extra={"fields": {"revision": revision}},
                )
        self.reporter.revision(revision)

    def _plan_only(
        self,
        trigger: str,
        started: float,
        loaded: Loaded,
        found: suspend.Suspension,
        digest: str,
    ) -> str:
        """Suspended: plan (read-only) and report what waits; write nothing."""
        try:
            planned = plan_once(self.target, loaded=loaded, memory=self.memory)
        except ReconcilerError as exc:
            self.log.error(f"suspended, and planning failed: {exc}")
            return self._finish(trigger, "error", started, str(exc))
        pending = len(planned.plan.changes)
        drifted = bool(pending) and digest == self._digest_applied
        self.reporter.suspended(found, pending=pending, drifted=drifted)
        waiting = f"; {pending} entry change(s) wait" if pending else ""
        return self._finish(
            trigger, "suspended", started, f"the config volume is {found.describe()}{waiting}"
        )

    def _report_warnings(self, warnings: Sequence[Diagnostic]) -> None:
        """mailserver.yaml's warnings, each logged once while it stands: a save logs the new
        ones (10,000 accounts may carry 10,000 of them; a line added above moves every
        position, so a warning is known by its path and message), and says how many stand."""
        current = {(w.path, w.message) for w in warnings}
        new = [w for w in warnings if (w.path, w.message) not in self._logged_warnings]
        for warning in new:
            self.log.warning(warning.format())
        if len(new) < len(current):
            self.log.info(
                f"{self.target.desired_path}: {len(current) - len(new)} warning(s) logged before "
                "still stand (`dms-reconciler validate` lists them all)"
            )
        self._logged_warnings = current

    def _report_target(self, warnings: tuple[str, ...]) -> None:
        """What the DMS container's release and settings mean for mailserver.yaml: logged when
        it changes (not at every reconcile), as `dms_target_warning` lines."""
        if warnings == self._target_warnings:
            return
        self._target_warnings = warnings
        for warning in warnings:
            self.log.warning(warning, extra={"fields": {"dms_target_warning": True}})

    def _still_clean(self, digest: str) -> bool:
        """Same inputs and the same volume, byte for byte, as the last plan that found nothing to
        do: the plan would be the same, so skip it (a plan takes about a second at 10k accounts)."""
        if self._clean is None or self._clean[0] != digest:
            return False
        try:
            now = read_fingerprint(self.target.volume)
        except ReconcilerError:
            return False
        return now == self._clean[1]

    def _quiet_check(self, loaded: Loaded) -> Applied | None:
        """The timer's common case, nothing to do, for the price of one plan: apply_once would
        plan a second time to prove convergence. None: there is something to apply."""
        planned = plan_once(self.target, loaded=loaded, memory=self.memory)
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
        revision: str | None,
    ) -> str:
        plan = applied.planned.plan
        written = applied.result.written
        counts = plan.counts
        for warning in applied.planned.observed.warnings:  # e.g. an unreadable state file
            self.log.warning(warning)
        self._report_target(plan.target_warnings)
        drifted = (
            bool(written)
            and self._digest_applied is not None
            and (digest == self._digest_applied or problem is not None)
        )
        self.reporter.applied(
            trigger=trigger,
            plan=plan,
            written=written,
            drifted=drifted,
            attempts=applied.attempts,
            accounts=len(applied.planned.loaded.state.accounts),
            revision=revision,
        )
        if problem is None:
            self._digest_applied = digest
        if not written:
            self._forget_stale_verifications(applied)
            if problem is None:
                self._clean = (digest, applied.planned.observed.fingerprint())
        if problem is not None:
            result = self._finish(
                trigger,
                "invalid",
                started,
                f"{self.target.desired_path} is invalid; the last good state stays applied",
            )
        else:
            message = (
                f"applied: {counts['add']} added, {counts['change']} changed, "
                f"{counts['destroy']} destroyed"
                if written
                else "the volume matches"
            )
            result = self._finish(
                trigger, "changed" if written else "unchanged", started, message, success=True
            )
        if written:
            accounts = max(
                len(applied.planned.loaded.state.accounts),
                len(applied.planned.observed.accounts.entries),
            )
            try:
                self.confirmer.after_write(
                    written, applied.result.sha512, accounts, applied_by=self._fast
                )
            except Exception as exc:  # the files are written; only the DMS follow-up failed
                internal_error(self.log, "talking to DMS", exc)
            self._prepare_next_read()
        return result

    def _before_write(self, names: tuple[str, ...]) -> None:
        """Under DMS's lock, before a write: fast apply holds DMS's checksum record aside."""
        assert self.fast_apply is not None
        if self.fast_apply.timed and self._loaded_at is not None:
            self.fast_apply.lead(
                [("load", self._load_took), ("plan", time.monotonic() - self._loaded_at)]
            )
        try:
            self.fast_apply.prepare(names)
        except Exception as exc:  # a bug: the write goes on, DMS's change detector still applies
            internal_error(self.log, "fast apply", exc)

    def _release_fast_apply(self) -> None:
        assert self.fast_apply is not None
        try:
            self.fast_apply.release()
        except Exception as exc:  # a bug: the container's watchdog puts DMS's record back
            internal_error(self.log, "fast apply", exc)

    def _while_locked(self, written: tuple[str, ...]) -> None:
        """Still under DMS's lock after a write: fast apply (never raises: a failure leaves the
        change to DMS's change detector, and says so)."""
        assert self.fast_apply is not None
        try:
            result = self.fast_apply.run(written)
        except Exception as exc:  # a bug: DMS's change detector still applies the change
            internal_error(self.log, "fast apply", exc)
            result = Result("dms", f"fast apply failed (internal error {type(exc).__name__})")
        if result is not None:
            self._fast = result
            # DMS out of reach is the confirmer's to report (once); other fallbacks are warnings
            quiet = result.path == "fast" or result.unreachable
            level = self.log.info if quiet else self.log.warning
            level(result.message, extra={"fields": {"fast_apply": result.path}})

    def _prepare_next_read(self) -> None:
        """Parse what was just written now, while nothing waits, instead of at the start of the
        next change. A volume that cannot be read now is reported by that change's own read."""
        try:
            prepare_next_read(self.target.volume, self.memory.parses)
        except ReconcilerError:
            pass

    def _count_pending(self, loaded: Loaded) -> None:
        """How many entry changes wait (a refused plan): plan again, read-only."""
        try:
            planned = plan_once(self.target, loaded=loaded, memory=self.memory)
        except Exception:  # noqa: BLE001 - only a metric: the error itself is already logged
            return
        self.reporter.pending(len(planned.plan.changes))

    def _forget_stale_verifications(self, applied: Applied) -> None:
        """Keep the cache to the hashes on the volume, so it does not grow with every rotation."""
        live = {
            (address, entry.password_hash)
            for address, entry in applied.planned.observed.accounts.entries.items()
        }
        self.memory.verified.retain(live)

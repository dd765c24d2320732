"""What each reconcile tells monitoring: the Prometheus metrics, the status behind /healthz and
/readyz, and the log lines that go with them. Writes nothing but metrics, status and log."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from reconciler import log as logs
from reconciler.errors import InvalidDesiredState
from reconciler.plan import Plan
from reconciler.volume.suspend import Suspension
from reconciler.watch.health import Metrics, Status


def internal_error(log: logging.Logger, where: str, exc: BaseException) -> None:
    """A bug: say what kind, never the message (it may hold local data); the frames on request."""
    log.error(
        f"{where} failed with an internal error; please report it",
        extra={"fields": {"error": type(exc).__name__}},
    )
    if os.environ.get("DMS_RECONCILER_DEBUG"):
        log.error(logs.safe_traceback(exc))


class Reporter:
    """Publishes reconcile results. `clock` times the reconciles; timestamps are wall time."""

    def __init__(
        self,
        *,
        desired_path: str,
        metrics: Metrics,
        status: Status,
        log: logging.Logger,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
        notify: Callable[[str, str], None] | None = None,
    ) -> None:
        self.desired_path = desired_path
        self.metrics = metrics
        self.status = status
        self.log = log
        self.clock = clock
        self.wall_clock = wall_clock
        self.notify = notify or (lambda kind, text: None)  # `Notifier.event`: never blocks
        self._invalid_logged: str | None = None  # the digest of the invalid file last logged
        self._failure_notified: str | None = None  # the failure last notified, until a success
        self._suspended: str | None = None  # the suspension last reported

    def finish(
        self, trigger: str, result: str, started: float, message: str, *, success: bool = False
    ) -> None:
        """Count and publish one reconcile's end."""
        now = self.wall_clock()
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
        if result in ("refused", "error"):
            self.failed(f"{result}: {message}")
        elif success and self._failure_notified is not None:
            self._failure_notified = None
            self.notify("recovered", "the config volume matches mailserver.yaml again")

    def failed(self, text: str) -> None:
        """A failure people should hear of: notified once, until it changes or a success."""
        if text != self._failure_notified:
            self._failure_notified = text
            self.notify("failed", text)

    def valid(self) -> None:
        """The current desired file is valid."""
        self._invalid_logged = None
        self.metrics.desired_valid.set(1)
        self.status.update(desired_valid=True)

    def invalid(self, problem: InvalidDesiredState, digest: str) -> None:
        """The current desired file is invalid: its errors in full once, then a short reminder."""
        self.metrics.desired_valid.set(0)
        self.status.update(desired_valid=False)
        if self._invalid_logged == digest:
            self.log.warning(
                f"{self.desired_path} is still invalid; the last good state stays applied"
            )
            return
        self._invalid_logged = digest
        diagnostics = [d.format() for d in problem.diagnostics]
        shown = "; ".join(diagnostics[:5]) + (" ..." if len(diagnostics) > 5 else "")
        self.failed(
            f"{self.desired_path} is invalid ({len(diagnostics)} error(s)); nothing was changed, "
            f"the last good state stays applied: {shown}"
        )
        self.log.error(
            f"{self.desired_path} is invalid; nothing was changed, the last good "
            "state stays applied",
            extra={"fields": {"errors": diagnostics[:100], "error_count": len(diagnostics)}},
        )

    def pending(self, changes: int) -> None:
        self.metrics.pending.set(changes)

    def applied(
        self,
        *,
        trigger: str,
        plan: Plan,
        written: Sequence[str],
        drifted: bool,
        attempts: int,
        accounts: int,
        revision: str | None = None,
    ) -> None:
        """An apply (or a plan that found nothing to do) ended: its log line and gauges.
        `revision`: the git revision of the desired state applied (None: not from git)."""
        counts = plan.counts
        changed_keys = [f"{c.file}:{c.key}" for c in plan.changes]
        at = {"revision": revision} if revision else {}
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
                        "attempts": attempts,
                        **at,
                    }
                },
            )
            shown = ", ".join(changed_keys[:10]) + (" ..." if len(changed_keys) > 10 else "")
            where = f" at git revision {short(revision)}" if revision else ""
            if drifted:
                self.notify(
                    "drift",
                    f"repaired drift: {len(changed_keys)} hand-edited entr"
                    f"{'y' if len(changed_keys) == 1 else 'ies'} put back{where}: {shown}",
                )
            else:
                self.notify(
                    "applied",
                    f"{counts['add']} added, {counts['change']} changed, {counts['destroy']} "
                    f"destroyed{where}; files written: {', '.join(written)}"
                    + (f"; entries: {shown}" if shown else ""),
                )
        elif trigger != "interval":
            self.log.info(
                "no changes: the config volume matches mailserver.yaml", extra={"fields": at}
            )
        self.revision(revision)
        self.metrics.drift.set(len(plan.changes) if drifted else 0)
        if drifted:
            self.metrics.drift_repaired.inc(len(plan.changes))
        self.metrics.unmanaged.clear()
        per_file: dict[str, int] = {}
        for entry in plan.unmanaged:
            per_file[entry.file] = per_file.get(entry.file, 0) + 1
        for name, count in per_file.items():
            self.metrics.unmanaged.labels(file=name).set(count)
        self.metrics.managed_accounts.set(accounts)
        self.metrics.pending.set(0)

    def revision(self, revision: str | None) -> None:
        """The git revision the volume now matches (metric and status)."""
        if revision == self.status.revision:
            return
        self.metrics.applied_revision.clear()
        if revision:
            self.metrics.applied_revision.labels(revision=revision).set(1)
        self.status.update(revision=revision)

    def suspended(self, found: Suspension, *, pending: int, drifted: bool) -> None:
        """The volume is suspended: nothing was written; `pending` entry changes wait."""
        self.metrics.suspended.set(1)
        self.metrics.pending.set(pending)
        self.metrics.drift.set(pending if drifted else 0)
        self.status.update(suspended=found.to_dict())
        described = found.describe()
        if described != self._suspended:
            self._suspended = described
            if found.warning:
                self.log.warning(found.warning)
            self.log.warning(
                f"the config volume is {described}; planning and reporting only, nothing is "
                "written until `dms-reconciler resume`",
                extra={"fields": {"pending": pending, "suspended": found.to_dict()}},
            )
            self.notify(
                "suspended",
                f"{described}. Changes are planned, not written"
                + (f"; {pending} entry change(s) wait" if pending else ""),
            )
        elif pending:
            self.log.info(
                f"suspended: {pending} entry change(s) wait for `dms-reconciler resume`",
                extra={"fields": {"pending": pending, "drift": drifted}},
            )

    def not_suspended(self) -> None:
        """No marker (any more): say so once when it was there."""
        if self._suspended is None:
            return
        self._suspended = None
        self.metrics.suspended.set(0)
        self.status.update(suspended=None)
        self.log.warning("resumed: the suspension marker is gone; writing again")
        self.notify("resumed", "the suspension ended; dms-reconciler writes again")


def short(revision: str | None) -> str:
    """12 hex digits, `-dirty` kept."""
    if not revision:
        return ""
    return revision[:12] + ("-dirty" if revision.endswith("-dirty") else "")

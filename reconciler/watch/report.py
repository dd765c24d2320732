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
    ) -> None:
        self.desired_path = desired_path
        self.metrics = metrics
        self.status = status
        self.log = log
        self.clock = clock
        self.wall_clock = wall_clock
        self._invalid_logged: str | None = None  # the digest of the invalid file last logged

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
    ) -> None:
        """An apply (or a plan that found nothing to do) ended: its log line and gauges."""
        counts = plan.counts
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
                        "attempts": attempts,
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
        self.metrics.managed_accounts.set(accounts)
        self.metrics.pending.set(0)

"""What the sidecar tells monitoring: `/healthz`, `/readyz` and Prometheus `/metrics` on --listen.

- `/healthz` (liveness) answers 200 while the reconcile loop and the file watch are alive and the
  loop makes progress (a step that runs longer than `--stuck-after` makes it 503, with the reason).
  An invalid mailserver.yaml does NOT make it fail: restarting the sidecar would not fix a bad
  commit. The body (JSON) still says what is wrong.
- `/readyz` answers 200 once the volume matches the current mailserver.yaml: the last reconcile
  succeeded and the file is valid. A bad file, a refused plan, an error or a suspension
  (`dms-reconciler suspend`: status "suspended") make it 503, with the reason in the body.
- `/metrics`: the Prometheus text format, from a registry of our own (so tests can make several).

The HTTP server runs in daemon threads; `Status` is the only state they share with the loop, and
it is guarded by a lock.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from reconciler import __version__

RESULTS = ("changed", "unchanged", "invalid", "refused", "error", "suspended")
DMS_STATES = ("none", "waiting", "confirmed", "timed_out", "unconfirmed")


class Metrics:
    """Every metric the sidecar exports, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = "dms_reconciler_"
        self.reconciles = Counter(
            p + "reconciles",
            "Reconciles by result: changed (files "
            "written), unchanged, invalid (mailserver.yaml), refused (safety "
            "rule), error",
            ["result", "trigger"],
            registry=r,
        )
        self.duration = Histogram(
            p + "reconcile_duration_seconds",
            "Time to load, plan and apply",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.last_success = Gauge(
            p + "last_success_timestamp_seconds",
            "When the volume last matched mailserver.yaml (Unix time)",
            registry=r,
        )
        self.last_reconcile = Gauge(
            p + "last_reconcile_timestamp_seconds",
            "When the last reconcile ended, whatever its result",
            registry=r,
        )
        self.desired_valid = Gauge(
            p + "desired_valid", "1 when the current mailserver.yaml is valid", registry=r
        )
        self.pending = Gauge(
            p + "pending_changes",
            "Entry changes known but not written yet (waiting for DMS, refused or failed)",
            registry=r,
        )
        self.drift = Gauge(
            p + "drift_entries",
            "Entries the last reconcile found changed on the "
            "volume by hand while mailserver.yaml stayed the same",
            registry=r,
        )
        self.drift_repaired = Counter(
            p + "drift_repaired_entries", "Hand-edited managed entries put back", registry=r
        )
        self.unmanaged = Gauge(
            p + "unmanaged_entries",
            "Entries on the volume this tool did not write, by file",
            ["file"],
            registry=r,
        )
        self.managed_accounts = Gauge(
            p + "managed_accounts", "Accounts mailserver.yaml declares", registry=r
        )
        self.dms_state = Enum(
            p + "dms_confirmation",
            "Did DMS's change detector apply our last write (none: nothing to confirm yet)",
            states=list(DMS_STATES),
            registry=r,
        )
        self.dms_confirmed = Gauge(
            p + "dms_confirmed", "1 when DMS confirmed our last write", registry=r
        )
        self.dms_confirm_seconds = Gauge(
            p + "dms_confirm_duration_seconds",
            "How long DMS took to apply our last confirmed write",
            registry=r,
        )
        self.dms_reloads = Counter(
            p + "dms_reloads", "Reloads run in the DMS container", ["service", "result"], registry=r
        )
        self.applied_revision = Gauge(
            p + "applied_revision_info",
            "The git revision of mailserver.yaml the volume last matched (`-dirty`: not the "
            "committed bytes); no series when the file is not in git",
            ["revision"],
            registry=r,
        )
        self.suspended = Gauge(
            p + "suspended",
            "1 while the config volume is suspended (dms-reconciler suspend): nothing is written",
            registry=r,
        )
        self.notifications = Counter(
            p + "notifications",
            "Notification messages by result (sent, failed) per target",
            ["result"],
            registry=r,
        )
        self.info = Info(p + "build", "Version of dms-reconciler", registry=r)
        self.dms_info = Info(
            p + "dms",
            "The DMS container's release (DMS_RELEASE) and the settings that decide what "
            "mailserver.yaml can do there (found=false: could not be read)",
            registry=r,
        )
        self.info.info({"version": __version__})
        self.dms_state.state("none")
        for sent in ("sent", "failed"):
            self.notifications.labels(result=sent)
        for result in RESULTS:  # show every series from the start, so rate() works at once
            for trigger in ("startup", "change", "interval"):
                self.reconciles.labels(result=result, trigger=trigger)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class Status:
    """The loop's view of itself, read by the HTTP handlers."""

    started: float = field(default_factory=time.time)
    reconciles: int = 0
    last_result: str | None = None
    last_message: str = "not reconciled yet"
    last_success: float | None = None
    desired_valid: bool | None = None
    dms: str = "none"
    dms_message: str = ""
    revision: str | None = None  # the git revision the volume last matched
    suspended: dict[str, Any] | None = None  # the suspension marker, while there is one
    alive: Callable[[], bool] = lambda: True
    stuck: Callable[[], str | None] = lambda: None  # why the loop makes no progress, if it does not
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self, key, value)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "version": __version__,
                "uptime_seconds": round(time.time() - self.started, 1),
                "reconciles": self.reconciles,
                "last_result": self.last_result,
                "last_message": self.last_message,
                "last_success": self.last_success,
                "desired_valid": self.desired_valid,
                "dms": {"state": self.dms, "message": self.dms_message},
                "revision": self.revision,
                "suspended": self.suspended,
            }

    def live(self) -> bool:
        return self.not_live() is None

    def not_live(self) -> str | None:
        """Why /healthz fails, or None while the loop and the file watch are alive."""
        if not self.alive():
            return "the loop is stopping or the file watch ended"
        return self.stuck()

    def ready(self) -> bool:
        with self._lock:
            return (
                self.last_result in ("changed", "unchanged")
                and bool(self.desired_valid)
                and self.suspended is None
            )


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.metrics.render(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            reason = self.server.status.not_live()
            body = {"status": "ok" if reason is None else "failing"}
            if reason is not None:
                body["reason"] = reason
            self._json(200 if reason is None else 503, {**body, **self.server.status.snapshot()})
        elif path == "/readyz":
            ok = self.server.status.ready()
            snapshot = self.server.status.snapshot()
            status = "ready" if ok else "suspended" if snapshot["suspended"] else "not ready"
            self._json(200 if ok else 503, {**snapshot, "status": status})
        else:
            self._json(404, {"error": "not found", "paths": ["/healthz", "/readyz", "/metrics"]})

    def do_HEAD(self) -> None:
        self.do_GET()

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, (json.dumps(body) + "\n").encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes every few seconds would drown the log


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], metrics: Metrics, status: Status) -> None:
        self.metrics = metrics
        self.status = status
        super().__init__(address, _Handler)


class _Server6(_Server):
    address_family = socket.AF_INET6


class HealthServer:
    """Serves the three endpoints in a background thread until `close`."""

    def __init__(self, listen: str, metrics: Metrics, status: Status) -> None:
        host, port = parse_listen(listen)
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, port), metrics, status)
        bound = self._server.server_address
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="health-http",
            kwargs={"poll_interval": 0.5},
            daemon=True,
        )

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def parse_listen(listen: str) -> tuple[str, int]:
    """`0.0.0.0:9000`, `:9000`, `9000`, `[::]:9000` -> (host, port)."""
    text = listen.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif text.isdigit():
        host, port = "", text
    else:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, like 0.0.0.0:9000")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {listen!r}: the port must be a number from 0 to 65535")
    return host or "0.0.0.0", int(port)

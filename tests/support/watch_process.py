"""Run the real `python -m reconciler watch` process and talk to it like monitoring would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.util import PYTHONPATH, Volume, sha512_hash

ADMIN_HASH = sha512_hash("admin-password", "adminsalt")  # the admin account of the watch tests


def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def postmaster_target(volume: Volume) -> str | None:
    """The targets of postmaster@example.com in the volume's postfix-virtual.cf, if any."""
    for line in (volume.read("postfix-virtual.cf") or "").splitlines():
        if line.startswith("postmaster@example.com "):
            return line.split(" ", 1)[1]
    return None


def save_atomically(path: Path, text: str) -> None:
    """What editors and git do: a new file beside the old one, renamed over it."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


class WatchProcess:
    """`python -m reconciler watch ...` with JSON logs in a file and --listen on a free port."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
                 listen: bool = True) -> None:
        logs = cwd / "logs"  # not in the watched folder: our reads of it must not be events
        logs.mkdir(exist_ok=True)
        self.log_path = logs / f"watch-{time.monotonic_ns()}.log"
        self.stdout_path = self.log_path.with_suffix(".out")  # empty, unless something prints
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith("DMS_") and k != "DOCKER_HOST"}
        full_env.update({"PYTHONPATH": PYTHONPATH, "DMS_RECONCILER_LOG_FORMAT": "json",
                         "PYTHONUNBUFFERED": "1"})
        full_env.update(env or {})
        extra = ["--listen", "127.0.0.1:0"] if listen else []
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._out = open(self.stdout_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "watch", *args, *extra],
            cwd=cwd, env=full_env, stdout=self._out, stderr=self._log,
        )
        self.base_url: str | None = None
        if listen:
            try:
                line = self.wait_for_log(
                    lambda r: r.get("message", "").startswith("serving /healthz"),
                    what="the health server")
            except BaseException:
                self.kill()  # never leave a watcher running behind a failed test
                raise
            self.base_url = f"http://{line['listen']}"

    # --- logs -----------------------------------------------------------------------------------

    def raw_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def raw_stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.raw_log().splitlines():
            if line.strip():
                out.append(json.loads(line))  # every line must be one JSON object
        return out

    def wait_for_log(self, predicate: Callable[[dict[str, Any]], bool], *, after: int = 0,
                     timeout: float = 15.0, what: str = "a log line") -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"the watcher exited ({self.proc.returncode}) while waiting "
                                     f"for {what}; log:\n{self.raw_log()}")
            for record in self.records()[after:]:
                if predicate(record):
                    return record
            return None

        try:
            return wait_until(found, timeout, what)  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; log:\n{self.raw_log()}") from None

    def count(self) -> int:
        return len(self.records())

    # --- HTTP -----------------------------------------------------------------------------------

    def get(self, path: str) -> tuple[int, str]:
        assert self.base_url
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, parsed by Prometheus' own text parser."""
        code, text = self.get("/metrics")
        assert code == 200
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        """The sum over the series of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        samples = self.metrics().items()
        return sum(v for (n, have), v in samples if n == name and wanted <= set(have))

    # --- lifetime -------------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()
            self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        self._out.close()

    def __enter__(self) -> WatchProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

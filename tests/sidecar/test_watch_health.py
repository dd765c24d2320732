"""A wedged step in the real `watch` process: /healthz says so, and SIGTERM still gets it out.

The step is held by a real blocking condition: DMS's change-detector lock, written into the volume
as DMS writes it (a uuid token, fresh), which every apply waits for (up to two minutes). /healthz
is asked over real HTTP; the process is stopped with a real SIGTERM.
"""

from __future__ import annotations

import json
import signal
import textwrap
import time
from pathlib import Path

from reconciler.volume.lock import LOCK_NAME
from tests.support.util import Volume
from tests.support.watch_process import ADMIN_HASH, WatchProcess, wait_until

DMS_TOKEN = "5f0c8a9e-1111-2222-3333-444455556666\n"  # DMS's lock.sh writes a uuid
STUCK_AFTER = 2.0
STOP_GRACE = 8.0  # WatchOptions.stop_grace


def start_behind_dms_lock(tmp_path: Path, volume: Volume) -> WatchProcess:
    path = tmp_path / "desired" / "mailserver.yaml"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(f"""\
        version: 1
        domains: [example.com]
        accounts:
          admin@example.com: {{password_hash: "{ADMIN_HASH}"}}
        """))
    (volume.config / LOCK_NAME).write_text(DMS_TOKEN)  # DMS is applying a change
    watcher = WatchProcess(["-f", str(path), *volume.args(), "--interval", "3600",
                            "--stuck-after", str(STUCK_AFTER)], cwd=tmp_path)
    watcher.wait_for_log(lambda r: "DMS is applying a change" in r["message"],
                         what="the startup reconcile waiting for DMS's lock")
    return watcher


def healthz(watcher: WatchProcess) -> tuple[int, dict[str, object]]:
    code, body = watcher.get("/healthz")
    return code, json.loads(body)


def test_a_step_that_makes_no_progress_fails_healthz_with_the_reason_until_it_ends(
        tmp_path: Path, volume: Volume) -> None:
    with start_behind_dms_lock(tmp_path, volume) as watcher:
        code, body = wait_until(lambda: (r := healthz(watcher))[0] == 503 and r, 15,
                                "/healthz to report the stuck step")
        assert body["status"] == "failing"
        reason = str(body["reason"])
        assert "reconciling (startup)" in reason and "--stuck-after" in reason, reason
        assert watcher.get("/readyz")[0] == 503  # nothing applied yet, either
        assert volume.read("postfix-accounts.cf") is None

        (volume.config / LOCK_NAME).unlink()  # DMS is done: the step goes on and ends
        watcher.wait_for_log(lambda r: r["message"] == "applied", what="the apply")
        code, body = wait_until(lambda: (r := healthz(watcher))[0] == 200 and r, 10,
                                "/healthz to recover")
        assert body["status"] == "ok" and "reason" not in body
        assert "admin@example.com|" in (volume.read("postfix-accounts.cf") or "")
        assert watcher.terminate() == 0


def test_sigterm_during_a_step_that_never_ends_exits_in_bounded_time_and_writes_nothing(
        tmp_path: Path, volume: Volume) -> None:
    with start_behind_dms_lock(tmp_path, volume) as watcher:
        before = volume.snapshot()
        mark = watcher.count()
        sent = time.monotonic()
        watcher.proc.send_signal(signal.SIGTERM)
        code = watcher.proc.wait(30)
        took = time.monotonic() - sent
        assert code == 0, watcher.raw_log()
        assert STOP_GRACE <= took < STOP_GRACE + 10  # the grace period, then out
        stopping = [r for r in watcher.records()[mark:] if r["message"].startswith("stopping")]
        assert len(stopping) == 1 and "reconciling (startup)" in stopping[0]["message"]
        assert "none is left half-written" in stopping[0]["message"]
        # Nothing was written, no temp file is left and DMS's lock is DMS's, untouched.
        assert volume.snapshot() == before
        assert sorted(p.name for p in volume.config.iterdir()) == [LOCK_NAME]
        assert "Traceback" not in watcher.raw_log()

"""A user-owned password on the real DMS v15.1.0: created with its initial password, changed by
the user with DMS's own `setup email update`, and then left alone: the next plan is empty, the
sidecar (with the Docker socket, confirming against DMS) writes nothing over two resyncs, and the
user's new password logs in over IMAP while the initial one no longer does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.realdms import harness
from tests.realdms.harness import DmsVolume, RealDms, wait_until
from tests.support.util import run_cli, sha512_hash
from tests.support.watch_process import WatchProcess

pytestmark = pytest.mark.realdms

INITIAL = "jane-initial-Pw-1"
USERS_OWN = "jane-chose-this-Pw-2"
ADMIN = "admin-Pw-3"
ENV = {"JANE_INITIAL": INITIAL}
DESIRED = f"""\
version: 1
hostname: {harness.HOSTNAME}
domains: [example.org]
accounts:
  admin@example.org: {{password_hash: "{sha512_hash(ADMIN, 'adminsalt')}"}}
  jane@example.org:
    password_env: JANE_INITIAL
    update_password: on_create
aliases:
  postmaster@example.org: admin@example.org
"""


def snapshot(volume: DmsVolume) -> dict[str, tuple[bytes, int, int]]:
    out = {}
    for path in sorted(volume.config.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(volume.root))] = (path.read_bytes(), st.st_mtime_ns,
                                                       st.st_ino)
    return out


@pytest.fixture(scope="module")
def dms(realdms_root: Path, start_real_dms: Any) -> Iterator[tuple[RealDms, Path]]:
    volume = DmsVolume(realdms_root / "dms")
    desired = realdms_root / "gitops" / "mailserver.yaml"
    desired.parent.mkdir()
    desired.write_text(DESIRED)
    plan = run_cli("plan", "-f", str(desired), *volume.args(), env=ENV)
    assert plan.returncode == 0, plan.stderr
    assert "initial password only (update_password: on_create) for jane@example.org" in \
        " ".join(plan.stdout.split()), plan.stdout
    applied = run_cli("apply", "-f", str(desired), *volume.args(), env=ENV)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    yield start_real_dms(volume, name="realdms-user-owned"), desired


def test_created_with_the_initial_password(dms: tuple[RealDms, Path]) -> None:
    server, _ = dms
    wait_until(lambda: server.imap_login("jane@example.org", INITIAL), 60,
               "jane's initial password to log in")


def test_changed_by_its_user_and_never_reverted(dms: tuple[RealDms, Path], real_engine: Any,
                                                realdms_root: Path) -> None:
    server, desired = dms
    volume = server.volume
    # the user (here through DMS's own tool) picks a new password
    server.sh('setup email update jane@example.org "$P"', env={"P": USERS_OWN})
    wait_until(lambda: server.imap_login("jane@example.org", USERS_OWN), 120,
               "DMS to take the user's new password")
    assert not server.imap_login("jane@example.org", INITIAL)

    plan = run_cli("plan", "-f", str(desired), *volume.args(), "--detailed-exitcode", env=ENV)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "No changes." in plan.stdout

    before = snapshot(volume)
    watcher = WatchProcess(
        ["-f", str(desired), *volume.args(), "--container", server.name, "--interval", "1"],
        cwd=realdms_root, env={**ENV, "DOCKER_HOST": real_engine.url})
    try:
        total = "dms_reconciler_reconciles_total"
        wait_until(lambda: watcher.metric(total) >= 3, 60,
                   "the startup reconcile and two resyncs")
        assert watcher.metric(total, result="changed") == 0, watcher.raw_log()
        assert watcher.metric(total, result="unchanged") >= 3, watcher.raw_log()
    finally:
        assert watcher.terminate() == 0
    assert snapshot(volume) == before  # not a byte written, not a file touched
    assert server.imap_login("jane@example.org", USERS_OWN)
    assert not server.imap_login("jane@example.org", INITIAL)
    assert server.imap_login("admin@example.org", ADMIN)

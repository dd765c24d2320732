"""`dms-reconciler suspend` / `resume`: while the marker is in the config volume, apply refuses
(exit 1, saying why and since when, nothing written) and plan says so. A marker that is a
symlink, a folder or not JSON also suspends, with a warning, and nothing under it is lost."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

from reconciler.volume import suspend
from tests.support.util import REPO, make_volume, run_cli, sha512_hash, write_desired
from tests.support.watch_process import wait_until

HASH = sha512_hash("admin-pass", salt="adminsalt")
DESIRED = f"""
version: 1
domains: [example.com]
accounts:
  admin@example.com: {{password_hash: "{HASH}"}}
aliases:
  postmaster@example.com: admin@example.com
"""


def setup(tmp_path: Path):
    volume = make_volume(tmp_path / "vol")
    file = write_desired(tmp_path / "mailserver.yaml", DESIRED)
    return volume, ["-f", str(file), *volume.args()]


def test_apply_refuses_while_suspended_and_writes_after_resume(tmp_path):
    volume, args = setup(tmp_path)
    done = run_cli("suspend", "--config-dir", str(volume.config), "--reason", "DMS upgrade to v16")
    assert done.returncode == 0, done.stderr
    marker = json.loads((volume.config / suspend.FILENAME).read_text())
    assert marker["reason"] == "DMS upgrade to v16" and marker["since"].endswith("Z") and marker["by"]
    before = volume.snapshot()

    refused = run_cli("apply", *args)
    assert refused.returncode == 1
    assert "suspended since " + marker["since"] in refused.stderr
    assert "DMS upgrade to v16" in refused.stderr and "nothing was written" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert volume.snapshot() == before

    as_json = run_cli("apply", *args, "--format", "json")
    assert as_json.returncode == 1 and "suspended" in json.loads(as_json.stdout)["error"]

    plan = run_cli("plan", *args, "--format", "json")
    assert plan.returncode == 0
    data = json.loads(plan.stdout)
    assert data["suspended"]["reason"] == "DMS upgrade to v16" and data["summary"]["has_changes"]
    assert any("apply refuses until" in n for n in data["notes"])
    assert volume.snapshot() == before

    again = run_cli("suspend", "--config-dir", str(volume.config), "--reason", "other")
    assert again.returncode == 0 and "Already suspended" in again.stdout
    assert json.loads((volume.config / suspend.FILENAME).read_text()) == marker

    assert run_cli("resume", "--config-dir", str(volume.config)).returncode == 0
    assert not (volume.config / suspend.FILENAME).exists()
    applied = run_cli("apply", *args)
    assert applied.returncode == 0, applied.stderr
    assert "postmaster@example.com admin@example.com" in volume.read("postfix-virtual.cf")
    assert "not suspended" in run_cli("resume", "--config-dir", str(volume.config)).stdout


def test_a_saved_plan_is_refused_too(tmp_path):
    volume, args = setup(tmp_path)
    saved = tmp_path / "plan.out"
    assert run_cli("plan", *args, "--out", str(saved)).returncode == 0
    assert run_cli("suspend", "--config-dir", str(volume.config)).returncode == 0
    before = volume.snapshot()
    refused = run_cli("apply", str(saved))
    assert refused.returncode == 1 and "suspended since" in refused.stderr
    assert volume.snapshot() == before


def test_a_symlink_marker_suspends_and_resume_removes_only_the_link(tmp_path):
    volume, args = setup(tmp_path)
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (volume.config / suspend.FILENAME).symlink_to(target)
    before = volume.snapshot()
    refused = run_cli("apply", *args)
    assert refused.returncode == 1 and "is a symlink" in refused.stderr
    assert volume.snapshot() == before
    done = run_cli("resume", "--config-dir", str(volume.config))
    assert done.returncode == 0, done.stderr
    assert not os.path.lexists(volume.config / suspend.FILENAME)
    assert target.read_text() == "keep me\n"


def test_a_folder_marker_suspends_and_is_never_removed(tmp_path):
    volume, args = setup(tmp_path)
    folder = volume.config / suspend.FILENAME
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    refused = run_cli("apply", *args)
    assert refused.returncode == 1 and "is a directory" in refused.stderr
    kept = run_cli("resume", "--config-dir", str(volume.config))
    assert kept.returncode == 1 and "not removing it" in kept.stderr
    assert (folder / "notes.txt").read_text() == "mine\n"
    again = run_cli("suspend", "--config-dir", str(volume.config))
    assert again.returncode == 0 and "is a directory" in again.stderr
    assert (folder / "notes.txt").read_text() == "mine\n"


def test_a_marker_that_is_not_json_suspends(tmp_path):
    volume, args = setup(tmp_path)
    (volume.config / suspend.FILENAME).write_text("maintenance\n")
    refused = run_cli("apply", *args)
    assert refused.returncode == 1 and "unreadable" in refused.stderr
    assert run_cli("resume", "--config-dir", str(volume.config)).returncode == 0
    assert run_cli("apply", *args).returncode == 0


def test_suspend_waits_for_an_apply_in_flight_and_one_waiting_then_refuses(tmp_path):
    """An apply holds the peer lock (flock on the config folder) while it writes: suspend waits
    for it. An apply that was waiting for that lock when the marker came checks it again."""
    volume, args = setup(tmp_path)
    fd = os.open(volume.config, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as an apply in flight holds it
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
    env["PYTHONPATH"] = str(REPO)
    err = tmp_path / "apply.err"
    try:
        busy = run_cli("suspend", "--config-dir", str(volume.config), "--lock-timeout", "0.3")
        assert busy.returncode == 1 and "not suspended, try again" in busy.stderr
        assert not (volume.config / suspend.FILENAME).exists()
        with open(err, "w") as handle:
            apply = subprocess.Popen([sys.executable, "-m", "reconciler", "apply", *args],
                                     env=env, stderr=handle, stdout=subprocess.DEVNULL)
        wait_until(lambda: "waiting for another dms-reconciler" in err.read_text(),
                   timeout=30, what="apply waiting for the peer lock")
        # the marker arrives after the apply's first check, before it holds the lock
        (volume.config / suspend.FILENAME).write_text('{"reason": "incident"}')
        before = volume.snapshot()
    finally:
        os.close(fd)
    assert apply.wait(60) == 1
    assert "incident" in err.read_text()
    assert volume.snapshot() == before

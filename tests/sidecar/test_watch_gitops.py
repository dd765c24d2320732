"""The real `watch` process operated the GitOps way: the git revision it applied (log lines,
/metrics, the state file, notifications) through git-sync's worktree swaps; notifications to real
targets, slow and failing ones included; suspend and resume."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import pytest

from reconciler import state
from tests.support.ci_util import git, make_repo
from tests.support.receivers import HangingServer, JsonReceiver, refusing_url
from tests.support.util import Volume, make_volume, run_cli
from tests.support.watch_process import ADMIN_HASH, WatchProcess, save_atomically, wait_until

REACT = 20.0


def desired(target: str = "admin@example.com") -> str:
    return textwrap.dedent(f"""\
        version: 1
        domains: [example.com]
        accounts:
          admin@example.com:
            password_hash: "{ADMIN_HASH}"
        aliases:
          postmaster@example.com: {target}
        """)


def start(tmp_path: Path, file: Path, volume: Volume, env: dict[str, str]) -> WatchProcess:
    watcher = WatchProcess(["-f", str(file), *volume.args(), "--interval", "3600"],
                           cwd=tmp_path, env=env)
    try:
        watcher.wait_for_log(lambda r: r["message"] in ("applied", "no changes: the config "
                                                        "volume matches mailserver.yaml"),
                             what="the first apply")
    except BaseException:
        watcher.kill()
        raise
    return watcher


@pytest.fixture
def receiver():
    server = JsonReceiver()
    yield server
    server.close()


def swap(root: Path, repo_root: Path, commit: str) -> None:
    """git-sync: a worktree for the new commit, then the `current` symlink swapped to it."""
    worktree = root / ".worktrees" / commit
    git(repo_root, "worktree", "add", "-q", "--detach", str(worktree), commit)
    tmp = root / "current.tmp"
    tmp.symlink_to(Path(".worktrees") / commit)
    os.replace(tmp, root / "current")


def test_the_applied_revision_follows_git_sync(tmp_path, receiver):
    repo = make_repo(tmp_path / "repo")
    one = repo.commit(desired(), "one")
    root = tmp_path / "git-sync"
    root.mkdir()
    swap(root, repo.root, one)
    volume = make_volume(tmp_path / "vol")
    env = {"DMS_RECONCILER_NOTIFY": receiver.url, "DMS_RECONCILER_NOTIFY_EVERY": "0"}
    with start(tmp_path, root / "current" / "mailserver.yaml", volume, env) as watcher:
        first = watcher.wait_for_log(lambda r: r["message"] == "applied", what="first apply")
        assert first["revision"] == one
        assert watcher.metric("dms_reconciler_applied_revision_info", revision=one) == 1
        assert state.parse(volume.read(state.FILENAME))[0].revision == one
        receiver.wait_for(f"at git revision {one[:12]}")

        two = repo.commit(desired("other@example.net"), "two")
        mark = watcher.count()
        swap(root, repo.root, two)
        applied = watcher.wait_for_log(lambda r: r["message"] == "applied", after=mark,
                                       timeout=REACT, what="the apply of commit two")
        assert applied["revision"] == two
        assert "other@example.net" in volume.read("postfix-virtual.cf")
        assert state.parse(volume.read(state.FILENAME))[0].revision == two
        receiver.wait_for(f"at git revision {two[:12]}")

        # A commit that does not touch mailserver.yaml: nothing written, the revision follows.
        (repo.root / "README").write_text("docs\n")
        git(repo.root, "add", "README")
        git(repo.root, "commit", "-q", "-m", "three")
        three = git(repo.root, "rev-parse", "HEAD")
        before = volume.snapshot()
        mark = watcher.count()
        swap(root, repo.root, three)
        watcher.wait_for_log(lambda r: r.get("revision") == three, after=mark, timeout=REACT,
                             what="the new revision noticed")
        wait_until(lambda: watcher.metric("dms_reconciler_applied_revision_info",
                                          revision=three) == 1, REACT, "the metric")
        assert watcher.metric("dms_reconciler_applied_revision_info", revision=two) == 0
        assert volume.snapshot() == before
        assert json.loads(watcher.get("/readyz")[1])["revision"] == three


def test_notifications_never_hold_up_reconciles(tmp_path, receiver):
    """A target that hangs and one that refuses: the reconciles go on, the good target hears of
    each, and the process still stops at once."""
    hanging = HangingServer()
    file = tmp_path / "config-repo" / "mailserver.yaml"
    file.parent.mkdir()
    file.write_text(desired())
    volume = make_volume(tmp_path / "vol")
    env = {"DMS_RECONCILER_NOTIFY": f"{hanging.url(120)} {refusing_url()},{receiver.url}",
           "DMS_RECONCILER_NOTIFY_EVERY": "0"}
    try:
        with start(tmp_path, file, volume, env) as watcher:
            receiver.wait_for("2 added")
            wait_until(lambda: hanging.open_connections == 1, REACT, "the hanging send")
            watcher.wait_for_log(lambda r: "entry 2 (json://) failed" in r["message"],
                                 what="the refused target's warning")
            for n in range(2):
                mark = watcher.count()
                save_atomically(file, desired(f"team{n}@example.net"))
                watcher.wait_for_log(lambda r: r["message"] == "applied", after=mark,
                                     timeout=REACT, what=f"apply {n}")
                wait_until(lambda: len(receiver.messages) == n + 2, REACT,  # noqa: B023
                           f"the notification of apply {n}")
            assert hanging.accepted == 1 and hanging.open_connections == 1  # still stuck
            assert watcher.metric("dms_reconciler_notifications_total", result="failed") >= 1
            assert watcher.terminate(timeout=15) == 0
            raw = watcher.raw_log()
            assert f":{receiver.port}" not in raw and f":{hanging.port}" not in raw  # no URL
            assert ADMIN_HASH not in raw and "$6$" not in "".join(receiver.texts())
    finally:
        hanging.close()


def test_a_broken_notify_url_stops_watch_before_anything_runs(tmp_path):
    file = tmp_path / "mailserver.yaml"
    file.write_text(desired())
    volume = make_volume(tmp_path / "vol")
    done = run_cli("watch", "-f", str(file), *volume.args(),
                   env={"DMS_RECONCILER_NOTIFY": "nosuchservice://t0ken-123@host"})
    assert done.returncode == 1
    assert "DMS_RECONCILER_NOTIFY entry 1 (nosuchservice://)" in done.stderr
    assert "t0ken-123" not in done.stderr and "Traceback" not in done.stderr
    assert list(volume.config.iterdir()) == []


def test_suspend_makes_the_sidecar_plan_and_report_only(tmp_path, receiver):
    file = tmp_path / "config-repo" / "mailserver.yaml"
    file.parent.mkdir()
    file.write_text(desired())
    volume = make_volume(tmp_path / "vol")
    env = {"DMS_RECONCILER_NOTIFY": receiver.url, "DMS_RECONCILER_NOTIFY_EVERY": "0"}
    with start(tmp_path, file, volume, env) as watcher:
        assert watcher.get("/readyz")[0] == 200
        done = run_cli("suspend", "--config-dir", str(volume.config), "--reason", "DMS upgrade")
        assert done.returncode == 0, done.stderr
        mark = watcher.count()
        watcher.proc.send_signal(signal.SIGHUP)  # look now rather than at the interval
        watcher.wait_for_log(lambda r: "suspended since" in r["message"], after=mark,
                             what="the suspension noticed")
        code, body = watcher.get("/readyz")
        assert code == 503 and json.loads(body)["status"] == "suspended"
        assert json.loads(body)["suspended"]["reason"] == "DMS upgrade"
        assert watcher.metric("dms_reconciler_suspended") == 1
        receiver.wait_for("DMS upgrade")

        before = volume.snapshot()
        mark = watcher.count()
        save_atomically(file, desired("waiting@example.net"))  # a change: planned, not written
        watcher.wait_for_log(lambda r: r["message"].startswith("suspended: 1 entry change"),
                             after=mark, timeout=REACT, what="the pending change reported")
        assert watcher.metric("dms_reconciler_pending_changes") == 1
        assert watcher.metric("dms_reconciler_reconciles_total", result="suspended") >= 2
        assert volume.snapshot() == before

        assert run_cli("resume", "--config-dir", str(volume.config)).returncode == 0
        mark = watcher.count()
        watcher.proc.send_signal(signal.SIGHUP)
        watcher.wait_for_log(lambda r: r["message"] == "applied", after=mark, timeout=REACT,
                             what="the apply after resume")
        assert "waiting@example.net" in volume.read("postfix-virtual.cf")
        assert watcher.get("/readyz")[0] == 200
        assert watcher.metric("dms_reconciler_suspended") == 0
        receiver.wait_for("resumed")


def test_an_invalid_file_is_notified_once_and_its_repair_too(tmp_path, receiver):
    file = tmp_path / "config-repo" / "mailserver.yaml"
    file.parent.mkdir()
    file.write_text(desired())
    volume = make_volume(tmp_path / "vol")
    env = {"DMS_RECONCILER_NOTIFY": receiver.url, "DMS_RECONCILER_NOTIFY_EVERY": "0"}
    with start(tmp_path, file, volume, env) as watcher:
        receiver.wait_for("2 added")
        for n in range(2):  # the same problem twice, as a second edit that is still broken
            mark = watcher.count()
            save_atomically(file, desired() + f"bogus_{n}: true\n")
            watcher.wait_for_log(lambda r: "invalid" in r["message"], after=mark, timeout=REACT,
                                 what=f"invalid file {n}")
        receiver.wait_for("is invalid")
        mark = watcher.count()
        save_atomically(file, desired("fixed@example.net"))
        watcher.wait_for_log(lambda r: r["message"] == "applied", after=mark, timeout=REACT,
                             what="the fixed file applied")
        receiver.wait_for("matches mailserver.yaml again")
        texts = receiver.texts()
        assert sum("is invalid" in t for t in texts) == 2  # each new broken version, once
        assert ADMIN_HASH not in "".join(texts)

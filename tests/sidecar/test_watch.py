"""The real `watch` process on a temporary volume: edits are followed, drift is repaired, an
invalid file changes nothing, SIGTERM never tears a file, and /metrics moves with the reconciles.

Every test starts `python -m reconciler watch` as a separate process, edits files the way git,
editors and Kubernetes do, and looks only at the volume, the JSON log and the HTTP endpoints.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.util import Volume
from tests.support.watch_process import ADMIN_HASH, WatchProcess, save_atomically, wait_until

REACT = 10.0  # generous for a loaded CI machine; --interval is an hour, so only events can do it


def desired(alias_target: str = "admin@example.com", *, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        version: 1
        domains: [example.com]
        accounts:
          admin@example.com:
            password_hash: "{ADMIN_HASH}"
            quota: 1G
        aliases:
          postmaster@example.com: {alias_target}
        """) + extra


def watch_args(desired_path: Path, volume: Volume, *more: str) -> list[str]:
    return ["-f", str(desired_path), *volume.args(), *more]


def virtual_line(volume: Volume, key: str) -> str | None:
    text = volume.read("postfix-virtual.cf") or ""
    return next((line for line in text.splitlines() if line.startswith(key + " ")), None)


def started(tmp_path: Path, volume: Volume, desired_path: Path, *more: str,
            env: dict[str, str] | None = None) -> WatchProcess:
    watcher = WatchProcess(watch_args(desired_path, volume, "--interval", "3600", *more),
                           cwd=tmp_path, env=env)
    first = ("applied", "no changes: the config volume matches mailserver.yaml")
    try:
        watcher.wait_for_log(lambda r: r["message"] in first, what="the first apply")
    except BaseException:
        watcher.kill()
        raise
    return watcher


def configmap_write(folder: Path, text: str, generation: int) -> None:
    """What the kubelet does for a ConfigMap volume: new timestamped folder, `..data` swapped."""
    new_dir = folder / f"..2024_01_01_00_00_{generation:02d}.{generation}"
    new_dir.mkdir()
    (new_dir / "mailserver.yaml").write_text(text)
    tmp_link = folder / "..data_tmp"
    tmp_link.symlink_to(new_dir.name)
    old = os.readlink(folder / "..data") if (folder / "..data").is_symlink() else None
    os.replace(tmp_link, folder / "..data")
    if old:
        for child in (folder / old).iterdir():
            child.unlink()
        (folder / old).rmdir()


def gitsync_write(root: Path, text: str, generation: int) -> None:
    """What git-sync does: a new worktree, the `current` symlink swapped, the old one removed."""
    worktree = root / ".worktrees" / f"commit{generation}"
    worktree.mkdir(parents=True)
    (worktree / "mailserver.yaml").write_text(text)
    tmp_link = root / "current.tmp"
    tmp_link.symlink_to(f".worktrees/commit{generation}")
    old = os.readlink(root / "current") if (root / "current").is_symlink() else None
    os.replace(tmp_link, root / "current")
    if old:
        for child in (root / old).iterdir():
            child.unlink()
        (root / old).rmdir()


@pytest.mark.parametrize("how", ["plain", "atomic", "configmap", "gitsync"])
def test_volume_follows_an_edit_within_seconds(tmp_path: Path, volume: Volume, how: str) -> None:
    if how == "configmap":
        folder = tmp_path / "configmap"
        folder.mkdir()
        configmap_write(folder, desired(), 1)
        (folder / "mailserver.yaml").symlink_to("..data/mailserver.yaml")
        path = folder / "mailserver.yaml"
    elif how == "gitsync":
        root = tmp_path / "git"
        gitsync_write(root, desired(), 1)
        path = root / "current" / "mailserver.yaml"
    else:
        path = tmp_path / "mailserver.yaml"
        path.write_text(desired())
    with started(tmp_path, volume, path) as watcher:
        assert virtual_line(volume, "postmaster@example.com") == \
            "postmaster@example.com admin@example.com"
        for generation, target in enumerate(["first@elsewhere.net", "second@elsewhere.net"], 2):
            text = desired(target)
            saved = time.monotonic()
            if how == "plain":
                with open(path, "w") as handle:  # same inode, truncated then written
                    handle.write(text)
            elif how == "atomic":
                save_atomically(path, text)
            elif how == "configmap":
                configmap_write(path.parent, text, generation)
            else:
                gitsync_write(tmp_path / "git", text, generation)
            wait_until(lambda t=target: virtual_line(volume, "postmaster@example.com")
                       == f"postmaster@example.com {t}", REACT, f"the volume to follow ({how})")
            assert time.monotonic() - saved < REACT
        assert watcher.alive()
        assert watcher.terminate() == 0


def test_a_burst_of_events_makes_one_reconcile(tmp_path: Path, volume: Volume) -> None:
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired())
    with started(tmp_path, volume, path) as watcher:
        total = "dms_reconciler_reconciles_total"
        before = watcher.metric(total, result="changed", trigger="change")
        for i in range(20):  # a git pull touching the file many times in a few milliseconds
            save_atomically(path, desired(f"burst{i}@elsewhere.net"))
        wait_until(lambda: virtual_line(volume, "postmaster@example.com")
                   == "postmaster@example.com burst19@elsewhere.net", REACT, "the last version")
        time.sleep(1.0)  # longer than the debounce cap: a second reconcile would have run by now
        after = watcher.metric(total, result="changed", trigger="change")
        assert after - before == 1


def test_an_event_without_a_content_change_does_not_reconcile(
        tmp_path: Path, volume: Volume) -> None:
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired())
    with started(tmp_path, volume, path) as watcher:
        total = "dms_reconciler_reconciles_total"
        before = watcher.metric(total)
        os.utime(path)  # mtime only
        save_atomically(path, desired())  # same bytes, new inode
        (tmp_path / "README.md").write_text("unrelated file in the same folder\n")
        time.sleep(1.5)
        assert watcher.metric(total) == before
        save_atomically(path, desired("new@elsewhere.net"))
        wait_until(lambda: watcher.metric(total) == before + 1, REACT, "one reconcile")


def test_hand_edit_to_a_managed_entry_is_repaired_at_the_next_interval(
        tmp_path: Path, volume: Volume) -> None:
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired())
    watcher = WatchProcess(watch_args(path, volume, "--interval", "1"), cwd=tmp_path)
    with watcher:
        watcher.wait_for_log(lambda r: r["message"] == "applied", what="the first apply")
        text = volume.read("postfix-virtual.cf") or ""
        edited = text.replace("postmaster@example.com admin@example.com",
                              "postmaster@example.com intruder@evil.example")
        edited += "handmade@example.com admin@example.com\n"  # an unmanaged entry: kept
        assert edited != text
        volume.write("postfix-virtual.cf", edited)
        wait_until(lambda: virtual_line(volume, "postmaster@example.com")
                   == "postmaster@example.com admin@example.com", 10, "the drift repair")
        handmade = virtual_line(volume, "handmade@example.com")
        assert handmade == "handmade@example.com admin@example.com"
        record = watcher.wait_for_log(lambda r: r["message"] == "repaired drift", what="the log")
        assert record["trigger"] == "interval"
        assert "postfix-virtual.cf:postmaster@example.com" in record["entries"]
        assert watcher.metric("dms_reconciler_drift_repaired_entries_total") >= 1
        assert watcher.metric("dms_reconciler_unmanaged_entries", file="postfix-virtual.cf") == 1
        assert watcher.terminate() == 0


@pytest.mark.parametrize("breakage", ["bad-address", "duplicate-key", "not-yaml", "deleted"])
def test_invalid_file_changes_nothing_and_the_next_good_one_is_applied(
        tmp_path: Path, volume: Volume, breakage: str) -> None:
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired())
    # --interval 1: the timer runs many times while the file is invalid and must not write either
    watcher = WatchProcess(watch_args(path, volume, "--interval", "1"), cwd=tmp_path)
    with watcher:
        watcher.wait_for_log(lambda r: r["message"] == "applied", what="the first apply")
        wait_until(lambda: watcher.get("/readyz")[0] == 200, 5, "ready")
        before = volume.snapshot()
        mark = watcher.count()
        if breakage == "bad-address":
            save_atomically(path, desired("Not An Address"))
        elif breakage == "duplicate-key":
            save_atomically(path, desired() + "domains: [example.org]\n")
        elif breakage == "not-yaml":
            save_atomically(path, "version: 1\naccounts: [unclosed\n")
        else:
            path.unlink()
        record = watcher.wait_for_log(lambda r: r["level"] == "error" and "invalid" in r["message"],
                                      after=mark, what="the error")
        assert record["error_count"] >= 1
        assert all(str(path) in line for line in record["errors"])
        if breakage in ("bad-address", "duplicate-key"):
            line_no = ":8:" if breakage == "bad-address" else ":9:"
            assert any(line_no in line for line in record["errors"]), record["errors"]
        time.sleep(2.5)  # two more timer ticks
        assert watcher.alive()
        assert volume.snapshot() == before  # bytes, mtime and inode of every file
        code, body = watcher.get("/readyz")
        assert code == 503 and '"desired_valid": false' in body
        # live all the same: restarting the sidecar would not fix a bad commit
        assert watcher.get("/healthz")[0] == 200
        assert watcher.metric("dms_reconciler_desired_valid") == 0
        assert watcher.metric("dms_reconciler_reconciles_total", result="invalid") >= 1

        save_atomically(path, desired("fixed@elsewhere.net"))
        wait_until(lambda: virtual_line(volume, "postmaster@example.com")
                   == "postmaster@example.com fixed@elsewhere.net", REACT, "the next good version")
        wait_until(lambda: watcher.get("/readyz")[0] == 200, 5, "ready again")
        assert watcher.metric("dms_reconciler_desired_valid") == 1
        assert watcher.terminate() == 0


def test_while_the_file_is_invalid_the_timer_keeps_the_last_good_state(
        tmp_path: Path, volume: Volume) -> None:
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired())
    watcher = WatchProcess(watch_args(path, volume, "--interval", "1"), cwd=tmp_path)
    with watcher:
        watcher.wait_for_log(lambda r: r["message"] == "applied", what="the first apply")
        mark = watcher.count()
        save_atomically(path, "version: 1\naccounts: [unclosed\n")
        watcher.wait_for_log(lambda r: "invalid" in r["message"], after=mark, what="the error")
        text = volume.read("postfix-virtual.cf") or ""
        volume.write("postfix-virtual.cf", text.replace("admin@example.com\n", "x@evil.example\n"))
        wait_until(lambda: virtual_line(volume, "postmaster@example.com")
                   == "postmaster@example.com admin@example.com", 10, "the repair")
        assert watcher.terminate() == 0


def test_sigterm_while_waiting_for_the_dms_lock_finishes_the_reconcile(
        tmp_path: Path, volume: Volume) -> None:
    """DMS's change detector holds its lock: the reconcile is in flight. SIGTERM must let it
    finish (all files whole, lock released) and then exit 0."""
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired())
    lock = volume.config / "check-for-changes.sh.lock"
    lock.write_text("dms-change-detector-token\n")
    watcher = WatchProcess(watch_args(path, volume, "--interval", "3600"), cwd=tmp_path)
    with watcher:
        watcher.wait_for_log(lambda r: "waiting for" in r["message"] and "lock" in r["message"],
                             what="the lock wait")
        watcher.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert watcher.alive(), "it must finish the reconcile in flight"
        assert volume.read("postfix-virtual.cf") is None  # nothing written while DMS holds it
        lock.unlink()  # DMS is done
        assert watcher.proc.wait(30) == 0
        assert virtual_line(volume, "postmaster@example.com") == \
            "postmaster@example.com admin@example.com"
        assert f"admin@example.com|{ADMIN_HASH}" in (volume.read("postfix-accounts.cf") or "")
        assert not lock.exists()
        assert not [p.name for p in volume.config.iterdir() if ".dms-reconciler-" in p.name]
        messages = [r["message"] for r in watcher.records()]
        assert messages.index("applied") < messages.index(
            next(m for m in messages if m.startswith("stopping")))


def test_sigterm_during_a_large_reconcile_leaves_no_torn_file(
        tmp_path: Path, volume: Volume) -> None:
    """800 plaintext passwords to hash: SIGTERM arrives while the hashing runs."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    lines = ["version: 1", "domains: [example.com]", "accounts:"]
    for i in range(800):
        (secrets / f"u{i}").write_text(f"password-number-{i}\n")
        lines += [f"  user{i}@example.com:", f"    password_file: secrets/u{i}"]
    path = tmp_path / "mailserver.yaml"
    path.write_text("\n".join(lines) + "\n")
    watcher = WatchProcess(watch_args(path, volume, "--interval", "3600"), cwd=tmp_path,
                           listen=False)
    with watcher:
        watcher.wait_for_log(lambda r: r["message"] == "reconciling", what="the reconcile start")
        time.sleep(0.2)
        sent = time.time()
        watcher.proc.send_signal(signal.SIGTERM)
        assert watcher.proc.wait(120) == 0
        records = watcher.records()
        applied = next(r for r in records if r["message"] == "applied")
        accounts = (volume.read("postfix-accounts.cf") or "").splitlines()
        assert len([a for a in accounts if a.startswith("user")]) == 800
        assert all(line.count("|") == 1 and line.split("|")[1].startswith("{SHA512-CRYPT}$6$")
                   for line in accounts if line.startswith("user"))
        assert not [p.name for p in volume.config.iterdir() if ".dms-reconciler-" in p.name]
        assert not (volume.config / "check-for-changes.sh.lock").exists()
        # it was really in flight: the apply finished after the signal was sent
        assert datetime.fromisoformat(applied["time"]).timestamp() >= sent


def test_metrics_parse_and_move_with_reconciles(tmp_path: Path, volume: Volume) -> None:
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired())
    with started(tmp_path, volume, path) as watcher:
        first = watcher.metrics()
        assert first[("dms_reconciler_reconciles_total",
                      (("result", "changed"), ("trigger", "startup")))] == 1
        assert first[("dms_reconciler_desired_valid", ())] == 1
        assert first[("dms_reconciler_managed_accounts", ())] == 1
        assert first[("dms_reconciler_pending_changes", ())] == 0
        success = first[("dms_reconciler_last_success_timestamp_seconds", ())]
        assert abs(success - time.time()) < 60
        durations = first[("dms_reconciler_reconcile_duration_seconds_count", ())]
        # no Docker socket here: applied, but DMS could not confirm it
        wait_until(lambda: watcher.metric("dms_reconciler_dms_confirmation",
                                          dms_reconciler_dms_confirmation="unconfirmed") == 1,
                   5, "the DMS state")
        assert watcher.metric("dms_reconciler_dms_confirmed") == 0
        time.sleep(0.05)
        save_atomically(path, desired("moved@elsewhere.net"))
        wait_until(lambda: watcher.metric("dms_reconciler_reconciles_total", result="changed",
                                          trigger="change") == 1, REACT, "the counter to move")
        second = watcher.metrics()
        assert second[("dms_reconciler_last_success_timestamp_seconds", ())] > success
        assert second[("dms_reconciler_reconcile_duration_seconds_count", ())] == durations + 1
        code, body = watcher.get("/healthz")
        assert code == 200 and '"last_result": "changed"' in body
        assert watcher.get("/nope")[0] == 404


def test_logs_hold_no_password_or_hash(tmp_path: Path, volume: Volume) -> None:
    plain = "Plain-Secret-Pw-4711"
    (tmp_path / "jane.pw").write_text(plain + "\n")
    extra = ("  jane@example.com:\n    password_file: jane.pw\n"
             "  bob@example.com:\n    password_env: BOB_PW\n")
    text = desired().replace("aliases:", extra + "aliases:")
    path = tmp_path / "mailserver.yaml"
    path.write_text(text)
    with started(tmp_path, volume, path, env={"BOB_PW": "Env-Secret-Pw-0815"}) as watcher:
        (tmp_path / "jane.pw").write_text("Rotated-Secret-Pw-99\n")  # a change in the folder
        wait_until(lambda: watcher.metric("dms_reconciler_reconciles_total", trigger="change") >= 1,
                   REACT, "the rotation")
        save_atomically(path, text.replace('password_hash: "', 'password_hash: "BROKEN'))
        watcher.wait_for_log(lambda r: "invalid" in r["message"], what="the error")
        outputs = [watcher.raw_log(), watcher.get("/metrics")[1], watcher.get("/healthz")[1],
                   watcher.get("/readyz")[1]]
        accounts = volume.read("postfix-accounts.cf") or ""
        hashes = [line.split("|")[1] for line in accounts.splitlines() if "|" in line]
        assert len(hashes) == 3
        for output in outputs:
            for secret in [plain, "Env-Secret-Pw-0815", "Rotated-Secret-Pw-99", ADMIN_HASH,
                           ADMIN_HASH.split("$")[-1], *hashes, *(h.split("$")[-1] for h in hashes)]:
                assert secret not in output


def test_logs_are_text_on_a_terminal(tmp_path: Path, volume: Volume) -> None:
    import pty
    import subprocess
    import sys

    from tests.support.util import PYTHONPATH

    path = tmp_path / "mailserver.yaml"
    path.write_text(desired())
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
    env["PYTHONPATH"] = PYTHONPATH
    command = [sys.executable, "-m", "reconciler", "watch", *watch_args(path, volume)]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=slave, env=env, cwd=tmp_path)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 15
        while b"applied" not in seen and time.monotonic() < deadline:
            import select

            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                seen += os.read(master, 4096)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        os.close(master)
    text = seen.decode()
    assert "info    applied" in text
    assert not text.lstrip().startswith("{")

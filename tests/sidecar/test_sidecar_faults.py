"""The real sidecar (`python -m reconciler watch`) under faults, and how it recovers by itself.

Each test injects one kind of fault while the process runs: the desired file deleted, its folder
replaced (removed and recreated, renamed away, a ConfigMap or git-sync target that disappears), the
config volume read-only, full or missing, the Docker engine stopped and started, the DMS container
restarted or replaced. For each it asserts that the process stays alive, reports the fault (a log
line, and the metric and health endpoint that should move), recovers without a restart, and that
no reader ever saw a torn managed file (`TornFileGuard` reads them all the time the fault lasts).
"""

# ruff: noqa: F811 - the engine fixtures are imported from tests.dockerengine
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.formats import accounts, aliases, quotas, virtual
from reconciler.volume.lock import LOCK_NAME
from tests.dockerengine import (  # noqa: F401 - pytest fixtures
    DockerEngine,
    containers,
    docker_client,
    docker_engine,
    fake_dms_images,
    import_fake_dms,
    run_fake_dms,
)
from tests.support.util import Volume, run_cli
from tests.support.watch_process import (
    ADMIN_HASH,
    WatchProcess,
    postmaster_target,
    save_atomically,
    wait_until,
)

REACT = 10.0  # generous for a loaded CI machine
PARSERS = {accounts.FILENAME: accounts.parse, virtual.FILENAME: virtual.parse,
           aliases.FILENAME: aliases.parse, quotas.FILENAME: quotas.parse}


def desired(target: str = "admin@example.com", *, quarantine: bool = False) -> str:
    text = textwrap.dedent(f"""\
        version: 1
        domains: [example.com]
        accounts:
          admin@example.com:
            password_hash: "{ADMIN_HASH}"
            quota: 1G
        aliases:
          postmaster@example.com: {target}
        """)
    if quarantine:
        text += "quarantine:\n  mailbox: admin@example.com\n"
    return text


class TornFileGuard:
    """Reads every managed file in a loop while a test runs; each read must be a whole file:
    a final newline, every line readable by the file's own parser, and the entries every version
    of the test's files has (the admin account, the postmaster alias)."""

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.reads = 0
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TornFileGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, parse in PARSERS.items():
                try:
                    data = (self.volume.config / name).read_bytes()
                except OSError:
                    continue  # not written yet, or the volume is away: nothing to tear
                self.reads += 1
                self._check(name, data, parse)
            time.sleep(0.005)

    def _check(self, name: str, data: bytes, parse: Any) -> None:
        if not data:
            self.problems.append(f"{name} was empty")
            return
        if not data.endswith(b"\n"):
            self.problems.append(f"{name} had no final newline ({len(data)} bytes)")
        parsed = parse(data.decode("utf-8", "replace"))
        if parsed.invalid:
            self.problems.append(f"{name} had unreadable lines: {len(parsed.invalid)}")
        required = {accounts.FILENAME: "admin@example.com", virtual.FILENAME:
                    "postmaster@example.com", quotas.FILENAME: "admin@example.com"}.get(name)
        if required and required not in parsed.entries:
            self.problems.append(f"{name} lacked {required}")

    def assert_whole(self) -> None:
        assert self.reads > 0, "the guard never read a file"
        assert not self.problems, self.problems[:10]


def assert_volume_settled(volume: Volume, desired_path: Path) -> None:
    """No temp file, no lock left, and `plan` finds nothing to do: files and state consistent."""
    leftovers = [p.name for p in volume.config.iterdir()
                 if ".dms-reconciler-" in p.name or p.name == LOCK_NAME]
    assert not leftovers, leftovers
    result = run_cli("plan", "-f", str(desired_path), *volume.args(), "--detailed-exitcode")
    assert result.returncode == 0, result.stdout + result.stderr


def start(tmp_path: Path, volume: Volume, path: Path, *more: str, interval: str = "3600",
          env: dict[str, str] | None = None) -> WatchProcess:
    watcher = WatchProcess(["-f", str(path), *volume.args(), "--interval", interval, *more],
                           cwd=tmp_path, env=env)
    try:
        watcher.wait_for_log(lambda r: r["message"] == "applied", what="the first apply")
    except BaseException:
        watcher.kill()
        raise
    return watcher


def readyz(watcher: WatchProcess) -> tuple[int, str]:
    return watcher.get("/readyz")


# --- the desired file and its folder ------------------------------------------------------------


def test_deleted_file_is_reported_changes_nothing_and_its_return_is_applied(
        tmp_path: Path, volume: Volume) -> None:
    folder = tmp_path / "desired"
    folder.mkdir()
    path = folder / "mailserver.yaml"
    path.write_text(desired())
    # --interval 1: the timer runs while the file is gone, and must not write either
    with start(tmp_path, volume, path, interval="1") as watcher, TornFileGuard(volume) as guard:
        wait_until(lambda: readyz(watcher)[0] == 200, 5, "ready")
        before = volume.snapshot()
        mark = watcher.count()
        path.unlink()
        record = watcher.wait_for_log(lambda r: r["level"] == "error" and "invalid" in
                                      r["message"], after=mark, what="the report")
        assert any("file not found" in e for e in record["errors"]), record
        code, body = readyz(watcher)
        assert code == 503 and '"desired_valid": false' in body
        assert watcher.get("/healthz")[0] == 200
        assert watcher.metric("dms_reconciler_desired_valid") == 0
        assert watcher.metric("dms_reconciler_reconciles_total", result="invalid") >= 1
        time.sleep(2.5)  # timer ticks while the file is gone
        assert watcher.alive()
        assert volume.snapshot() == before

        path.write_text(desired())  # the same file comes back: nothing to write
        wait_until(lambda: readyz(watcher)[0] == 200, REACT, "ready again")
        assert watcher.metric("dms_reconciler_desired_valid") == 1
        assert volume.snapshot() == before
        save_atomically(path, desired("back@elsewhere.net"))
        wait_until(lambda: postmaster_target(volume) == "back@elsewhere.net", REACT, "the next version")
        assert watcher.terminate() == 0
    guard.assert_whole()
    assert_volume_settled(volume, path)


def configmap_generation(folder: Path, text: str, generation: int) -> Path:
    """The kubelet's way: a new timestamped folder, then `..data` swapped to it."""
    data_dir = folder / f"..2024_01_01_00_00_{generation:02d}.{generation}"
    data_dir.mkdir()
    (data_dir / "mailserver.yaml").write_text(text)
    tmp_link = folder / "..data_tmp"
    tmp_link.symlink_to(data_dir.name)
    os.replace(tmp_link, folder / "..data")
    if not (folder / "mailserver.yaml").is_symlink():
        (folder / "mailserver.yaml").symlink_to("..data/mailserver.yaml")
    return data_dir


def gitsync_generation(root: Path, text: str, generation: int) -> Path:
    """git-sync's way: a new worktree, then the `current` symlink swapped to it."""
    worktree = root / ".worktrees" / f"commit{generation}"
    worktree.mkdir(parents=True)
    (worktree / "mailserver.yaml").write_text(text)
    tmp_link = root / "current.tmp"
    tmp_link.symlink_to(f".worktrees/commit{generation}")
    os.replace(tmp_link, root / "current")
    return worktree


@pytest.mark.parametrize("how", ["removed-and-recreated", "renamed-away", "swapped-in",
                                 "configmap-target-gone", "gitsync-target-gone"])
def test_replaced_folder_is_followed(tmp_path: Path, volume: Volume, how: str) -> None:
    """--interval is an hour: only the file watch can see these, so each must be followed."""
    folder = tmp_path / "desired"
    if how == "configmap-target-gone":
        folder.mkdir()
        old_target = configmap_generation(folder, desired(), 1)
        path = folder / "mailserver.yaml"
    elif how == "gitsync-target-gone":
        old_target = gitsync_generation(folder, desired(), 1)
        path = folder / "current" / "mailserver.yaml"
    else:
        folder.mkdir()
        path = folder / "mailserver.yaml"
        path.write_text(desired())
    with start(tmp_path, volume, path) as watcher, TornFileGuard(volume) as guard:
        before = volume.snapshot()
        mark = watcher.count()
        # first the folder (or the symlink's target) disappears, and that is reported
        if how == "removed-and-recreated":
            shutil.rmtree(folder)
        elif how in ("renamed-away", "swapped-in"):
            folder.rename(tmp_path / "desired.old")
        else:
            shutil.rmtree(old_target)
        watcher.wait_for_log(lambda r: r["level"] == "error" and "invalid" in r["message"],
                             after=mark, what="the report of the missing file")
        assert readyz(watcher)[0] == 503
        assert volume.snapshot() == before
        # then a new one is put in place, and followed
        for generation, target in enumerate(["one@elsewhere.net", "two@elsewhere.net"], 2):
            if how == "removed-and-recreated":
                if folder.exists():  # the second time without a pause: inode numbers get reused
                    shutil.rmtree(folder)
                folder.mkdir()
                path.write_text(desired(target))
            elif how == "renamed-away":
                if folder.exists():
                    folder.rename(tmp_path / f"desired.old{generation}")
                folder.mkdir()
                path.write_text(desired(target))
            elif how == "swapped-in":  # a complete folder prepared beside it, renamed into place
                prepared = tmp_path / f"desired.new{generation}"
                prepared.mkdir()
                (prepared / "mailserver.yaml").write_text(desired(target))
                if folder.exists():
                    folder.rename(tmp_path / f"desired.old{generation}")
                prepared.rename(folder)
            elif how == "configmap-target-gone":
                old_target = configmap_generation(folder, desired(target), generation)
            else:
                old_target = gitsync_generation(folder, desired(target), generation)
            wait_until(lambda t=target: postmaster_target(volume) == t, REACT,
                       f"the volume to follow the new folder ({how}, generation {generation})")
        wait_until(lambda: readyz(watcher)[0] == 200, 5, "ready again")
        assert watcher.metric("dms_reconciler_desired_valid") == 1
        if how == "renamed-away":  # the folder moved away is not followed any more
            count = watcher.metric("dms_reconciler_reconciles_total")
            (tmp_path / "desired.old" / "mailserver.yaml").write_text(desired("stale@x.example"))
            time.sleep(1.0)
            assert watcher.metric("dms_reconciler_reconciles_total") == count
        # and edits in the new folder are still seen
        save_atomically(path, desired("three@elsewhere.net"))
        wait_until(lambda: postmaster_target(volume) == "three@elsewhere.net", REACT, "a later edit")
        assert watcher.terminate() == 0
    guard.assert_whole()
    assert_volume_settled(volume, path)


def test_password_file_replaced_by_a_fifo_does_not_hang_the_sidecar(
        tmp_path: Path, volume: Volume) -> None:
    """A secret that is a FIFO (or a device) would block a plain open() forever: the sidecar
    reports it, keeps answering and re-checking, and applies once it is a file again."""
    (tmp_path / "jane.pw").write_text("Jane-Secret-1\n")
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired().replace(
        "aliases:", "  jane@example.com:\n    password_file: jane.pw\naliases:"))
    with start(tmp_path, volume, path) as watcher, TornFileGuard(volume) as guard:
        before = volume.snapshot()
        mark = watcher.count()
        (tmp_path / "jane.pw").unlink()
        os.mkfifo(tmp_path / "jane.pw")
        record = watcher.wait_for_log(lambda r: r["message"].startswith("reconcile failed"),
                                      after=mark, what="the report")
        assert "jane.pw: not a regular file" in record["message"], record
        wait_until(lambda: watcher.metric("dms_reconciler_reconciles_total", result="error")
                   >= 2, REACT, "the retries: the loop is not stuck")
        assert watcher.get("/healthz")[0] == 200 and readyz(watcher)[0] == 503
        assert volume.snapshot() == before
        (tmp_path / "jane.pw").unlink()
        (tmp_path / "jane.pw").write_text("Jane-Secret-2\n")
        wait_until(lambda: readyz(watcher)[0] == 200, REACT, "ready again")
        assert volume.snapshot() != before  # the new password's hash is written
        assert watcher.terminate() == 0
    guard.assert_whole()
    assert_volume_settled(volume, path)


# --- the config volume --------------------------------------------------------------------------


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"mount {' '.join(args)} failed (these tests need root, as the Docker tests "
                    f"do): {result.stderr.strip()}", pytrace=False)


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Volume]:
    """A config volume on its own 256 KiB tmpfs: it can be made read-only or filled up."""
    volume = Volume(tmp_path / "small")
    volume.config.mkdir(parents=True)
    volume.cron.parent.mkdir(parents=True)
    mount("-t", "tmpfs", "-o", "size=256k,mode=0755", "dms-config", str(volume.config))
    try:
        yield volume
    finally:
        subprocess.run(["umount", "-l", str(volume.config)], check=False)


def fill(folder: Path) -> Path:
    """Fill the disk but one page: DMS's lock can still be taken, the next write fails.

    (A disk full to the last byte fails at the lock already; that path is the lock's own tests'.)
    """
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, os.path.getsize(filler) - 4096)
    return filler


@pytest.mark.parametrize("fault", ["read-only", "full", "missing"])
def test_unwritable_or_missing_volume_is_reported_and_recovered(
        tmp_path: Path, volume: Volume, small_volume: Volume, fault: str) -> None:
    """A change arrives while the volume cannot take it. --interval is an hour: the sidecar must
    retry on its own, and apply the change as soon as the volume is back."""
    if fault != "missing":  # a mount point cannot be renamed away: the plain volume for that
        volume = small_volume
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired())
    with start(tmp_path, volume, path) as watcher, TornFileGuard(volume) as guard:
        wait_until(lambda: readyz(watcher)[0] == 200, 5, "ready")
        success = watcher.metric("dms_reconciler_last_success_timestamp_seconds")
        away = volume.root / "config.away"
        if fault == "read-only":
            mount("-o", "remount,ro", str(volume.config))
            expected = "read-only"
        elif fault == "full":
            filler = fill(volume.config)
            expected = "disk is full"
        else:
            volume.config.rename(away)
            expected = "does not exist"
        before = volume.snapshot() if fault != "missing" else None
        mark = watcher.count()
        save_atomically(path, desired("during@elsewhere.net"))
        record = watcher.wait_for_log(lambda r: r["message"].startswith("reconcile failed"),
                                      after=mark, what="the report")
        assert expected in record["message"], record
        assert record["level"] == "error" and record["retry_in_seconds"] <= 2
        code, body = readyz(watcher)
        assert code == 503 and expected in body, body
        assert watcher.get("/healthz")[0] == 200
        assert watcher.metric("dms_reconciler_reconciles_total", result="error") >= 1
        time.sleep(2.0)  # it keeps trying meanwhile, and keeps failing the same way
        assert watcher.alive()
        assert watcher.metric("dms_reconciler_reconciles_total", result="error") >= 2
        if before is not None:
            assert volume.snapshot() == before  # bytes, mtime and inode: nothing touched
        else:
            assert not volume.config.exists()  # it never makes the volume up itself

        if fault == "read-only":
            mount("-o", "remount,rw", str(volume.config))
        elif fault == "full":
            filler.unlink()
        else:
            away.rename(volume.config)
        wait_until(lambda: postmaster_target(volume) == "during@elsewhere.net", REACT,
                   "the change to be applied once the volume is back")
        wait_until(lambda: readyz(watcher)[0] == 200, 5, "ready again")
        assert watcher.metric("dms_reconciler_last_success_timestamp_seconds") > success
        assert watcher.terminate() == 0
    guard.assert_whole()
    assert_volume_settled(volume, path)


# --- Docker and DMS -----------------------------------------------------------------------------


@pytest.fixture
def own_engine() -> Iterator[DockerEngine]:
    """An engine of its own, for a test that stops and starts it."""
    engine = DockerEngine().start()
    try:
        yield engine
    finally:
        engine.cleanup()


def start_with_dms(tmp_path: Path, volume: Volume, engine: DockerEngine, path: Path, *more: str,
                   env: dict[str, str] | None = None) -> WatchProcess:
    watcher = start(tmp_path, volume, path, *more, env={"DOCKER_HOST": engine.url, **(env or {})})
    try:
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", timeout=20,
                             what="the first confirmation")
    except BaseException:
        watcher.kill()
        raise
    return watcher


def dms_state(watcher: WatchProcess, state: str) -> float:
    return watcher.metric("dms_reconciler_dms_confirmation", dms_reconciler_dms_confirmation=state)


@pytest.mark.docker
def test_engine_stopped_and_started_again(tmp_path: Path, volume: Volume,
                                          own_engine: DockerEngine) -> None:
    """While the engine is down every change is still applied, with "could not confirm"; once it
    is back (the container restarted by its restart policy), the sidecar confirms by itself,
    restarts Amavis for the amavis.cf it could not install, and confirms the next write."""
    client = own_engine.client()
    run_fake_dms(client, import_fake_dms(client, "own"), volume.config, name="mailserver",
                 restart_policy={"Name": "always"})
    client.close()
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired(quarantine=True))
    with start_with_dms(tmp_path, volume, own_engine, path, "--container", "mailserver") \
            as watcher, TornFileGuard(volume) as guard:
        reloads_ok = watcher.metric("dms_reconciler_dms_reloads_total", result="ok")
        own_engine.stop(remove_containers=False)
        mark = watcher.count()
        save_atomically(path, desired("during@elsewhere.net"))  # amavis.cf changes too
        wait_until(lambda: postmaster_target(volume) == "during@elsewhere.net", REACT, "the write")
        record = watcher.wait_for_log(lambda r: r.get("dms") == "unconfirmed", after=mark,
                                      what="the report")
        assert record["level"] == "warning"
        assert "could not confirm" in record["message"]
        assert "the Docker engine is not running there" in record["message"], record
        reload = watcher.wait_for_log(lambda r: r.get("service") == "amavis", after=mark,
                                      what="the reload report")
        assert reload["result"] == "unconfirmed"
        assert watcher.metric("dms_reconciler_dms_confirmed") == 0
        assert dms_state(watcher, "unconfirmed") == 1
        assert json.loads(watcher.get("/healthz")[1])["dms"]["state"] == "unconfirmed"
        wait_until(lambda: readyz(watcher)[0] == 200, 5, "ready: the volume matches")
        # it keeps applying while the engine is down
        save_atomically(path, desired("during2@elsewhere.net"))
        wait_until(lambda: postmaster_target(volume) == "during2@elsewhere.net", REACT, "a second write")
        assert watcher.alive()

        back = watcher.count()
        own_engine.start()
        confirmed = watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", after=back,
                                         timeout=40, what="the confirmation after the restart")
        assert "DMS applied" in confirmed["message"]
        assert watcher.metric("dms_reconciler_dms_confirmed") == 1
        assert json.loads(watcher.get("/healthz")[1])["dms"]["state"] == "confirmed"
        watcher.wait_for_log(lambda r: r.get("service") == "amavis" and r["result"] == "ok",
                             after=back, timeout=20, what="the Amavis restart it owed")
        assert watcher.metric("dms_reconciler_dms_reloads_total", result="ok") == reloads_ok + 1
        mark = watcher.count()
        save_atomically(path, desired("after@elsewhere.net", quarantine=True))
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", after=mark, timeout=20,
                             what="the next write's confirmation")
        assert watcher.terminate() == 0
    guard.assert_whole()
    assert_volume_settled(volume, path)


@pytest.mark.docker
def test_engine_hung_does_not_hold_the_loop(tmp_path: Path, volume: Volume,
                                            own_engine: DockerEngine) -> None:
    """A hung engine (dockerd stopped with SIGSTOP: its socket accepts, nothing answers) costs
    the loop one short query timeout now and then, not the length of the outage: changes are
    written meanwhile, and confirmed once the engine answers again."""
    client = own_engine.client()
    run_fake_dms(client, import_fake_dms(client, "own"), volume.config, name="mailserver")
    client.close()
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired())
    with start_with_dms(tmp_path, volume, own_engine, path, "--container", "mailserver") \
            as watcher, TornFileGuard(volume) as guard:
        assert own_engine.proc is not None
        os.kill(own_engine.proc.pid, signal.SIGSTOP)
        try:
            mark = watcher.count()
            save_atomically(path, desired("hung1@elsewhere.net"))
            wait_until(lambda: postmaster_target(volume) == "hung1@elsewhere.net", REACT, "the write")
            record = watcher.wait_for_log(lambda r: r.get("dms") == "unconfirmed", after=mark,
                                          timeout=30, what="the report")
            assert "no answer within 10 s (the engine is hung" in record["message"], record
            for n in (2, 3):  # at most one query timeout (10 s) in the way, however long it lasts
                save_atomically(path, desired(f"hung{n}@elsewhere.net"))
                wait_until(lambda n=n: postmaster_target(volume) == f"hung{n}@elsewhere.net", 25,
                           f"write {n} while the engine is hung")
                time.sleep(2.0)  # write 3 arrives while the re-check (after 1 s) hangs too
            assert watcher.get("/healthz")[0] == 200
        finally:
            os.kill(own_engine.proc.pid, signal.SIGCONT)
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", after=mark, timeout=40,
                             what="the confirmation once the engine answers")
        assert watcher.terminate() == 0
    guard.assert_whole()
    assert_volume_settled(volume, path)

@pytest.mark.docker
def test_engine_stopped_while_waiting_for_the_confirmation(tmp_path: Path, volume: Volume,
                                                           own_engine: DockerEngine) -> None:
    client = own_engine.client()
    run_fake_dms(client, import_fake_dms(client, "own"), volume.config, name="mailserver",
                 restart_policy={"Name": "always"}, environment={"FAKE_DMS_APPLY_SECONDS": "3"})
    client.close()
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired())
    with start_with_dms(tmp_path, volume, own_engine, path, "--container", "mailserver") \
            as watcher, TornFileGuard(volume) as guard:
        mark = watcher.count()
        save_atomically(path, desired("during@elsewhere.net"))
        watcher.wait_for_log(lambda r: r.get("dms") == "waiting", after=mark, what="waiting")
        own_engine.stop(remove_containers=False)  # DMS is stopped in the middle of its pass
        record = watcher.wait_for_log(lambda r: r.get("dms") == "unconfirmed", after=mark,
                                      timeout=30, what="the report")
        assert "could not confirm" in record["message"]
        assert dms_state(watcher, "unconfirmed") == 1
        back = watcher.count()
        own_engine.start()
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", after=back, timeout=40,
                             what="the confirmation after the restart")
        assert watcher.metric("dms_reconciler_dms_confirmed") == 1
        assert watcher.terminate() == 0
    guard.assert_whole()
    assert_volume_settled(volume, path)


@pytest.mark.docker
def test_dms_restarted_while_the_watcher_waits_for_it(
        tmp_path: Path, volume: Volume, docker_engine: DockerEngine, docker_client: Any,
        fake_dms_images: dict[str, str], containers: list[Any]) -> None:
    """`docker restart` in the middle of DMS's pass: its lock is released by its exit trap, the
    restarted DMS applies the files, and the sidecar's wait ends in a confirmation."""
    containers.append(container := run_fake_dms(
        docker_client, fake_dms_images["ok"], volume.config,
        environment={"FAKE_DMS_APPLY_SECONDS": "3"}))
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired())
    with start_with_dms(tmp_path, volume, docker_engine, path) as watcher, \
            TornFileGuard(volume) as guard:
        for round_ in range(2):
            mark = watcher.count()
            save_atomically(path, desired(f"during{round_}@elsewhere.net"))
            watcher.wait_for_log(lambda r: r.get("dms") == "waiting", after=mark, what="waiting")
            wait_until(lambda: (volume.config / LOCK_NAME).exists(), 10, "DMS applying")
            container.restart(timeout=10)
            watcher.wait_for_log(lambda r: r.get("dms") in ("confirmed", "unconfirmed"),
                                 after=mark, timeout=30, what="the end of the wait")
            wait_until(lambda: watcher.metric("dms_reconciler_dms_confirmed") == 1, 30,
                       "the confirmation")
        assert watcher.alive()
        assert watcher.terminate() == 0
    guard.assert_whole()
    assert_volume_settled(volume, path)


@pytest.mark.docker
def test_dms_container_replaced_is_found_again(
        tmp_path: Path, volume: Volume, docker_engine: DockerEngine, docker_client: Any,
        fake_dms_images: dict[str, str], containers: list[Any]) -> None:
    """By label, as compose does it: the container removed, a change applied meanwhile, a new
    one started (its checksum file only written after its start-up), then a second one beside
    it (blue/green), then the old one removed."""
    image = fake_dms_images["ok"]
    containers.append(old := run_fake_dms(docker_client, image, volume.config))
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired())
    with start_with_dms(tmp_path, volume, docker_engine, path) as watcher, \
            TornFileGuard(volume) as guard:
        old.remove(force=True)
        mark = watcher.count()
        save_atomically(path, desired("gone@elsewhere.net"))
        record = watcher.wait_for_log(lambda r: r.get("dms") == "unconfirmed", after=mark,
                                      what="the report")
        assert "no running container has the label" in record["message"]
        assert postmaster_target(volume) == "gone@elsewhere.net"

        back = watcher.count()
        containers.append(new := run_fake_dms(docker_client, image, volume.config, wait=False,
                                              environment={"FAKE_DMS_START_SECONDS": "3"}))
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", after=back, timeout=30,
                             what="the new container's confirmation")
        code, _ = new.exec_run(["cat", "/tmp/fake-dms-ready"])
        assert code == 0  # it was confirmed by the new container, after its start-up

        containers.append(twin := run_fake_dms(docker_client, image, volume.config))
        mark = watcher.count()
        save_atomically(path, desired("twins@elsewhere.net"))
        record = watcher.wait_for_log(lambda r: r.get("dms") == "unconfirmed", after=mark,
                                      what="the ambiguity")
        assert "2 running containers have the label" in record["message"]
        new.remove(force=True)
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", after=mark, timeout=30,
                             what="the confirmation once one container is left")
        assert twin.id != new.id
        assert watcher.terminate() == 0
    guard.assert_whole()
    assert_volume_settled(volume, path)


@pytest.mark.docker
def test_dms_killed_while_holding_its_lock(
        tmp_path: Path, volume: Volume, docker_engine: DockerEngine, docker_client: Any,
        fake_dms_images: dict[str, str], containers: list[Any]) -> None:
    """DMS killed (SIGKILL, OOM) in the middle of its pass leaves its lock in the volume. The
    sidecar's next write waits for it, says so, and takes it over once it is stale (older than a
    minute, DMS's own rule): the minute is simulated by dating the lock back, which is all the
    rule looks at."""
    containers.append(container := run_fake_dms(
        docker_client, fake_dms_images["ok"], volume.config,
        environment={"FAKE_DMS_APPLY_SECONDS": "3"}))
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired())
    lock = volume.config / LOCK_NAME
    with start(tmp_path, volume, path, env={"DOCKER_HOST": docker_engine.url}) as watcher, \
            TornFileGuard(volume) as guard:
        wait_until(lambda: lock.exists(), 10, "DMS applying the first write")
        container.kill()  # SIGKILL: its exit trap does not run
        container.start()
        assert lock.exists()
        mark = watcher.count()
        save_atomically(path, desired("after@elsewhere.net"))
        record = watcher.wait_for_log(lambda r: "waiting for" in r["message"]
                                      and LOCK_NAME in r["message"], after=mark,
                                      what="the wait for DMS's lock")
        assert record["level"] == "info"
        time.sleep(1.0)
        assert postmaster_target(volume) == "admin@example.com"  # nothing written under DMS's lock
        assert watcher.get("/healthz")[0] == 200
        old = time.time() - 61
        os.utime(lock, (old, old))
        wait_until(lambda: postmaster_target(volume) == "after@elsewhere.net", REACT,
                   "the write once the lock is stale")
        watcher.wait_for_log(lambda r: r["message"] == "applied", after=mark, what="the apply")
        applied = next(i for i, r in enumerate(watcher.records())
                       if i >= mark and r["message"] == "applied")
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", after=applied, timeout=30,
                             what="DMS's confirmation (it waited for the same lock)")
        assert watcher.terminate() == 0
    guard.assert_whole()
    assert_volume_settled(volume, path)

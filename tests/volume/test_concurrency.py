"""Concurrent writers: DMS's lock, two applies at once, signals, and DMS's `setup` CLI racing us.

DMS's own lock protocol (target/scripts/helpers/lock.sh) is emulated in bash from its documented
behaviour: wait while `check-for-changes.sh.lock` exists, remove it when older than a minute, write
a uuid into it, remove it on exit only if it still holds that uuid.

No test here waits a fixed time for the other process to get somewhere: on a loaded CI machine a
sleep is either too short or too long. Where a test needs an apply caught in the middle, strace
stops it at a chosen system call (`-e inject=renameat2:signal=STOP:when=N`: the N-th file put in
place, then stopped), the test does what it needs while the apply holds the lock, and SIGCONT lets
it go on. Where a process must wait for another, the test waits until it says so.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.volume.lock import LOCK_NAME, DmsLock, make_token
from tests.support.faultkit import (
    add_crash_debris,
    cli_command,
    cli_env,
    dead_lock_token,
    desired_yaml,
    read_files,
    require_strace,
)
from tests.support.util import Volume, run_cli

ENV = {"KEEP_ONE": "k1-Secret", "KEEP_TWO": "k2-Secret", "CHANGED": "ch-Secret",
       "NEW_ONE": "n1-Secret", "NEW_TWO": "n2-Secret"}
N = 60

# DMS's _create_lock / _remove_lock, with the 5 s retry shortened to 0.2 s for the test. It holds
# the lock until the file RELEASE exists (the test creates it), and logs when it first finds the
# lock taken ("waiting"), when it takes it and when it lets it go.
DMS_LOCK_HOLDER = r"""
LOCK_FILE="$1/check-for-changes.sh.lock"; RELEASE="$2"; LOG="$3"
LOCK_ID="$(cat /proc/sys/kernel/random/uuid)"
[[ -e "${LOCK_FILE}" ]] && echo "waiting $(date +%s.%N)" >>"${LOG}"
while [[ -e "${LOCK_FILE}" ]]; do
  if [[ -n "$(find "${LOCK_FILE}" -mmin +1 2>/dev/null)" ]]; then rm -f "${LOCK_FILE}"; fi
  sleep 0.2
done
echo "${LOCK_ID}" >"${LOCK_FILE}"
echo "acquired $(date +%s.%N)" >>"${LOG}"
while [[ ! -e "${RELEASE}" ]]; do sleep 0.02; done
if [[ -e "${LOCK_FILE}" ]] && grep -q "${LOCK_ID}" "${LOCK_FILE}"; then rm -f "${LOCK_FILE}"; fi
echo "released $(date +%s.%N)" >>"${LOG}"
"""


def _desired(tmp: Path, version: str) -> Path:
    path = tmp / f"{version}.yaml"
    path.write_text(desired_yaml(version, N))
    return path


def _apply(desired: Path, volume: Volume, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("apply", "-f", str(desired), *volume.args(), *extra, env=ENV)


@pytest.fixture
def applied(tmp_path: Path, volume: Volume) -> tuple[Volume, Path, Path]:
    """A volume in state A, and the desired files A and B."""
    a, b = _desired(tmp_path, "A"), _desired(tmp_path, "B")
    first = _apply(a, volume)
    assert first.returncode == 0, first.stderr
    return volume, a, b


def _lock(volume: Volume) -> Path:
    return volume.config / LOCK_NAME


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _wait_until(done: Callable[[], bool], what: str, *, alive: subprocess.Popen[str] | None = None,
                timeout: float = 60) -> None:
    """Poll for an event another process makes happen (never a fixed sleep standing in for it)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert alive is None or alive.poll() is None, f"exited ({alive.returncode}) before {what}"
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.005)


def _says(path: Path, words: str) -> Callable[[], bool]:
    return lambda: path.exists() and words in path.read_text()


# --- DMS's lock ---------------------------------------------------------------------------------

def test_stale_dms_lock_is_taken_over_like_dms_does(applied: tuple[Volume, Path, Path]) -> None:
    volume, _, b = applied
    _lock(volume).write_text("5f0c8a9e-1111-2222-3333-444455556666\n")  # DMS's token: a uuid
    _age(_lock(volume), 61)
    result = _apply(b, volume)
    assert result.returncode == 0, result.stderr
    assert "removed the stale lock" in result.stderr and "older than 60 s" in result.stderr
    assert not _lock(volume).exists()
    assert _apply(b, volume).stdout.startswith("No changes")


def test_fresh_dms_lock_makes_apply_wait_then_give_up(applied: tuple[Volume, Path, Path]) -> None:
    volume, _, b = applied
    _lock(volume).write_text("5f0c8a9e-1111-2222-3333-444455556666\n")
    _age(_lock(volume), 20)  # not stale yet (a minute): DMS may still be applying
    before = volume.snapshot()
    started = time.monotonic()
    result = _apply(b, volume, "--lock-timeout", "1.5")
    assert result.returncode == 1
    assert time.monotonic() - started >= 1.5
    assert "waiting for" in result.stderr
    assert "is held by DMS's change detector or another dms-reconciler" in result.stderr
    assert "nothing was written" in result.stderr and "Traceback" not in result.stderr
    assert volume.snapshot() == before  # the foreign lock is untouched too


def test_apply_waits_for_dms_then_writes_after_it(applied: tuple[Volume, Path, Path],
                                                  tmp_path: Path) -> None:
    volume, _, b = applied
    log, release, err = tmp_path / "dms.log", tmp_path / "release", tmp_path / "apply.err"
    dms = subprocess.Popen(["bash", "-c", DMS_LOCK_HOLDER, "dms", str(volume.config),
                            str(release), str(log)], text=True)
    _wait_until(_says(log, "acquired"), "DMS took the lock", alive=dms)
    with open(err, "w") as stderr:
        apply = subprocess.Popen(cli_command("apply", "-f", str(b), *volume.args()),
                                 stdout=subprocess.PIPE, stderr=stderr, text=True,
                                 env=cli_env(ENV))
    _wait_until(_says(err, "waiting for"), "apply waited for DMS's lock", alive=apply)
    before = volume.snapshot()
    release.touch()  # DMS is done
    apply.communicate(timeout=120)
    dms.wait(timeout=10)
    assert apply.returncode == 0, err.read_text()
    assert before != volume.snapshot()
    released = float(log.read_text().split("released ")[1].split()[0])
    state = volume.config / "dms-reconciler.state.json"
    assert state.stat().st_mtime >= released - 0.01  # every write came after DMS let go
    assert not _lock(volume).exists()


def test_dms_waits_for_apply_while_it_writes(applied: tuple[Volume, Path, Path],
                                             tmp_path: Path) -> None:
    """DMS's change detector arriving mid-apply waits until the last file is written."""
    volume, _, b = applied
    log, release = tmp_path / "dms.log", tmp_path / "release"
    release.touch()  # DMS lets go as soon as it has the lock
    trace = tmp_path / "stopped.log"
    apply = _traced_apply(b, volume, trace, stop_at=1)
    pid = _wait_stopped(apply, trace, volume)  # one file in place, the others not yet
    dms = subprocess.Popen(["bash", "-c", DMS_LOCK_HOLDER, "dms", str(volume.config),
                            str(release), str(log)], text=True)
    _wait_until(_says(log, "waiting"), "DMS found the lock taken", alive=dms)
    os.kill(pid, signal.SIGCONT)
    apply.communicate(timeout=60)
    dms.wait(timeout=30)
    assert apply.returncode == 0, trace.with_suffix(".err").read_text()
    acquired = float(log.read_text().split("acquired ")[1].split()[0])
    last_write = max(volume.file(n).stat().st_mtime for n in
                     ("postfix-accounts.cf", "postfix-virtual.cf", "dms-reconciler.state.json"))
    assert acquired >= last_write - 0.01
    assert not _lock(volume).exists()


def test_lock_of_a_dead_dms_reconciler_is_taken_over_at_once(
        applied: tuple[Volume, Path, Path]) -> None:
    volume, _, b = applied
    add_crash_debris(volume)  # its lock (fresh mtime) and temp files
    started = time.monotonic()
    result = _apply(b, volume)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30  # not the one-minute stale wait
    assert re.search(r"its owner, dms-reconciler pid \d+, is gone", result.stderr)
    assert not [n for n in os.listdir(volume.config) if ".dms-reconciler-" in n or n == LOCK_NAME]


def test_debris_is_cleared_even_when_nothing_changes(applied: tuple[Volume, Path, Path]) -> None:
    volume, a, _ = applied
    add_crash_debris(volume)
    result = _apply(a, volume)
    assert result.returncode == 0, result.stderr
    assert "No changes" in result.stdout
    assert not [n for n in os.listdir(volume.config) if ".dms-reconciler-" in n or n == LOCK_NAME]


def test_lock_of_a_live_dms_reconciler_is_respected(applied: tuple[Volume, Path, Path]) -> None:
    volume, _, b = applied
    _lock(volume).write_text(make_token() + "\n")  # this pytest process: alive
    result = _apply(b, volume, "--lock-timeout", "1")
    assert result.returncode == 1 and "is held by" in result.stderr
    assert _lock(volume).exists()


def test_dead_owner_check_needs_same_host_and_live_pid() -> None:
    from reconciler.volume.lock import _process_identity, owner_is_dead

    dead = dead_lock_token()
    assert owner_is_dead(dead) == int(dead.split()[3])
    assert owner_is_dead(make_token()) is None  # ourselves
    other_host = dead.split()
    other_host[1] = "another-host"
    assert owner_is_dead(" ".join(other_host)) is None  # cannot see its processes
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        alive = make_token().split()
        alive[3] = str(sleeper.pid)
        alive[4] = _process_identity(sleeper.pid)[1]
        assert owner_is_dead(" ".join(alive)) is None  # alive: respected
        alive[4] = "1"  # the same pid, another start time: the pid was reused by another process
        assert owner_is_dead(" ".join(alive)) == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
    assert owner_is_dead("5f0c8a9e-1111-2222-3333-444455556666") is None  # DMS's token
    assert owner_is_dead("") is None


def _contend(config: str, marker: str, seconds: float, seed: int) -> None:
    """Take and release the lock in a loop; sometimes die holding it (exit 3).

    A death leaves either our own token (the next one sees the owner is gone) or, to exercise
    DMS's one-minute rule, a DMS-style token whose mtime is two minutes old. Exit 99: two
    processes were inside at once.
    """
    import random

    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lock = DmsLock(config, timeout=30, poll=0.001)
        lock.acquire()
        try:  # nobody else may be inside: the marker is created exclusively
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            os._exit(99)
        os.close(fd)
        time.sleep(rng.random() / 2000)
        os.unlink(marker)
        if rng.randrange(20) == 0:
            if rng.randrange(2):
                path = os.path.join(config, LOCK_NAME)
                with open(path, "w") as handle:
                    handle.write("5f0c8a9e-1111-2222-3333-444455556666\n")
                os.utime(path, (time.time() - 120, time.time() - 120))
            os._exit(3)  # dies holding the lock; the kernel drops its flock
        lock.release()
    os._exit(0)


def test_lock_excludes_under_contention_and_crashes(tmp_path: Path) -> None:
    """Four processes hammer the lock for three seconds; some die holding it."""
    config = tmp_path / "config"
    config.mkdir()
    ctx = multiprocessing.get_context("fork")
    deadline = time.monotonic() + 3
    workers: list[multiprocessing.process.BaseProcess] = []
    exits: list[int | None] = []
    seed = 0
    # At least three seconds and at least three deaths holding the lock (a loaded machine runs
    # fewer rounds a second), at most a minute.
    cutoff = deadline + 57

    def more() -> bool:
        now = time.monotonic()
        return now < cutoff and (now < deadline or exits.count(3) < 3)

    while more() or workers:
        for worker in [w for w in workers if not w.is_alive()]:
            worker.join()
            exits.append(worker.exitcode)
            workers.remove(worker)
        while more() and len(workers) < 4:
            seed += 1
            worker = ctx.Process(target=_contend, args=(str(config), str(tmp_path / "inside"),
                                                         max(0.1, deadline - time.monotonic()),
                                                         seed))
            worker.start()
            workers.append(worker)
        time.sleep(0.01)
    assert 99 not in exits, "two processes held the lock at once"
    assert exits.count(3) >= 3, f"too few deaths while holding the lock: {exits}"
    assert set(exits) <= {0, 3}, exits


# --- two applies at once ---------------------------------------------------------------------------

def _traced_apply(desired: Path, volume: Volume, log: Path, *extra: str,
                  stop_at: int | None = None) -> subprocess.Popen[str]:
    """`apply` under strace, with timestamps of the calls that matter in `log` and its stderr in
    `log` + ".err" (a test can read it while the apply runs). With `stop_at` N, strace stops it
    (SIGSTOP) as it puts the N-th file in place (RENAME_EXCHANGE; the stop is delivered as that
    call returns, so the file is in place), holding the lock, until the test sends SIGCONT."""
    inject = [] if stop_at is None else ["-e", f"inject=renameat2:signal=STOP:when={stop_at}"]
    with open(log.with_suffix(".err"), "w") as stderr:
        return subprocess.Popen(
            [require_strace(), "-qq", "-ttt", "-o", str(log),
             "-e", "trace=rename,renameat2,linkat,unlink,openat", *inject,
             *cli_command("apply", "-f", str(desired), *volume.args(), "--format", "json",
                          *extra)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=cli_env(ENV))


def _wait_stopped(proc: subprocess.Popen[str], log: Path, volume: Volume) -> int:
    """Wait until strace reports the apply stopped; its pid (from its lock token)."""
    _wait_until(_says(log, "--- stopped by SIGSTOP ---"), "the apply stopped", alive=proc)
    token = _lock(volume).read_text()
    assert token.startswith("dms-reconciler"), token  # stopped holding the lock
    pid = int(token.split()[3])
    assert open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] in ("t", "T")
    return pid


def _timeline(log: Path, volume: Volume) -> dict[str, list[float]]:
    """When the apply took the lock, released it, renamed into the volume and first read it."""
    lock = f'"{_lock(volume)}"'
    out: dict[str, list[float]] = {"taken": [], "released": [], "renames": [], "reads": []}
    for line in log.read_text().splitlines():
        match = re.match(r"(\d+\.\d+) (\w+)\((.*)", line)
        if not match:
            continue
        stamp, call, args = float(match.group(1)), match.group(2), match.group(3)
        if call == "linkat" and lock in args and args.endswith("= 0"):
            out["taken"].append(stamp)
        elif call == "unlink" and args.startswith(lock):
            out["released"].append(stamp)
        elif call in ("rename", "renameat2") and str(volume.config) in args:
            out["renames"].append(stamp)
        elif call == "openat" and "postfix-accounts.cf" in args and "O_RDONLY" in args:
            out["reads"].append(stamp)
    return out


def test_two_applies_never_interleave(applied: tuple[Volume, Path, Path], tmp_path: Path) -> None:
    """The first apply is stopped after putting its first file in place; the second one plans from
    that half-written volume and waits for the lock; then the first one goes on."""
    volume, a, b = applied
    for round_ in range(3):
        first, second = b, a  # the volume starts each round in state A: both have work
        log1, log2 = tmp_path / f"first{round_}.log", tmp_path / f"second{round_}.log"
        p1 = _traced_apply(first, volume, log1, stop_at=1)
        pid = _wait_stopped(p1, log1, volume)
        p2 = _traced_apply(second, volume, log2)
        _wait_until(_says(log2.with_suffix(".err"), "waiting for another dms-reconciler"),
                    "the second apply waited for the lock", alive=p2)
        os.kill(pid, signal.SIGCONT)
        p1.communicate(timeout=120)
        out2, _ = p2.communicate(timeout=120)
        err1, err2 = log1.with_suffix(".err").read_text(), log2.with_suffix(".err").read_text()
        assert p1.returncode == 0, err1
        assert p2.returncode == 0, err2
        one, two = _timeline(log1, volume), _timeline(log2, volume)
        assert len(one["taken"]) == len(one["released"]) and one["taken"] and two["taken"]
        # Lock intervals never overlap, and every rename happens inside its own interval.
        for t2, r2 in zip(two["taken"], two["released"]):
            assert all(r1 <= t2 or r2 <= t1 for t1, r1 in zip(one["taken"], one["released"]))
        for timeline in (one, two):
            assert all(any(t <= stamp <= r for t, r in zip(timeline["taken"], timeline["released"]))
                       for stamp in timeline["renames"])
        assert max(one["renames"]) < min(two["renames"]), "the two applies' writes interleaved"
        # It planned from the volume before the first one's last write: it must have noticed
        # (the check under the lock) and planned again.
        assert two["reads"][0] < max(one["renames"])
        assert json.loads(out2)["applied"]["attempts"] >= 2, err2
        again = _apply(second, volume)
        assert again.stdout.startswith("No changes"), again.stdout  # the second one's state won
        assert not _lock(volume).exists()


def test_second_apply_says_clearly_it_is_busy(applied: tuple[Volume, Path, Path],
                                              tmp_path: Path) -> None:
    volume, a, b = applied
    log = tmp_path / "first.log"
    p1 = _traced_apply(b, volume, log, stop_at=1)
    pid = _wait_stopped(p1, log, volume)
    before = time.monotonic()
    busy = _apply(a, volume, "--lock-timeout", "0.5")
    os.kill(pid, signal.SIGCONT)
    p1.communicate(timeout=120)
    assert p1.returncode == 0, log.with_suffix(".err").read_text()
    assert busy.returncode == 1, busy.stdout
    assert "waiting for another dms-reconciler applying to" in busy.stderr
    assert "another dms-reconciler has been applying to" in busy.stderr
    assert "for more than 0.5 s; nothing was written, try again" in busy.stderr
    assert time.monotonic() - before < 60
    assert _apply(b, volume).stdout.startswith("No changes")  # the first one's result stands


# --- signals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("stop_at", [1, 2])
@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated"),
                                                (signal.SIGINT, 130, "interrupted")])
def test_signal_mid_apply_releases_the_lock(applied: tuple[Volume, Path, Path], tmp_path: Path,
                                            signum: int, code: int, word: str,
                                            stop_at: int) -> None:
    """The signal arrives while the apply holds the lock with `stop_at` files in place."""
    volume, _a, b = applied
    old = read_files(volume)
    log = tmp_path / "stopped.log"
    p1 = _traced_apply(b, volume, log, stop_at=stop_at)
    pid = _wait_stopped(p1, log, volume)
    os.kill(pid, signum)  # pending until it runs again
    os.kill(pid, signal.SIGCONT)
    p1.communicate(timeout=60)
    err = log.with_suffix(".err").read_text()
    assert p1.returncode == code, err
    assert word in err and "Traceback" not in err
    assert not _lock(volume).exists()
    assert not [n for n in os.listdir(volume.config) if ".dms-reconciler-" in n]
    after = read_files(volume)
    assert any(after[n] != old[n] for n in old), "the signal came before any write"
    final = _apply(b, volume)
    assert final.returncode == 0 and "Apply complete" in final.stdout


# --- DMS's `setup` CLI writing at the same time -------------------------------------------------

# What `setup email add/del` and `setup alias add` do to the files (no lock, `>>` appends and
# `sed -i` edits through a new inode), in a tight loop, logging every operation.
SETUP_CLI_RACER = r"""
cd "$1"; STOP="$2"; LOG="$3"; PAUSE="$4"; i=0
HASH='{SHA512-CRYPT}$6$racesaltracesalt$3mUNCWdHb9GFkUrBvZdNMpcz6ix9d2WEpw0rLbFx3IR3cudCRvc7J8AG8MMJzRMEgZ8v5tNjXMuP1oU6zhF/q1'
while [[ ! -e "${STOP}" ]]; do
  i=$((i + 1))
  echo "racer${i}@example.com|${HASH}" >> postfix-accounts.cf && echo "add-account racer${i}" >> "$LOG"
  echo "racealias${i}@example.com fwd${i}@elsewhere.test" >> postfix-virtual.cf \
    && echo "add-alias racealias${i}" >> "$LOG"
  if (( i % 2 == 0 )); then
    k=$(( i % 5 ))
    sed -i "s/^hand${k}@example.com .*/hand${k}@example.com v${i}@elsewhere.test/" postfix-virtual.cf \
      && echo "set-alias hand${k} v${i}" >> "$LOG"
  fi
  if (( i % 2 == 1 )); then
    sed -i "/^racer$(( i - 2 ))@example.com|/d" postfix-accounts.cf \
      && echo "del-account racer$(( i - 2 ))" >> "$LOG"
  fi
  (( PAUSE > 0 )) && sleep "0.$(printf %03d $(( RANDOM % PAUSE )))"
done
echo done >> "$LOG"
"""


def _expected_from(log: Path) -> tuple[set[str], set[str], dict[str, str]]:
    accounts: set[str] = set()
    aliases: set[str] = set()
    hand = {f"hand{k}@example.com": f"was{k}@elsewhere.test" for k in range(5)}
    lines = log.read_text().split()
    assert lines[-1] == "done"
    for op, arg, *rest in (line.split(" ") for line in log.read_text().splitlines()[:-1]):
        if op == "add-account":
            accounts.add(f"{arg}@example.com")
        elif op == "del-account":
            accounts.discard(f"{arg}@example.com")
        elif op == "add-alias":
            aliases.add(f"{arg}@example.com")
        elif op == "set-alias":
            hand[f"{arg}@example.com"] = f"{rest[0]}@elsewhere.test"
    return accounts, aliases, hand


@pytest.mark.parametrize("pause_ms, seconds", [(0, 4), (150, 12)])
def test_setup_cli_racing_apply_loses_nothing(applied: tuple[Volume, Path, Path],
                                              tmp_path: Path, pause_ms: int,
                                              seconds: int) -> None:
    """A tight loop (applies mostly re-plan and give up), then bursts with pauses of up to
    `pause_ms` (applies get through, and the writer hits their write sequence)."""
    from reconciler.formats import accounts as accounts_codec
    from reconciler.formats import virtual as virtual_codec

    volume, a, b = applied
    with open(volume.config / "postfix-virtual.cf", "a") as handle:
        handle.writelines(f"hand{k}@example.com was{k}@elsewhere.test\n" for k in range(5))
    log, stop = tmp_path / "racer.log", tmp_path / "stop"
    racer = subprocess.Popen(["bash", "-c", SETUP_CLI_RACER, "racer", str(volume.config),
                              str(stop), str(log), str(pause_ms)])
    # The writer runs for `seconds` and until enough applies got through (a loaded machine runs
    # fewer applies a second), at most ten times as long; then the test stops it.
    minimum = int(os.environ.get("DMS_RECONCILER_RACE_MS", str(seconds * 1000))) / 1000
    need = 3 if pause_ms else 0
    started = time.monotonic()
    results: list[subprocess.CompletedProcess[str]] = []
    while racer.poll() is None:
        elapsed = time.monotonic() - started
        if elapsed >= 10 * minimum or (
                elapsed >= minimum and sum(r.returncode == 0 for r in results) >= need):
            stop.touch()
            break
        for desired in (b, a):
            # Plain renames (the state file's, between our check of the files and putting them
            # in place) are slowed down: the writer gets into that window far more often. The
            # exchanges themselves are not slowed: their windows are microseconds in real life.
            results.append(subprocess.run(
                [require_strace(), "-qq", "--seccomp-bpf", "-o", "/dev/null",
                 "-e", "trace=rename", "-e", "inject=rename:delay_enter=150ms",
                 *cli_command("apply", "-f", str(desired), *volume.args(), "--format", "json")],
                check=False, capture_output=True, text=True, env=cli_env(ENV)))
    racer.wait()
    final = _apply(a, volume)
    assert final.returncode == 0, final.stderr
    for result in results:
        assert "Traceback" not in result.stderr
        assert result.returncode == 0 or "kept changing" in result.stderr, result.stderr
    # A tight loop may keep every apply re-planning until it gives up (safe, and said clearly);
    # with pauses, applies must get through while the writer keeps going.
    assert sum(r.returncode == 0 for r in results) >= need, "too few applies got through"

    want_accounts, want_aliases, want_hand = _expected_from(log)
    got_accounts = accounts_codec.parse((volume.config / "postfix-accounts.cf").read_text())
    got_virtual = virtual_codec.parse((volume.config / "postfix-virtual.cf").read_text())
    racers = {a for a in got_accounts.entries if a.startswith("racer")}
    assert not want_accounts - racers, f"lost accounts: {sorted(want_accounts - racers)[:5]}"
    assert not racers - want_accounts, f"resurrected: {sorted(racers - want_accounts)[:5]}"
    race_aliases = {k for k in got_virtual.entries if k.startswith("racealias")}
    assert not want_aliases - race_aliases, f"lost aliases: {sorted(want_aliases - race_aliases)[:5]}"
    for key, target in want_hand.items():
        assert got_virtual.entries[key].targets == (target,), f"lost the edit of {key}"
    carried = sum(json.loads(r.stdout)["applied"]["carried_lines"] for r in results
                  if r.returncode == 0)
    print(f"\n{len(results)} applies raced {len(want_accounts) + len(want_aliases)} entries; "
          f"{sum(r.returncode != 0 for r in results)} gave up; {carried} late lines carried")


def test_sed_and_append_between_check_and_replace(applied: tuple[Volume, Path, Path],
                                                  tmp_path: Path) -> None:
    """Deterministic: while apply is stopped after putting its first file in place, `setup` edits
    one file with `sed -i` and appends to another. The edit is given back its place (and the rest
    is re-planned), the appended line is carried over."""
    volume, _, b = applied
    with open(volume.config / "postfix-virtual.cf", "a") as handle:
        handle.write("hand0@example.com was0@elsewhere.test\n")
    with open(volume.config / "dovecot-quotas.cf", "a") as handle:
        handle.write("legacy@example.com:1G\n")
    accounts = volume.config / "postfix-accounts.cf"
    inode = accounts.stat().st_ino
    log = tmp_path / "stopped.log"
    slow = _traced_apply(b, volume, log, stop_at=1)
    pid = _wait_stopped(slow, log, volume)
    assert accounts.stat().st_ino != inode  # the first file is in place; the next ones wait
    subprocess.run(["sed", "-i", "s/^hand0@example.com .*/hand0@example.com edited@elsewhere.test/",
                    str(volume.config / "postfix-virtual.cf")], check=True)
    with open(volume.config / "dovecot-quotas.cf", "a") as handle:
        handle.write("late@example.com:2G\n")
    os.kill(pid, signal.SIGCONT)
    out, _ = slow.communicate(timeout=60)
    assert slow.returncode == 0, log.with_suffix(".err").read_text()
    applied_info = json.loads(out)["applied"]
    assert applied_info["attempts"] >= 2  # the sed edit made it re-plan
    assert applied_info["carried_lines"] >= 1  # the quota appended to the old file
    virtual_text = (volume.config / "postfix-virtual.cf").read_text()
    assert "hand0@example.com edited@elsewhere.test" in virtual_text
    quotas_text = (volume.config / "dovecot-quotas.cf").read_text()
    assert "late@example.com:2G" in quotas_text and "legacy@example.com:1G" in quotas_text
    assert _apply(b, volume).stdout.startswith("No changes")


def test_held_lock_is_refreshed_so_dms_never_finds_it_stale(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import reconciler.volume.lock as lock_module

    monkeypatch.setattr(lock_module, "HEARTBEAT_SECONDS", 0.05)
    lock = DmsLock(str(tmp_path), timeout=1)
    with lock:
        path = tmp_path / LOCK_NAME
        _age(path, 300)  # as if a long write had taken five minutes
        deadline = time.monotonic() + 5
        while time.time() - path.stat().st_mtime > 60:
            assert time.monotonic() < deadline, "the heartbeat never refreshed the lock"
            time.sleep(0.02)
    assert not path.exists()

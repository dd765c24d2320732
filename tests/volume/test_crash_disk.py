"""A full disk and a read-only volume during apply: a clear error, exit 1, no torn file.

Real file systems, no fakes: the volume lives on a small tmpfs (full disk) or behind a read-only
bind mount, made and removed by the test (it runs as root, like .ci/run).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import state as state_file
from tests.support.faultkit import (
    LOCK,
    MANAGED,
    STATE,
    cli_command,
    cli_env,
    desired_yaml,
    read_files,
)
from tests.support.util import Volume, make_volume, run_cli

ENV = {"KEEP_ONE": "k1-Secret", "KEEP_TWO": "k2-Secret", "CHANGED": "ch-Secret",
       "NEW_ONE": "n1-Secret", "NEW_TWO": "n2-Secret"}
N = 120


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], check=False, capture_output=True, text=True)
    assert result.returncode == 0, f"mount {' '.join(args)}: {result.stderr} (the test needs root)"


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to unmount at teardown, last first."""
    made: list[Path] = []
    yield made
    for path in reversed(made):
        _umount(path)


def _apply(desired: Path, volume: Volume, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("apply", "-f", str(desired), *volume.args(), *extra, env=ENV)


def _debris(volume: Volume) -> list[str]:
    names = os.listdir(volume.config) + os.listdir(volume.cron.parent)
    return [n for n in names if ".dms-reconciler-" in n or n == LOCK]


def _write_desired(tmp: Path) -> tuple[Path, Path]:
    a, b = tmp / "a.yaml", tmp / "b.yaml"
    a.write_text(desired_yaml("A", N))
    b.write_text(desired_yaml("B", N))
    return a, b


def _old_or_new(now: dict[str, bytes | None], old: dict[str, bytes | None],
                new: dict[str, bytes | None]) -> list[str]:
    return [n for n in MANAGED if now[n] not in (old[n], new[n])]


def test_disk_full_at_every_stage(tmp_path: Path, mounts: list[Path]) -> None:
    """Leave less and less room on a tmpfs: each apply either succeeds or fails cleanly."""
    a, b = _write_desired(tmp_path)
    new_files = _reference(tmp_path, a, b)
    old_size = sum(len(data or b"") for data in new_files.values())

    outcomes = []
    for free_kib in (0, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512):
        disk = tmp_path / f"disk{free_kib}"
        disk.mkdir()
        _mount("-t", "tmpfs", "-o", f"size={old_size * 3 // 1024 + 1024}k", "tmpfs", str(disk))
        mounts.append(disk)
        volume = make_volume(disk / "dms")
        assert _apply(a, volume).returncode == 0
        old = read_files(volume)
        filler = disk / "filler"
        _fill(filler)
        os.truncate(filler, filler.stat().st_size - free_kib * 1024)

        result = _apply(b, volume)
        assert "Traceback" not in result.stderr + result.stdout
        now = read_files(volume)
        assert not _old_or_new(_masked(now), _masked(old), _masked(new_files)), \
            f"{free_kib} KiB free: a torn file"
        assert not _debris(volume), f"{free_kib} KiB free: left {_debris(volume)}"
        _ownership, problem = state_file.parse((now[STATE] or b"").decode())
        assert problem is None
        if result.returncode == 0:
            outcomes.append("ok")
            assert _masked(now) == _masked(new_files)
        else:
            assert result.returncode == 1
            assert "disk is full" in result.stderr, result.stderr
            outcomes.append("full before any rename" if now == old else "full after renames")
            filler.unlink()  # room again: the next apply finishes the job
            retry = _apply(b, volume)
            assert retry.returncode == 0, retry.stderr
            assert _masked(read_files(volume)) == _masked(new_files)
        _umount(disk)
        mounts.remove(disk)
    print("disk-full outcomes:", outcomes)
    assert "ok" in outcomes and "full before any rename" in outcomes, outcomes


def _fill(path: Path) -> None:
    """Write zeros to `path` until the file system is full."""
    block = b"\0" * 4096
    with open(path, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC


def _reference(tmp: Path, a: Path, b: Path) -> dict[str, bytes | None]:
    """The files apply B makes from state A, on a plain folder."""
    probe = make_volume(tmp / "reference")
    assert _apply(a, probe).returncode == 0
    assert _apply(b, probe).returncode == 0
    return read_files(probe)


def _masked(files: dict[str, bytes | None]) -> dict[str, bytes | None]:
    """Hashes made at apply have random salts, and each volume has its own plan key: compare
    everything else."""
    out = dict(files)
    data = out["postfix-accounts.cf"] or b""
    out["postfix-accounts.cf"] = b"\n".join(
        line.split(b"|")[0] if line.startswith(b"env") else line for line in data.split(b"\n"))
    if out[STATE] is not None:
        ownership, _ = state_file.parse(out[STATE].decode())
        out[STATE] = repr(sorted(ownership.entries.items())).encode()
    return out


def _read_only(path: Path, mounts: list[Path]) -> None:
    _mount("--bind", str(path), str(path))
    mounts.append(path)
    _mount("-o", "remount,bind,ro", str(path))


def test_read_only_volume(tmp_path: Path, volume: Volume, mounts: list[Path]) -> None:
    a, b = _write_desired(tmp_path)
    assert _apply(a, volume).returncode == 0
    before = volume.snapshot()
    _read_only(volume.root, mounts)
    for command in (["apply", "-f", str(b)], ["apply", "-f", str(b), "--prune"]):
        result = run_cli(*command, *volume.args(), env=ENV)
        assert result.returncode == 1
        assert "read-only" in result.stderr and "nothing was written" in result.stderr
        assert "Traceback" not in result.stderr
    plan = run_cli("plan", "-f", str(b), *volume.args(), env=ENV)
    assert plan.returncode == 0  # planning only reads
    assert volume.snapshot() == before


def test_read_only_cron_folder_fails_after_the_config_files(tmp_path: Path, volume: Volume,
                                                           mounts: list[Path]) -> None:
    """The config volume is writable, the cron file's folder is not: a partial apply."""
    a, b = _write_desired(tmp_path)
    assert _apply(a, volume).returncode == 0
    old = read_files(volume)
    _read_only(volume.cron.parent, mounts)
    result = _apply(b, volume)
    assert result.returncode == 1
    assert "read-only" in result.stderr and str(volume.cron) in result.stderr
    assert "Traceback" not in result.stderr
    now = read_files(volume)
    assert now["cron"] == old["cron"]
    assert now["postfix-accounts.cf"] != old["postfix-accounts.cf"]  # written before the cron
    assert not _debris(volume)  # lock released, temp files removed
    ownership, problem = state_file.parse((now[STATE] or b"").decode())
    old_own, _ = state_file.parse((old[STATE] or b"").decode())
    assert problem is None
    for name, keys in old_own.entries.items():  # nothing we wrote became unmanaged
        assert keys <= ownership.owned(name)
    _umount(volume.cron.parent)
    mounts.remove(volume.cron.parent)
    retry = _apply(b, volume)
    assert retry.returncode == 0, retry.stderr
    assert _apply(b, volume).stdout.startswith("No changes")


def test_volume_turns_read_only_in_the_middle_of_apply(tmp_path: Path, volume: Volume,
                                                       mounts: list[Path]) -> None:
    """Remounted read-only while apply is between two renames (slowed by strace)."""
    from tests.support.faultkit import require_strace

    a, b = _write_desired(tmp_path)
    new = _reference(tmp_path, a, b)
    assert _apply(a, volume).returncode == 0
    old = read_files(volume)
    _mount("--bind", str(volume.config), str(volume.config))
    mounts.append(volume.config)
    slow = subprocess.Popen(
        [require_strace(), "-qq", "-o", "/dev/null", "-e", "trace=rename,renameat2",
         "-e", "inject=rename,renameat2:delay_enter=700ms",
         *cli_command("apply", "-f", str(b), *volume.args())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=cli_env({**ENV, "DMS_RECONCILER_DEBUG": "1"}))
    deadline = time.monotonic() + 60
    while not (volume.config / LOCK).exists():
        assert time.monotonic() < deadline and slow.poll() is None, "apply never took the lock"
        time.sleep(0.01)
    time.sleep(1.0)  # the state file is renamed; the first managed file is on its way
    _mount("-o", "remount,bind,ro", str(volume.config))
    _out, err = slow.communicate(timeout=60)
    assert slow.returncode == 1, err
    assert "read-only" in err and "Traceback" not in err
    now = read_files(volume)
    assert not _old_or_new(_masked(now), _masked(old), _masked(new))
    assert now != old  # some files were written before the volume turned read-only
    _umount(volume.config)
    mounts.remove(volume.config)
    # The lock could not be removed from the read-only volume; its owner has exited, so the next
    # apply takes it over at once and converges.
    started = time.monotonic()
    retry = _apply(b, volume)
    assert retry.returncode == 0, retry.stderr
    assert time.monotonic() - started < 30
    assert not _debris(volume)
    assert _apply(b, volume).stdout.startswith("No changes")

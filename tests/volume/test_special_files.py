"""A FIFO, a device, a socket or a huge file where a regular file belongs never hangs a command.

Every path a user names (the desired file, a saved plan, export's output) is read or written as a
regular file only, without blocking and with a size bound (reconciler/readfile.py): each command
refuses it at once with a message naming the file, exit 1, no traceback, nothing written. The
sidecar reads the desired file the same way, so a FIFO there is an error in its log and SIGTERM
still stops it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.load.yamlload import MAX_BYTES
from reconciler.readfile import NotReadable, read_regular
from tests.support.util import Volume, make_volume, run_cli, sha512_hash
from tests.support.watch_process import WatchProcess

VALID = f"""version: 1
domains: [example.com]
accounts:
  admin@example.com: {{password_hash: "{sha512_hash('x')}"}}
"""


@pytest.fixture(params=["fifo", "device", "socket", "huge"])
def special(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    path = tmp_path / "mailserver.yaml"
    kind = request.param
    held: socket.socket | None = None
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")  # never ends: read without a bound it fills memory
    elif kind == "socket":
        held = socket.socket(socket.AF_UNIX)
        held.bind(str(path))
    else:
        with open(path, "wb") as handle:  # sparse: 1 GiB without the disk space
            handle.truncate(1 << 30)
    yield kind, path
    if held is not None:
        held.close()


WORDS = {"fifo": "named pipe (FIFO)", "device": "a device", "socket": "a socket",
         "huge": "the limit is"}


def _refused(result: object, words: str, path: Path) -> str:
    out = result.stdout + result.stderr  # type: ignore[attr-defined]
    assert result.returncode == 1, out  # type: ignore[attr-defined]
    assert words in out, out
    assert str(path) in out, out
    assert "Traceback" not in out
    return out


def test_every_command_refuses_a_special_desired_file_at_once(
        special: tuple[str, Path], tmp_path: Path) -> None:
    kind, path = special
    volume = make_volume(tmp_path / "dms")
    start = time.monotonic()
    for command in (["validate"], ["validate", "--format", "json"], ["plan"], ["apply"]):
        extra = volume.args() if command[0] != "validate" else []
        result = run_cli(*command, "-f", str(path), *extra, timeout=30)
        _refused(result, WORDS[kind], path)
    assert time.monotonic() - start < 30
    assert sorted(os.listdir(volume.config)) == []  # nothing written


def test_reader_bounds(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    with pytest.raises(NotReadable, match="the limit is"):
        read_regular(str(big), 10)
    assert read_regular(str(big), 11) == b"x" * 11
    with pytest.raises(NotReadable) as missing:
        read_regular(str(tmp_path / "nowhere"), 10)
    assert missing.value.missing
    with pytest.raises(NotReadable, match="directory"):
        read_regular(str(tmp_path), 10)
    assert MAX_BYTES < 1 << 30


def test_a_saved_plan_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "plan.json"
    os.mkfifo(fifo)
    result = run_cli("apply", str(fifo), timeout=30)
    _refused(result, "named pipe (FIFO)", fifo)


def _volume_with_account(tmp_path: Path) -> Volume:
    volume = make_volume(tmp_path / "dms")
    (volume.config / "postfix-accounts.cf").write_text(f"admin@example.com|{sha512_hash('x')}\n")
    return volume


def test_export_never_writes_into_a_fifo_or_a_device(tmp_path: Path) -> None:
    volume = _volume_with_account(tmp_path)
    fifo = tmp_path / "out.yaml"
    os.mkfifo(fifo)
    for force in ([], ["--force"]):
        result = run_cli("export", *volume.args(), "-o", str(fifo), *force, timeout=30)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
    device = tmp_path / "null"
    device.symlink_to("/dev/null")
    result = run_cli("export", *volume.args(), "-o", str(device), "--force", timeout=30)
    assert result.returncode == 1  # a symlink is never followed (O_NOFOLLOW)


def test_export_to_stdout(tmp_path: Path) -> None:
    volume = _volume_with_account(tmp_path)
    result = run_cli("export", *volume.args(), "-o", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "-").exists()
    assert "admin@example.com" in result.stdout and "Exported:" in result.stderr
    saved = tmp_path / "from-stdout.yaml"
    saved.write_text(result.stdout)
    assert run_cli("validate", "-f", str(saved)).returncode == 0


def test_the_sidecar_logs_a_fifo_and_still_stops_on_sigterm(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    desired_dir = tmp_path / "desired"
    desired_dir.mkdir()
    fifo = desired_dir / "mailserver.yaml"
    os.mkfifo(fifo)
    with WatchProcess(["-f", str(fifo), *volume.args(), "--interval", "1"],
                      cwd=tmp_path) as watcher:
        watcher.wait_for_log(lambda r: "named pipe (FIFO)" in str(r), timeout=20,
                             what="the FIFO reported in the log")
        assert watcher.terminate(timeout=15) == 0
    assert sorted(os.listdir(volume.config)) == []

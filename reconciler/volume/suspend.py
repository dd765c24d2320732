"""Suspending dms-reconciler: a marker in the config volume that stops every write.

`dms-reconciler suspend` writes `dms-reconciler.suspended` (JSON: reason, since, by) into the
config volume; `resume` removes it. While it is there, `apply` refuses and the sidecar only plans
and reports. The marker lives in the volume, not in a process, so it holds for every
dms-reconciler that writes there (the sidecar, a hand-run apply, a CI job) and survives restarts.

The marker is written while holding the peer lock every apply takes before DMS's lock, and apply
checks it again once it holds that lock: when `suspend` returns, no apply that started earlier
is still writing, and none that starts later writes anything.

Anything else under the marker's name (a symlink, a folder, a file that is not our JSON) also
means suspended, with a warning saying what it is: a reconciler that writes when an admin tried
to stop it is worse than one that waits. Nothing there is ever followed, overwritten or deleted
except by `resume`, which removes a marker file or a symlink (never its target), and refuses a
folder.
"""

from __future__ import annotations

import errno
import fcntl
import getpass
import json
import os
import socket
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from reconciler.errors import LockBusy, ReconcilerError, Refused, VolumeError, os_error_text
from reconciler.readfile import kind_of
from reconciler.volume.atomic import fsync_dir

FILENAME = "dms-reconciler.suspended"
FORMAT = 1
MAX_BYTES = 64 * 1024
MAX_REASON = 500
_TEMP_PREFIX = ".dms-reconciler-"  # the executor's temp-file mark: its sweep removes leftovers


class Suspended(Refused):
    """An apply refused because the volume is suspended; nothing was written."""


@dataclass(frozen=True)
class Suspension:
    """The volume is suspended. `warning`: the marker is not one `suspend` wrote (a symlink, a
    folder, unreadable JSON): treated as suspended all the same."""

    reason: str = ""
    since: str = ""  # ISO 8601, UTC
    by: str = ""
    warning: str | None = None

    def describe(self) -> str:
        """`suspended since ... by ...: reason` in one line."""
        text = "suspended"
        if self.since:
            text += f" since {self.since}"
        if self.by:
            text += f" by {self.by}"
        if self.reason:
            text += f": {self.reason}"
        return text

    def to_dict(self) -> dict[str, str | None]:
        return {"reason": self.reason, "since": self.since, "by": self.by, "warning": self.warning}


def marker_path(config_dir: str) -> str:
    return os.path.join(config_dir, FILENAME)


def read(config_dir: str) -> Suspension | None:
    """The suspension recorded in `config_dir`, or None when it is not suspended."""
    path = marker_path(config_dir)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:  # cannot even look: do not write either
        return Suspension(warning=f"cannot look at {path} ({exc.strerror}); treated as suspended")
    if stat.S_ISLNK(info.st_mode):
        return Suspension(
            warning=f"{path} is a symlink, not a marker dms-reconciler wrote; not followed, "
            "treated as suspended (`dms-reconciler resume` removes the link, not its target)"
        )
    if not stat.S_ISREG(info.st_mode):
        return Suspension(
            warning=f"{path} is {kind_of(info.st_mode)}, not a marker dms-reconciler wrote; "
            "treated as suspended until it is removed by hand"
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            data = os.read(fd, MAX_BYTES + 1)
        finally:
            os.close(fd)
        record = json.loads(data.decode("utf-8")) if len(data) <= MAX_BYTES else None
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        return Suspension(
            warning=f"{path} is not a marker dms-reconciler wrote (unreadable); treated as "
            "suspended"
        )

    def text(key: str) -> str:
        value = record.get(key)
        return _one_line(value) if isinstance(value, str) else ""

    return Suspension(text("reason"), text("since"), text("by"))


def refuse_if_suspended(config_dir: str) -> None:
    """Raise `Suspended` (nothing written) when `config_dir` is suspended."""
    found = read(config_dir)
    if found is None:
        return
    warning = f" ({found.warning})" if found.warning else ""
    raise Suspended(
        f"the config volume is {found.describe()}{warning}; nothing was written. "
        "Run `dms-reconciler resume` to apply again"
    )


def suspend(
    config_dir: str, *, reason: str, by: str | None = None, lock_timeout: float = 120.0
) -> tuple[Suspension, bool]:
    """Write the marker; (the suspension now in force, whether this call wrote it). A volume
    already suspended is left as it is."""
    found = read(config_dir)
    if found is not None:
        return found, False
    marker = Suspension(
        reason=_one_line(reason)[:MAX_REASON],
        since=datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        by=by or _who(),
    )
    data = (
        json.dumps(
            {
                "format": FORMAT,
                "comment": "dms-reconciler writes nothing to this volume while this file "
                "exists; `dms-reconciler resume` removes it",
                "reason": marker.reason,
                "since": marker.since,
                "by": marker.by,
            },
            indent=1,
        )
        + "\n"
    ).encode()
    with _PeerLock(config_dir, lock_timeout):
        if read(config_dir) is not None:  # made meanwhile by another `suspend`
            return read(config_dir) or marker, False
        _write_new(marker_path(config_dir), data)
    return marker, True


def resume(config_dir: str) -> Suspension | None:
    """Remove the marker (a file or a symlink, never a folder); the suspension it ended, or None
    when the volume was not suspended."""
    found = read(config_dir)
    if found is None:
        return None
    path = marker_path(config_dir)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return found
    except OSError as exc:
        raise VolumeError(os_error_text(exc, path, outcome="still suspended")) from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
        raise VolumeError(
            f"{path} is {kind_of(info.st_mode)}, not a marker dms-reconciler wrote: not removing "
            "it (it may hold something). Look at it and remove it by hand to resume"
        )
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise VolumeError(os_error_text(exc, path, outcome="still suspended")) from None
    fsync_dir(config_dir)
    return found


def _one_line(text: str) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid with no name (containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _write_new(path: str, data: bytes) -> None:
    """Write `path` whole (a temp file renamed into place) and durably; never follow a symlink."""
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f"{_TEMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}.tmp")
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
    except OSError as exc:
        raise VolumeError(os_error_text(exc, path, outcome="not suspended")) from None
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise VolumeError(os_error_text(exc, path, outcome="not suspended")) from None
    fsync_dir(folder)


class _PeerLock:
    """The lock every dms-reconciler apply takes first (`flock` on the config folder, see
    `lock.DmsLock`): held, no apply is between its check of the marker and its last write."""

    def __init__(self, config_dir: str, timeout: float) -> None:
        self.config_dir = config_dir
        self.timeout = timeout
        self._fd = -1

    def __enter__(self) -> _PeerLock:
        try:
            self._fd = os.open(self.config_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise ReconcilerError(f"{self.config_dir}: no such config volume") from None
            raise VolumeError(
                os_error_text(exc, self.config_dir, outcome="not suspended")
            ) from None
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                pass
            except OSError:  # no flock on this file system: the apply's own check remains
                return self
            if time.monotonic() >= deadline:
                os.close(self._fd)
                raise LockBusy(
                    f"another dms-reconciler has been applying to {self.config_dir} for more "
                    f"than {self.timeout:g} s; not suspended, try again"
                )
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)  # closing the descriptor releases the flock

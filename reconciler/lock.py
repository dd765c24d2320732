"""DMS's change-detector lock, held while we write so DMS never reads half a change.

DMS's `helpers/lock.sh` uses `<config>/check-for-changes.sh.lock`: while it exists, wait; if it is
older than a minute, it is stale and removed; the owner writes a unique id into it and removes it
only if it still holds that id. We follow the same protocol with an atomic `O_CREAT|O_EXCL`
create, so two dms-reconciler processes also exclude each other, and we refresh the lock's mtime
while holding it so DMS never mistakes a long write for a stale lock.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import TracebackType

from reconciler.errors import LockBusy, VolumeError

LOCK_NAME = "check-for-changes.sh.lock"
STALE_SECONDS = 60.0  # DMS: `find "${LOCK_FILE}" -mmin +1` -> removed
HEARTBEAT_SECONDS = 20.0


class DmsLock:
    """Context manager: `with DmsLock(config_dir): ...write files...`."""

    def __init__(
        self,
        config_dir: str,
        *,
        timeout: float = 120.0,
        poll: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.path = os.path.join(config_dir, LOCK_NAME)
        self.timeout = timeout
        self.poll = poll
        self.clock = clock
        self.sleep = sleep
        self.on_wait = on_wait
        self.token = f"dms-reconciler {socket.gethostname()} {os.getpid()} {uuid.uuid4()}"
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> None:
        deadline = self.clock() + self.timeout
        announced = False
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                if self._remove_if_stale():
                    continue
                if self.clock() >= deadline:
                    raise LockBusy(
                        f"{self.path} is held by DMS's change detector or another dms-reconciler "
                        f"for more than {self.timeout:.0f} s; nothing was written, try again"
                    ) from None
                if self.on_wait and not announced:
                    self.on_wait(f"waiting for {self.path} (DMS is applying a change)")
                    announced = True
                self.sleep(self.poll)
                continue
            except OSError as exc:
                raise VolumeError(_why(exc, self.path)) from None
            try:
                os.write(fd, (self.token + "\n").encode())
            finally:
                os.close(fd)
            break
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="dms-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def _remove_if_stale(self) -> bool:
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return True  # released meanwhile: try again at once
        if time.time() - info.st_mtime < STALE_SECONDS:
            return False
        try:
            # Only remove the file we judged stale, not one a new owner created meanwhile.
            if os.lstat(self.path).st_ino == info.st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        return True

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                if self._holds():
                    os.utime(self.path)
            except OSError:
                pass

    def _holds(self) -> bool:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                return handle.read().strip() == self.token
        except OSError:
            return False

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None
        if self._holds():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> DmsLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _why(exc: OSError, path: str) -> str:
    if exc.errno == errno.EROFS:
        return f"the config volume is read-only ({path}); nothing was written"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to write {path}; run as the volume's owner (nothing was written)"
    if exc.errno == errno.ENOSPC:
        return f"the disk is full ({path}); nothing was written"
    if exc.errno == errno.ELOOP:
        return f"{path} is a symlink; refusing to follow it"
    return f"cannot create {path}: {exc.strerror}"

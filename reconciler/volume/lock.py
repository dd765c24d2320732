"""DMS's change-detector lock, held while we write so DMS never reads half a change.

DMS's `helpers/lock.sh` uses `<config>/check-for-changes.sh.lock`: while it exists, wait; if it is
older than a minute, it is stale and removed; the owner writes a unique id into it and removes it
only if it still holds that id. We follow the same protocol, but create the lock atomically with
its content (write a temp file, then `link()` it to the lock name, which fails if the lock exists),
so a lock of ours is never empty. We refresh the lock's mtime while holding it so DMS never
mistakes a long write for a stale lock.

DMS's check-then-create and its stale rule race when several processes contend (one can remove a
lock another just created). So dms-reconciler processes first queue on a kernel lock among
themselves (`flock` on the config folder itself, so the volume gets no extra file; the kernel
releases it when a process dies), and only the one holding it takes part in DMS's protocol.

A dms-reconciler killed while holding the lock (SIGKILL, OOM, power loss of a container) leaves it
behind. Its token names the host, the PID namespace, the PID and the process start time, so another
dms-reconciler on the same host and namespace sees that the owner is gone and takes the lock over
at once instead of stalling a minute; everyone else (DMS included) still uses the one-minute rule.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Self

from reconciler.errors import LockBusy, VolumeError, os_error_text

LOCK_NAME = "check-for-changes.sh.lock"
STALE_SECONDS = 60.0  # DMS: `find "${LOCK_FILE}" -mmin +1` -> removed
HEARTBEAT_SECONDS = 20.0
TOKEN_PREFIX = "dms-reconciler"
TEMP_MARK = (
    ".dms-reconciler-"  # same mark as the executor's temp files: its sweep removes leftovers
)
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK)


def _process_identity(pid: int) -> tuple[str, str]:
    """(PID namespace, start time) of `pid`, or empty strings where /proc does not say."""
    try:
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        namespace = ""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        started = fields[19].decode()  # field 22 of stat(5), counted after the `(comm)` field
    except (OSError, IndexError):
        started = ""
    return namespace, started


def make_token() -> str:
    namespace, started = _process_identity(os.getpid())
    return (
        f"{TOKEN_PREFIX} {socket.gethostname()} {namespace or '-'} {os.getpid()} "
        f"{started or '-'} {uuid.uuid4()}"
    )


def owner_is_dead(token: str) -> int | None:
    """The PID of a dms-reconciler that wrote `token` on this host and namespace and is gone."""
    parts = token.split()
    if len(parts) != 6 or parts[0] != TOKEN_PREFIX or parts[1] != socket.gethostname():
        return None
    namespace, _started = _process_identity(os.getpid())
    if not namespace or parts[2] != namespace or not parts[3].isdigit():
        return None
    pid = int(parts[3])
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    except PermissionError:
        pass  # alive, owned by another user
    _their_namespace, their_start = _process_identity(pid)
    if parts[4] != "-" and their_start and their_start != parts[4]:
        return pid  # the PID was reused by another process
    return None


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
        self.token = make_token()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._peer_fd: int | None = None

    def acquire(self) -> None:
        try:
            deadline = self.clock() + self.timeout
            self._take_peer_lock(deadline)
            self._wait_and_create(deadline)
            self._stop.clear()
            self._heartbeat = threading.Thread(
                target=self._beat, name="dms-lock-heartbeat", daemon=True
            )
            self._heartbeat.start()
        except BaseException:  # e.g. SIGINT right after taking it: never leave the lock behind
            self.release()
            raise

    def _take_peer_lock(self, deadline: float) -> None:
        """Wait until no other dms-reconciler on this volume is taking or holding DMS's lock."""
        path = os.path.dirname(self.path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise VolumeError(_why(exc, path)) from None
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            except OSError:  # no flock on this file system: DMS's protocol alone
                os.close(fd)
                return
            if self.clock() >= deadline:
                os.close(fd)
                raise LockBusy(
                    f"another dms-reconciler has been applying to {path}"
                    f" for more than {self.timeout:g} s; nothing was written, try again"
                )
            if self.on_wait and not announced:
                self.on_wait(f"waiting for another dms-reconciler applying to {path}")
                announced = True
            self.sleep(min(self.poll, 0.05))
        self._peer_fd = fd

    def _wait_and_create(self, deadline: float) -> None:
        announced = False
        while not self._create():
            if self._remove_if_stale():
                continue
            if self.clock() >= deadline:
                raise LockBusy(
                    f"{self.path} is held by DMS's change detector or another dms-reconciler "
                    f"for more than {self.timeout:g} s; nothing was written, try again"
                )
            if self.on_wait and not announced:
                self.on_wait(f"waiting for {self.path} (DMS is applying a change)")
                announced = True
            self.sleep(self.poll)

    def _create(self) -> bool:
        """Create the lock holding our token in one step; False when it exists already."""
        directory = os.path.dirname(self.path)
        tmp = os.path.join(directory, f".{LOCK_NAME}{TEMP_MARK}{uuid.uuid4().hex[:12]}.tmp")
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise VolumeError(_why(exc, self.path)) from None
        try:
            try:
                os.write(fd, (self.token + "\n").encode())
            finally:
                os.close(fd)
            os.link(tmp, self.path, follow_symlinks=False)
            return True
        except FileExistsError:
            return False
        except FileNotFoundError:
            return False  # another apply swept our temp file: try again
        except OSError as exc:
            if exc.errno in _NO_HARD_LINKS:
                return self._create_without_link()
            raise VolumeError(_why(exc, self.path)) from None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _create_without_link(self) -> bool:
        """For file systems without hard links: O_EXCL, then write (briefly empty)."""
        try:
            fd = os.open(
                self.path,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
            )
        except FileExistsError:
            return False
        except OSError as exc:
            raise VolumeError(_why(exc, self.path)) from None
        try:
            os.write(fd, (self.token + "\n").encode())
        except OSError as exc:
            os.close(fd)
            os.unlink(self.path)
            raise VolumeError(_why(exc, self.path)) from None
        os.close(fd)
        return True

    def _remove_if_stale(self) -> bool:
        """Remove a lock older than DMS's one minute, or one whose dms-reconciler owner died."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return True  # released meanwhile: try again at once
        content = lock_token(self.path)
        dead = owner_is_dead(content) if content else None
        if dead is None and time.time() - info.st_mtime < STALE_SECONDS:
            return False
        # Only remove the lock we judged, not one a new owner created meanwhile.
        try:
            now = os.lstat(self.path)
        except FileNotFoundError:
            return True
        if (now.st_ino, now.st_mtime_ns) != (info.st_ino, info.st_mtime_ns) or lock_token(
            self.path
        ) != content:
            return True
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self.on_wait:
            why = (
                f"its owner, dms-reconciler pid {dead}, is gone"
                if dead is not None
                else f"it is older than {STALE_SECONDS:.0f} s"
            )
            self.on_wait(f"removed the stale lock {self.path}: {why}")
        return True

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                if self._holds():
                    os.utime(self.path, follow_symlinks=False)
            except OSError:
                pass

    def _holds(self) -> bool:
        return lock_token(self.path) == self.token

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None
        if self._holds():
            try:
                os.unlink(self.path)
            except OSError:
                # Gone, or the volume turned read-only under us: never let this hide the error
                # that brought us here. A lock we could not remove is taken over by the next
                # dms-reconciler on this host at once (its owner is gone), by DMS after a minute.
                pass
        if self._peer_fd is not None:
            os.close(self._peer_fd)  # closing releases the flock
            self._peer_fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def wait_for_peers(
    config_dir: str,
    *,
    timeout: float,
    on_wait: Callable[[str], None] | None = None,
    poll: float = 0.05,
) -> bool:
    """Wait while another dms-reconciler is applying to `config_dir`; True if one was.

    An apply that found nothing to do must not report "no changes" from a volume another apply
    is rewriting at that moment: it waits for that one and plans again.
    """
    try:
        fd = os.open(config_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    deadline = time.monotonic() + timeout
    waited = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return waited
            except BlockingIOError:
                pass
            except OSError:
                return waited
            if time.monotonic() >= deadline:
                raise LockBusy(
                    f"another dms-reconciler has been applying to {config_dir} for "
                    f"more than {timeout:g} s; nothing was written, try again"
                )
            if on_wait and not waited:
                on_wait(f"waiting for another dms-reconciler applying to {config_dir}")
            waited = True
            time.sleep(poll)
    finally:
        os.close(fd)


def lock_token(path: str) -> str:
    """The lock's content (stripped), never following a symlink; "" when unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return os.read(fd, 4096).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)


def _why(exc: OSError, path: str) -> str:
    return os_error_text(exc, path, outcome="nothing was written")

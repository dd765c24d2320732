"""Putting one file of the volume in place so that it is always whole: the old file or the new.

A new file is staged beside the old one (`stage`: same mode and owner, fsynced) and put in place
with an atomic exchange (`put_in_place`), which hands back exactly the file it displaced: if that is
not the inode `open_and_check` proved, another writer (DMS's `setup`, a `sed -i`) replaced it
meanwhile, so it is swapped back and `VolumeChanged` asks for a new plan. Lines that writer
appended to the old file are carried into ours. The cron file, a single-file bind mount, is
rewritten in place instead (`write_in_place`). The order of whole files is the executor's.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import os
import stat
import uuid
from typing import Any

from reconciler import state as state_file
from reconciler.errors import ReconcilerError, VolumeError, os_error_text
from reconciler.formats import registry
from reconciler.passwords import verified
from reconciler.volume.observe import FileSnapshot, read_snapshot

TEMP_MARK = ".dms-reconciler-"
# The tool's own records: not DMS files (see formats.registry for those), private to the volume.
OWN_RECORD_MODES = {state_file.FILENAME: 0o600, verified.FILENAME: 0o600}


class VolumeChanged(ReconcilerError):
    """A file changed between observing and writing: the caller re-plans from fresh state.

    `written` names the files already put in place before the change was seen (each whole), and
    `carried` counts the late lines of other writers carried into them."""

    def __init__(self, message: str, written: tuple[str, ...] = (), carried: int = 0) -> None:
        super().__init__(message)
        self.written = written
        self.carried = carried


def open_and_check(snap: FileSnapshot, expected_sha256: str | None) -> int:
    """Open the file we are about to replace and prove it is what we planned from.

    The open descriptor is kept: after the rename, lines appended to this old inode by another
    writer are still readable through it.
    """
    try:
        fd = os.open(snap.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if expected_sha256 is not None:
            raise VolumeChanged(f"{snap.path} was deleted since it was read") from None
        return -1
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise VolumeError(f"{snap.path} became a symlink; refusing to follow it") from None
        raise VolumeError(f"cannot read {snap.path}: {exc.strerror}") from None
    if hashlib.sha256(_read_all(fd)).hexdigest() != expected_sha256:
        os.close(fd)
        raise VolumeChanged(f"{snap.path} changed since it was read")
    return fd


def put_in_place(tmp: str, snap: FileSnapshot, held: int, new: bytes) -> tuple[int, int]:
    """Replace `snap.path` by the staged `tmp` unless another writer replaced it since we checked.

    Lines another writer appended to the old file are copied into ours *before* the exchange, so
    a `sed -i` that writer runs right after sees them in our file (copying them after would undo
    a deletion it made meanwhile). Returns (lines carried over, bytes of the old inode dealt with).
    """
    path = snap.path
    if held < 0:  # the file did not exist: create it only if it still does not
        _link_new(tmp, path)
        return 0, 0
    _refuse_symlink(path)
    old = snap.data or b""
    carried, upto, ours = _prefill(tmp, held, old, new)
    try:
        mine, staged_inode = os.fstat(held), os.lstat(tmp)
    except OSError as exc:
        raise VolumeError(why(exc, path)) from None
    if not _is_inode(path, mine):  # replaced since we checked: do not even try
        raise VolumeChanged(f"{path} was changed by another writer while applying")
    if not _exchange(tmp, path):
        return _replace_checked(tmp, snap, held, upto, carried)
    # `tmp` now holds the file we displaced: is it the one we checked, at most appended to?
    try:
        same = _is_inode(tmp, mine)
        now = _read_all(held) if same else b""
    except OSError as exc:
        raise VolumeError(why(exc, path)) from None
    if not same or not now.startswith(old):
        _swap_back(tmp, path, ours, staged_inode)
        unlink_quietly(tmp)
        raise VolumeChanged(f"{path} was changed by another writer while applying")
    carried += _append_tail(path, now[:upto], now[upto:])  # appended in the last microseconds
    unlink_quietly(tmp)
    fsync_dir(os.path.dirname(path))
    return carried, len(now)


def _prefill(tmp: str, held: int, old: bytes, new: bytes) -> tuple[int, int, bytes]:
    """Append to the staged file what was appended to the old one since we checked it.

    Returns (lines copied, bytes of the old file covered, the staged file's content)."""
    now = _read_all(held)
    if len(now) == len(old) or not now.startswith(old):
        return 0, len(old), new  # unchanged, or changed in place: the exchange check decides
    lines = _append_tail(tmp, new, now[len(old) :])
    return lines, len(now), read_snapshot(tmp).data or b""


def _swap_back(tmp: str, path: str, ours: bytes, staged: os.stat_result) -> None:
    """Give another writer's file (now at `tmp`) its place back, unless that writer has already
    replaced ours too (then its newest file stays); keep lines appended to ours meanwhile.

    The windows here are the microseconds between two system calls; a second `setup` command
    landing inside one is the residual risk SECURITY.md describes."""
    if not _is_inode(path, staged):
        return
    if not _exchange(tmp, path):
        raise VolumeError(f"cannot give {path} back to the writer that replaced it")
    try:
        now = read_snapshot(tmp).data or b""
    except VolumeError:
        return
    if len(now) > len(ours) and now.startswith(ours):
        _append_tail(path, b"", now[len(ours) :])


def _is_inode(path: str, info: os.stat_result) -> bool:
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        return False
    return (current.st_ino, current.st_dev) == (info.st_ino, info.st_dev)


def _replace_checked(
    tmp: str, snap: FileSnapshot, held: int, upto: int, carried: int
) -> tuple[int, int]:
    """Without an atomic exchange: check the inode and content as late as possible, rename."""
    try:
        current = os.lstat(snap.path)
    except FileNotFoundError:
        current = None
    mine = os.fstat(held)
    now = _read_all(held)
    if (
        current is None
        or (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev)
        or not now.startswith(snap.data or b"")
    ):
        unlink_quietly(tmp)
        raise VolumeChanged(f"{snap.path} was changed by another writer while applying")
    _commit(tmp, snap.path)
    return carried + _append_tail(snap.path, now[:upto], now[upto:]), len(now)


def _link_new(tmp: str, path: str) -> None:
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        unlink_quietly(tmp)
        raise VolumeChanged(f"{path} was created by another writer while applying") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            unlink_quietly(tmp)
            raise VolumeError(why(exc, path)) from None
        if os.path.lexists(path):  # no hard links here: check, then rename
            unlink_quietly(tmp)
            raise VolumeChanged(f"{path} was created by another writer while applying") from None
        _commit(tmp, path)
        return
    unlink_quietly(tmp)
    fsync_dir(os.path.dirname(path))


def carry_tail(path: str, held: int, upto: int) -> int:
    """Lines appended to the old inode after we put the new file in place: append them too."""
    now = _read_all(held)
    return _append_tail(path, now[:upto], now[upto:]) if len(now) > upto else 0


def _append_tail(path: str, before: bytes, tail: bytes) -> int:
    """Append another writer's late lines to `path` (as `>>` would), keeping line boundaries."""
    if not tail:
        return 0
    if before and not before.endswith(b"\n") and not tail.startswith(b"\n"):
        tail = b"\n" + tail
    if not tail.endswith(b"\n"):
        tail += b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise VolumeError(why(exc, path)) from None
    try:
        view = memoryview(tail)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        raise VolumeError(why(exc, path)) from None
    finally:
        os.close(fd)
    return tail.count(b"\n")


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@functools.cache
def _renameat2() -> Any:
    """libc's renameat2, looked up on first use: importing ctypes costs 25 ms a plan never needs."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # pragma: no cover - glibc older than 2.28, or not glibc
        return None


def _exchange(a: str, b: str) -> bool:
    """Swap the files at `a` and `b` in one step; False when the system or file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise VolumeError(why(OSError(err, os.strerror(err)), b))


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def stage(snap: FileSnapshot, data: bytes) -> str:
    """Write `data` to a temp file beside `snap.path`, with the old file's mode and owner."""
    directory, base = os.path.split(snap.path)
    tmp = os.path.join(directory, f".{base}{TEMP_MARK}{uuid.uuid4().hex[:12]}.tmp")
    mode = snap.mode if snap.mode is not None else _new_file_mode(snap.path)
    if base in _OWNER_ONLY:
        mode &= 0o700  # a world-readable relay password file becomes 0600 when we rewrite it
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise VolumeError(why(exc, snap.path)) from None
    try:
        os.fchmod(fd, mode)  # the umask must not loosen or tighten what the admin chose
        if snap.uid is None and registry.takes_folder_owner(snap.path):
            snap = _with_folder_owner(snap, directory)
        if snap.uid is not None and (snap.uid, snap.gid) != (os.geteuid(), os.getegid()):
            try:
                os.fchown(fd, snap.uid, snap.gid if snap.gid is not None else -1)
            except PermissionError:
                pass  # not root: the file keeps our owner; its mode is still the old one
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        unlink_quietly(tmp)
        raise VolumeError(why(exc, snap.path)) from None
    os.close(fd)
    return tmp


def _with_folder_owner(snap: FileSnapshot, directory: str) -> FileSnapshot:
    """A new file in a folder whose owner its reader needs (Rspamd's DKIM keys): that owner."""
    try:
        info = os.lstat(directory)
    except OSError:
        return snap
    return dataclasses.replace(snap, uid=info.st_uid, gid=info.st_gid)


def _new_file_mode(path: str) -> int:
    base = os.path.basename(path)
    if base in OWN_RECORD_MODES:
        return OWN_RECORD_MODES[base]
    return registry.new_file_mode(path)


_OWNER_ONLY = {f.name for f in registry.FILES if f.owner_only}


def _refuse_symlink(path: str) -> None:
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise VolumeError(f"{path} became a symlink; refusing to replace it")
    except FileNotFoundError:
        pass


def _commit(tmp: str, path: str) -> None:
    _refuse_symlink(path)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        unlink_quietly(tmp)
        raise VolumeError(why(exc, path)) from None
    fsync_dir(os.path.dirname(path))


def atomic_write(path: str, data: bytes, snap: FileSnapshot) -> None:
    _commit(stage(snap if snap.path == path else FileSnapshot(path, None), data), path)


def write_in_place(path: str, data: bytes) -> None:
    """Rewrite keeping the inode: a single-file bind mount would not see a renamed file.

    One pwrite, then truncate. A new text shorter than the old one is padded with blank lines up
    to the old size, so no byte of the old text (half a cron line) can survive a crash between the
    two calls: the file is always the old text, the new one, or the new one followed by blank
    lines (which cron ignores; a later change writes it canonically). A file that did not exist
    may also be seen empty (no jobs) for an instant.
    """
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise VolumeError(f"the folder of the cron file {path} does not exist (give --cron-file)")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise VolumeError(why(exc, path)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise VolumeError(f"{path} is not a regular file; refusing to write it")
        if info.st_nlink > 1:
            raise VolumeError(
                f"{path} has other hard links; refusing to write it in place "
                "(it would change the linked file too)"
            )
        padded = data + b"\n" * max(0, info.st_size - len(data))
        view = memoryview(padded)
        while view:
            view = view[os.pwrite(fd, view, len(padded) - len(view)) :]
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    except OSError as exc:
        raise VolumeError(why(exc, path)) from None
    finally:
        os.close(fd)


def fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def why(exc: OSError, path: str) -> str:
    return os_error_text(exc, path, outcome="the old file is intact")

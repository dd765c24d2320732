"""Read the DMS config volume into an `Observed` state. Stage 2 of the pipeline; read-only.

Reading and parsing are kept apart: `read_snapshot` returns raw bytes (or None for a missing file,
which is not the same as an empty one) and the codecs parse text. Managed files that are symlinks
are refused, never followed: a symlink in the volume could point the writer outside it.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reconciler import state as state_file
from reconciler.errors import VolumeError
from reconciler.formats import accounts, aliases, amavis, cron, quotas, virtual
from reconciler.formats._lines import ParsedFile
from reconciler.gcpause import paused

CRON = "cron"  # logical name of the sa-learn cron file, which lives outside the config dir
MAX_FILE_BYTES = 256 * 1024 * 1024
ENTRY_FILES = (accounts.FILENAME, virtual.FILENAME, aliases.FILENAME, quotas.FILENAME)


@dataclass(frozen=True)
class FileSnapshot:
    """One file as read: its bytes, or None when it does not exist."""

    path: str
    data: bytes | None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    def __repr__(self) -> str:  # the bytes of postfix-accounts.cf are password hashes
        size = "missing" if self.data is None else f"{len(self.data)} bytes"
        return f"FileSnapshot({self.path!r}, {size}, mode={self.mode!r})"

    @property
    def exists(self) -> bool:
        return self.data is not None

    @property
    def text(self) -> str | None:
        # surrogateescape: bytes that are not UTF-8 survive a rewrite unchanged
        return None if self.data is None else self.data.decode("utf-8", "surrogateescape")

    @property
    def sha256(self) -> str | None:
        return None if self.data is None else hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Observed:
    config_dir: str
    cron_path: str
    snapshots: dict[
        str, FileSnapshot
    ]  # logical name -> snapshot (the four entry files, amavis, cron, state)
    accounts: ParsedFile[accounts.AccountLine]
    virtual: ParsedFile[virtual.VirtualLine]
    local_aliases: ParsedFile[aliases.LocalAlias]
    quotas: ParsedFile[quotas.QuotaLine]
    amavis: amavis.AmavisFile | None
    cron: ParsedFile[cron.CronLine] | None
    ownership: state_file.Ownership
    warnings: tuple[str, ...] = ()

    def fingerprint(self) -> dict[str, str | None]:
        """sha256 of every file the plan depends on; a saved plan is stale when this moves."""
        return {name: snap.sha256 for name, snap in sorted(self.snapshots.items())}


def read_snapshot(path: str) -> FileSnapshot:
    """The bytes of `path` without following a symlink; None data when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return FileSnapshot(path, None)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise VolumeError(
                f"{path} is a symlink; refusing to follow it (it could point "
                "outside the config volume): replace it with a regular file"
            ) from None
        if exc.errno == errno.ENOTDIR:
            return FileSnapshot(path, None)
        raise VolumeError(f"cannot read {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise VolumeError(f"{path} is not a regular file; refusing to use it")
        if info.st_size > MAX_FILE_BYTES:
            raise VolumeError(f"{path} is larger than {MAX_FILE_BYTES // 1048576} MiB; refusing it")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    return FileSnapshot(path, data, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)


_CODECS: dict[str, Callable[[str], Any]] = {
    accounts.FILENAME: accounts.parse,
    virtual.FILENAME: virtual.parse,
    aliases.FILENAME: aliases.parse,
    quotas.FILENAME: quotas.parse,
    amavis.FILENAME: amavis.parse,
    CRON: cron.parse,
    state_file.FILENAME: state_file.parse,
}


@functools.lru_cache(maxsize=2 * len(_CODECS))
def _parsed(name: str, data: bytes) -> Any:
    """The parse of one file's bytes, remembered: every parse is a pure function of the bytes,
    and most files are the same as last time (the check after an apply re-reads the files it
    did not write; the sidecar re-reads all of them on every event). Never mutated."""
    return _CODECS[name](data.decode("utf-8", "surrogateescape"))


@paused
def observe(config_dir: str, cron_path: str) -> Observed:
    """Read every file dms-reconciler manages from the volume and parse it."""
    if not os.path.isdir(config_dir):
        raise VolumeError(
            f"config dir {config_dir} does not exist or is not a directory "
            "(give the DMS config volume with --config-dir, usually docker-data/dms/config)"
        )
    snapshots = {
        name: read_snapshot(os.path.join(config_dir, name))
        for name in (*ENTRY_FILES, amavis.FILENAME, state_file.FILENAME)
    }
    snapshots[CRON] = read_snapshot(cron_path)
    warnings: list[str] = []

    def parsed(name: str) -> Any:
        """The parse of a file; None when it does not exist (an entry file: as if empty)."""
        data = snapshots[name].data
        if data is None and name not in ENTRY_FILES:
            return None
        return _parsed(name, data or b"")

    ownership = state_file.Ownership()
    if snapshots[state_file.FILENAME].exists:
        ownership, problem = parsed(state_file.FILENAME)
        if problem:
            warnings.append(problem)
    return Observed(
        config_dir=config_dir,
        cron_path=cron_path,
        snapshots=snapshots,
        accounts=parsed(accounts.FILENAME),
        virtual=parsed(virtual.FILENAME),
        local_aliases=parsed(aliases.FILENAME),
        quotas=parsed(quotas.FILENAME),
        amavis=parsed(amavis.FILENAME),
        cron=parsed(CRON),
        ownership=ownership,
        warnings=tuple(warnings),
    )

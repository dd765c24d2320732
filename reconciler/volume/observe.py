"""Read the DMS config volume into an `Observed` state. Stage 2 of the pipeline; read-only.

Reading and parsing are kept apart: `read_snapshot` returns raw bytes (or None for a missing file,
which is not the same as an empty one) and the codecs parse text. Managed files that are symlinks
are refused, never followed: a symlink in the volume could point the writer outside it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Any

from reconciler import rspamdkeys
from reconciler import state as state_file
from reconciler.configvolume import Volume
from reconciler.errors import VolumeError
from reconciler.formats import (
    access,
    accounts,
    aliases,
    amavis,
    masters,
    opendkim,
    quotas,
    regexp,
    registry,
    relaymap,
    rspamd_ucl,
    sasl,
    virtual,
)
from reconciler.gcpause import paused
from reconciler.observed import (  # the data a read makes; defined below the planner
    CRON,
    FileSnapshot,
    Observed,
    fingerprint_of,
)

MAX_FILE_BYTES = 256 * 1024 * 1024
TEMP_MARK = ".dms-reconciler-"  # the executor's staged files (volume.executor.TEMP_MARK)


def read_snapshots(volume: Volume) -> dict[str, FileSnapshot]:
    """Every file a plan depends on, by logical name (the bytes only, nothing parsed)."""
    refuse_symlinked_folder(volume, opendkim.DIRECTORY)
    snapshots = {
        name: read_snapshot(volume.path(name))
        for name in (*(f.name for f in registry.FILES if f.name != CRON), state_file.FILENAME)
    }
    snapshots.update(_dkim_key_snapshots(volume))
    snapshots.update(_rspamd_override_snapshots(volume))
    snapshots.update(_rspamd_dkim_snapshots(volume))
    snapshots[CRON] = read_snapshot(volume.path(CRON))
    return snapshots


def read_fingerprint(volume: Volume) -> dict[str, str | None]:
    """`Observed.fingerprint()` of the volume as it is now, without parsing the entry files."""
    snapshots = read_snapshots(volume)
    state = snapshots[state_file.FILENAME]
    key = state_file.parse(state.text or "")[0].plan_key if state.exists else ""
    return fingerprint_of(snapshots, key)


def symlink_refusal(path: str, *, folder: bool = False) -> str:
    """Why a symlink in the volume is refused: the same words for a file or a folder, in
    observe, plan, dns, export and apply."""
    real = "a real folder" if folder else "a regular file"
    return (
        f"{path} is a symlink; refusing to follow it (it could point "
        f"outside the config volume): replace it with {real}"
    )


def refuse_symlinked_folder(volume: Volume, folder: str) -> None:
    """Refuse a symlink at `folder` (a logical name such as `opendkim/keys/example.org`) or at
    any folder on the way to it below the volume's folder; a missing folder is fine. O_NOFOLLOW only
    guards a path's last part: a symlinked `opendkim/` would lead every read and write under it
    outside the volume."""
    path = volume.folder
    for part in folder.split("/"):
        path = os.path.join(path, part)
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise VolumeError(f"cannot read {path}: {exc.strerror}") from None
        if stat.S_ISLNK(mode):
            raise VolumeError(symlink_refusal(path, folder=True))
        if not stat.S_ISDIR(mode):
            return  # a file where a folder belongs: reading under it finds nothing


def read_snapshot(path: str) -> FileSnapshot:
    """The bytes of `path` without following a symlink; None data when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return FileSnapshot(path, None)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise VolumeError(symlink_refusal(path)) from None
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
    **{f.name: f.parse for f in registry.FILES if f.parse is not None},
    state_file.FILENAME: state_file.parse,
}


def _codec(name: str) -> Callable[[str], Any]:
    known = _CODECS.get(name)
    if known is not None:
        return known
    row = registry.rspamd_file(name)
    assert row is not None and row.parse is not None, name
    return row.parse


class ParseCache:
    """The last parse of each file, by logical name: every parse is a pure function of the
    bytes, and most files are the same as last time (the check after an apply re-reads the files
    it did not write; the sidecar re-reads all of them on every event, see `prepare_next_read`).
    Only the last parse of each file is kept: the sidecar's memory stays one parse per file,
    however many versions of postfix-virtual.cf it has seen. A parse handed out is never mutated.
    It lives in the caller's `memory.Memory`, not in this module: a one-shot command's apply
    shares one across its plans, the sidecar one across its life."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[bytes, Any]] = {}  # name -> (bytes, their parse)

    def parsed(self, name: str, data: bytes) -> Any:
        """The parse of one file's bytes, remembered."""
        last = self.last.get(name)
        if last is not None and last[0] == data:
            return last[1]
        parsed = _codec(name)(data.decode("utf-8", "surrogateescape"))
        self.last[name] = (data, parsed)
        return parsed


def prepare_next_read(volume: Volume, parses: ParseCache) -> None:
    """Parse the volume as it is now into `parses`, so the next `observe` with them finds the
    files already parsed.

    The sidecar calls this right after it wrote, when nothing waits for it: otherwise the next
    change to mailserver.yaml would start by parsing the files this write produced (at 10,000
    accounts, 50 ms for postfix-virtual.cf) before it could plan.
    """
    observe(volume, parses=parses)


@paused
def observe(volume: Volume, *, parses: ParseCache | None = None) -> Observed:
    """Read every file dms-reconciler manages from the volume and parse it. `parses`: the
    parses of earlier reads to reuse (and to remember these in); None parses every file."""
    parses = ParseCache() if parses is None else parses
    if not os.path.isdir(volume.folder):
        raise VolumeError(
            f"config dir {volume.folder} does not exist or is not a directory "
            "(give the DMS config volume with --config-dir, usually docker-data/dms/config)"
        )
    snapshots = read_snapshots(volume)
    warnings: list[str] = []

    def parsed(name: str) -> Any:
        """The parse of a file; None when it does not exist (an entry file: as if empty)."""
        data = snapshots[name].data
        if data is None and name not in registry.ENTRY_FILES:
            return None
        return parses.parsed(name, data or b"")

    ownership = state_file.Ownership()
    if snapshots[state_file.FILENAME].exists:
        ownership, problem = parsed(state_file.FILENAME)
        if problem:
            warnings.append(problem)
    return Observed(
        volume=volume,
        snapshots=snapshots,
        accounts=parsed(accounts.FILENAME),
        virtual=parsed(virtual.FILENAME),
        local_aliases=parsed(aliases.FILENAME),
        quotas=parsed(quotas.FILENAME),
        amavis=parsed(amavis.FILENAME),
        cron=parsed(CRON),
        ownership=ownership,
        warnings=tuple(warnings),
        masters=parsed(masters.FILENAME),
        regexp=parsed(regexp.FILENAME),
        access={name: parsed(name) for name in access.FILENAMES},
        relaymap=parsed(relaymap.FILENAME),
        sasl=parsed(sasl.FILENAME),
        dkim_tables={name: parsed(name) for name in opendkim.TABLES},
        rspamd_commands=parsed(registry.RSPAMD_COMMANDS.name),
        rspamd_files={
            name: parses.parsed(name, snap.data)
            for name, snap in snapshots.items()
            if snap.data is not None
            and name != registry.RSPAMD_COMMANDS.name
            and registry.rspamd_file(name) is not None
        },
    )


def _rspamd_override_snapshots(volume: Volume) -> dict[str, FileSnapshot]:
    """Every regular file in `rspamd/override.d/` (DMS copies them all to /etc/rspamd/override.d/).
    A symlinked folder on the way or a symlinked file is refused, as for the DKIM keys."""
    return _folder_snapshots(volume, rspamd_ucl.DIRECTORY, lambda name: True)


def _rspamd_dkim_snapshots(volume: Volume) -> dict[str, FileSnapshot]:
    """Every `rspamd/dkim/*.txt` (Rspamd's DKIM keys and their records). A symlinked folder on
    the way or a symlinked key file is refused, never followed, as for OpenDKIM's keys."""
    return _folder_snapshots(volume, rspamdkeys.DIRECTORY, rspamdkeys.is_key_file)


def _folder_snapshots(
    volume: Volume, folder: str, wanted: Callable[[str], bool]
) -> dict[str, FileSnapshot]:
    """The regular files of one folder whose logical name is `wanted` (our staged temp files
    left out). A symlinked folder on the way, or a symlink among the wanted names, is refused:
    nothing outside the volume is read, and apply would otherwise write through it."""
    refuse_symlinked_folder(volume, folder)
    path = volume.path(folder)
    try:
        found = sorted(os.scandir(path), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise VolumeError(f"cannot read {path}: {exc.strerror}") from None
    out: dict[str, FileSnapshot] = {}
    for entry in found:
        name = f"{folder}/{entry.name}"
        if not wanted(name) or TEMP_MARK in entry.name:
            continue
        if entry.is_symlink():
            raise VolumeError(symlink_refusal(entry.path))
        if entry.is_file(follow_symlinks=False):
            out[name] = read_snapshot(entry.path)
    return out


def _dkim_key_snapshots(volume: Volume) -> dict[str, FileSnapshot]:
    """Every `opendkim/keys/<domain>/<selector>.private` and `.txt`. A symlink anywhere on the
    way (`opendkim/`, `keys/`, a domain's folder, a key file) is refused, never entered: nothing
    outside the volume is read, and apply would otherwise write through it."""
    out: dict[str, FileSnapshot] = {}
    refuse_symlinked_folder(volume, f"{opendkim.DIRECTORY}/keys")
    keys = volume.path(f"{opendkim.DIRECTORY}/keys")
    try:
        found = list(os.scandir(keys))
    except (FileNotFoundError, NotADirectoryError):
        return out
    except OSError as exc:
        raise VolumeError(f"cannot read {keys}: {exc.strerror}") from None
    for entry in found:
        if entry.is_symlink():
            raise VolumeError(symlink_refusal(entry.path, folder=True))
    domains = [e for e in found if e.is_dir(follow_symlinks=False)]
    for domain in sorted(domains, key=lambda e: e.name):
        try:
            files = sorted(os.scandir(domain.path), key=lambda e: e.name)
        except OSError as exc:
            raise VolumeError(f"cannot read {domain.path}: {exc.strerror}") from None
        for entry in files:
            if entry.name.endswith((".private", ".txt")):
                name = f"{opendkim.DIRECTORY}/keys/{domain.name}/{entry.name}"
                out[name] = read_snapshot(entry.path)
    return out

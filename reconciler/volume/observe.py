"""Read the DMS config volume into an `Observed` state. Stage 2 of the pipeline; read-only.

Reading and parsing are kept apart: `read_snapshot` returns raw bytes (or None for a missing file,
which is not the same as an empty one) and the codecs parse text. Managed files that are symlinks
are refused, never followed: a symlink in the volume could point the writer outside it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler import state as state_file
from reconciler.errors import VolumeError
from reconciler.formats import (
    access,
    accounts,
    aliases,
    amavis,
    cron,
    masters,
    opendkim,
    quotas,
    regexp,
    registry,
    relaymap,
    sasl,
    virtual,
)
from reconciler.formats._lines import ParsedFile
from reconciler.gcpause import paused

MASTER_KEY = "master:"  # password keys of master users; an account's key is its address
RELAY_KEY = "relay:"  # plaintext relay passwords, by sender domain
CRON = cron.NAME
MAX_FILE_BYTES = 256 * 1024 * 1024
KEYS_PREFIX = opendkim.DIRECTORY + "/keys/"
_EMPTY: ParsedFile[Any] = ParsedFile({})


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
    masters: ParsedFile[masters.MasterLine] = _EMPTY
    regexp: ParsedFile[regexp.RegexpLine] = _EMPTY
    access: dict[str, ParsedFile[access.AccessLine]] = field(default_factory=dict)
    relaymap: ParsedFile[relaymap.RelayLine] = _EMPTY
    sasl: ParsedFile[sasl.SaslLine] = _EMPTY
    dkim_tables: dict[str, ParsedFile[opendkim.TableLine]] = field(default_factory=dict)

    def parsed_files(self) -> list[tuple[str, ParsedFile[Any]]]:
        """Every entry file as parsed, by logical name (a missing file parses as empty)."""
        return [
            (accounts.FILENAME, self.accounts),
            (virtual.FILENAME, self.virtual),
            (aliases.FILENAME, self.local_aliases),
            (quotas.FILENAME, self.quotas),
            (masters.FILENAME, self.masters),
            (regexp.FILENAME, self.regexp),
            *sorted(self.access.items()),
            (relaymap.FILENAME, self.relaymap),
            (sasl.FILENAME, self.sasl),
            *sorted(self.dkim_tables.items()),
        ]

    def parse_problems(self) -> list[str]:
        """What the codecs could not read as entries, each with its file and line: such lines
        are kept as they are, and whoever reads the volume should say so."""
        return [
            f"{name} line {p.line}: {p.message}" if p.line else f"{name}: {p.message}"
            for name, parsed in self.parsed_files()
            for p in parsed.problems
        ]

    def stored_hashes(self) -> dict[str, str]:
        """Password key -> the hash on the volume: accounts by address, masters as
        `master:<name>` (see `passwords.password_sources`)."""
        out = {address: entry.password_hash for address, entry in self.accounts.entries.items()}
        for name, master in self.masters.entries.items():
            out[MASTER_KEY + name] = master.password_hash
        return out

    def stored_plaintext(self) -> dict[str, str]:
        """`relay:<domain>` -> the relay password on the volume (postfix-sasl-password.cf)."""
        return {
            RELAY_KEY + key[1:]: entry.password
            for key, entry in self.sasl.entries.items()
            if key.startswith("@")
        }

    def fingerprint(self) -> dict[str, str | None]:
        """sha256 of every file the plan depends on; a saved plan is stale when this moves.

        postfix-sasl-password.cf holds plaintext passwords, and a plain digest of a short file
        could be searched offline for a weak one: its digest is keyed with the volume's plan key
        (or, before the first apply, taken with the passwords masked)."""
        return fingerprint_of(self.snapshots, self.ownership.plan_key)


def read_snapshots(config_dir: str, cron_path: str) -> dict[str, FileSnapshot]:
    """Every file a plan depends on, by logical name (the bytes only, nothing parsed)."""
    refuse_symlinked_folder(config_dir, opendkim.DIRECTORY)
    snapshots = {
        name: read_snapshot(os.path.join(config_dir, name))
        for name in (*(f.name for f in registry.FILES if f.name != CRON), state_file.FILENAME)
    }
    snapshots.update(_dkim_key_snapshots(config_dir))
    snapshots[CRON] = read_snapshot(cron_path)
    return snapshots


def fingerprint_of(snapshots: dict[str, FileSnapshot], plan_key: str) -> dict[str, str | None]:
    """sha256 by logical name. A missing file of the newer features counts as absent (plans made
    before them stay comparable; a file that appears still moves the fingerprint), and
    postfix-sasl-password.cf, which holds plaintext passwords, gets `secret_file_digest`."""
    out = {
        name: snap.sha256
        for name, snap in sorted(snapshots.items())
        if snap.data is not None or not _newer_feature(name)
    }
    snap = snapshots.get(sasl.FILENAME)
    if snap is not None and snap.data is not None:
        out[sasl.FILENAME] = secret_file_digest(snap.data, plan_key)
    return out


def _newer_feature(name: str) -> bool:
    """A file of `setup`'s features or a DKIM key: absent from plans made before them."""
    return name in registry.SETUP_FILES or name.startswith(KEYS_PREFIX)


def read_fingerprint(config_dir: str, cron_path: str) -> dict[str, str | None]:
    """`Observed.fingerprint()` of the volume as it is now, without parsing the entry files."""
    snapshots = read_snapshots(config_dir, cron_path)
    state = snapshots[state_file.FILENAME]
    key = state_file.parse(state.text or "")[0].plan_key if state.exists else ""
    return fingerprint_of(snapshots, key)


def secret_file_digest(data: bytes, key: str) -> str:
    """A digest of a file holding plaintext secrets that reveals nothing testable offline."""
    import hmac

    if key:
        return "hmac-" + hmac.new(bytes.fromhex(key), data, "sha256").hexdigest()
    masked = re.sub(rb"(?m)^(\s*\S+\s+[^:\s]*:).*$", rb"\1*", data)
    return "masked-" + hashlib.sha256(masked).hexdigest()


def symlink_refusal(path: str, *, folder: bool = False) -> str:
    """Why a symlink in the volume is refused: the same words for a file or a folder, in
    observe, plan, dns, export and apply."""
    real = "a real folder" if folder else "a regular file"
    return (
        f"{path} is a symlink; refusing to follow it (it could point "
        f"outside the config volume): replace it with {real}"
    )


def refuse_symlinked_folder(config_dir: str, folder: str) -> None:
    """Refuse a symlink at `folder` (a logical name such as `opendkim/keys/example.org`) or at
    any folder on the way to it below `config_dir`; a missing folder is fine. O_NOFOLLOW only
    guards a path's last part: a symlinked `opendkim/` would lead every read and write under it
    outside the volume."""
    path = config_dir
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


# file name -> (bytes, their parse) of the last parse of that file
_last_parse: dict[str, tuple[bytes, Any]] = {}


def _parsed(name: str, data: bytes) -> Any:
    """The parse of one file's bytes, remembered: every parse is a pure function of the bytes,
    and most files are the same as last time (the check after an apply re-reads the files it
    did not write; the sidecar re-reads all of them on every event, see `prepare_next_read`).
    Only the last parse of each file is kept: the sidecar's memory stays one parse per file,
    however many versions of postfix-virtual.cf it has seen. Never mutated."""
    last = _last_parse.get(name)
    if last is not None and last[0] == data:
        return last[1]
    parsed = _CODECS[name](data.decode("utf-8", "surrogateescape"))
    _last_parse[name] = (data, parsed)
    return parsed


def prepare_next_read(config_dir: str, cron_path: str) -> None:
    """Parse the volume as it is now, so the next `observe` finds the files already parsed.

    The sidecar calls this right after it wrote, when nothing waits for it: otherwise the next
    change to mailserver.yaml would start by parsing the files this write produced (at 10,000
    accounts, 50 ms for postfix-virtual.cf) before it could plan.
    """
    observe(config_dir, cron_path)


@paused
def observe(config_dir: str, cron_path: str) -> Observed:
    """Read every file dms-reconciler manages from the volume and parse it."""
    if not os.path.isdir(config_dir):
        raise VolumeError(
            f"config dir {config_dir} does not exist or is not a directory "
            "(give the DMS config volume with --config-dir, usually docker-data/dms/config)"
        )
    snapshots = read_snapshots(config_dir, cron_path)
    warnings: list[str] = []

    def parsed(name: str) -> Any:
        """The parse of a file; None when it does not exist (an entry file: as if empty)."""
        data = snapshots[name].data
        if data is None and name not in registry.ENTRY_FILES:
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
        masters=parsed(masters.FILENAME),
        regexp=parsed(regexp.FILENAME),
        access={name: parsed(name) for name in access.FILENAMES},
        relaymap=parsed(relaymap.FILENAME),
        sasl=parsed(sasl.FILENAME),
        dkim_tables={name: parsed(name) for name in opendkim.TABLES},
    )


def _dkim_key_snapshots(config_dir: str) -> dict[str, FileSnapshot]:
    """Every `opendkim/keys/<domain>/<selector>.private` and `.txt`. A symlink anywhere on the
    way (`opendkim/`, `keys/`, a domain's folder, a key file) is refused, never entered: nothing
    outside the volume is read, and apply would otherwise write through it."""
    out: dict[str, FileSnapshot] = {}
    refuse_symlinked_folder(config_dir, f"{opendkim.DIRECTORY}/keys")
    keys = os.path.join(config_dir, opendkim.DIRECTORY, "keys")
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

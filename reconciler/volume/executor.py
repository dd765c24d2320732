"""Apply a plan to the config volume. Stage 5 of the pipeline and the only code that writes.

The order is chosen so that a crash at any instant leaves every file whole (old or new) and the
next apply converges:
1. make new hashes (on every core) and render every file to bytes, before touching anything;
2. take DMS's lock, and check that no file moved since it was observed (else: `VolumeChanged`);
3. record in the state file what we own before and after (the union), so a crash mid-way never
   turns an entry we wrote into an unmanaged one that would then be kept forever;
4. write every file to a temp file beside it and fsync it, then rename them into place one by one,
   keeping mode and owner; the cron file, a single-file bind mount, is rewritten in place;
5. write the final state, release the lock.

DMS's `setup` CLI writes without any lock: it appends with `>>` and edits with `sed -i` (a new
inode renamed over the file). So each file is put in place with an atomic exchange
(`renameat2(RENAME_EXCHANGE)`), which hands back exactly the file we displaced: if it is not the
inode we checked (a `sed -i` landed after the check), it is swapped back and the cycle re-plans
(`VolumeChanged`). Lines appended to the old file after the check are copied into ours before the
exchange, so that writer's next `sed -i` sees them; we hold the old inode open to the end and
carry lines appended to it even later. Where the file system cannot exchange, the inode is checked
right before a plain rename (a window of microseconds instead of none).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import os
import shlex
import stat
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler import dkimkeys, rspamdkeys
from reconciler import state as state_file
from reconciler.errors import (
    LockBusy,
    ReconcilerError,
    Refused,
    SecretError,
    VolumeError,
    os_error_text,
)
from reconciler.formats import (
    accounts,
    amavis,
    cron,
    masters,
    opendkim,
    registry,
    sasl,
)
from reconciler.model import RSPAMD_CONTROLLER_KEY
from reconciler.passwords import rspamd_pw, verified
from reconciler.passwords.sources import Secret, hash_many
from reconciler.plan import DeletionGuard, FilePlan, PendingHash, PendingKey, Plan
from reconciler.volume import suspend
from reconciler.volume.lock import LOCK_NAME, DmsLock, lock_token, owner_is_dead, wait_for_peers
from reconciler.volume.observe import CRON, FileSnapshot, Observed, read_snapshot, symlink_refusal

TEMP_MARK = ".dms-reconciler-"
# The tool's own records: not DMS files (see formats.registry for those), private to the volume.
OWN_RECORD_MODES = {state_file.FILENAME: 0o600, verified.FILENAME: 0o600}
WRITE_ORDER = tuple(f.name for f in registry.FILES)


def write_order(names: Iterable[str]) -> list[str]:
    """`names` in the order files are put in place: DKIM keys first, then WRITE_ORDER."""
    rank = {name: i for i, name in enumerate(WRITE_ORDER)}
    return sorted(names, key=lambda n: (n in rank, rank.get(n, 0), n))


class VolumeChanged(ReconcilerError):
    """A file changed between observing and writing: the caller re-plans from fresh state.

    `written` names the files already put in place before the change was seen (each whole), and
    `carried` counts the late lines of other writers carried into them."""

    def __init__(self, message: str, written: tuple[str, ...] = (), carried: int = 0) -> None:
        super().__init__(message)
        self.written = written
        self.carried = carried


@dataclass(frozen=True)
class ApplyResult:
    written: tuple[str, ...]  # logical names of the files written
    paths: Mapping[str, str]  # logical name -> path
    sha512: Mapping[str, str]  # logical name -> sha512 of what was written (DMS's checksum)
    carried_lines: int = 0  # lines another writer appended while we renamed, carried over
    state_written: bool = False  # the state file (what we own) was created or changed


def require_cron_folder(cron_path: str) -> None:
    """The cron file's folder must exist: it is the host side of a bind mount, so creating it
    here would write beside DMS rather than into it. plan checks this too, so it shows the same
    refusal apply would give."""
    folder = os.path.dirname(cron_path) or "."
    if not os.path.isdir(folder):
        raise VolumeError(
            f"the folder of the cron file {cron_path} does not exist: create it "
            f"(mkdir -p {shlex.quote(folder)}) and bind-mount the file into DMS as "
            "/etc/cron.d/sa-learn, or give --cron-file; nothing was written"
        )


def check_safety(plan: Plan, *, allow_deletions: int | None) -> None:
    """Refuse plans that delete too many entries of a file (accounts, masters, relay, ...: each
    file has its guard) or would leave no account (DMS would shut down)."""
    account = DeletionGuard(
        accounts.FILENAME, plan.account_deletions, plan.deletion_limit, plan.deletion_limit_source
    )
    over: list[tuple[int, str]] = []
    for g in (account, *plan.guards):
        limit, source = (
            (g.limit, g.limit_source)
            if allow_deletions is None
            else (allow_deletions, "--allow-deletions")
        )
        if g.deletions > limit:
            what = "account(s)" if g is account else f"entry(ies) of {g.file}"
            over.append((g.deletions, f"{g.deletions} {what}, more than {limit} ({source})"))
    if over:
        raise Refused(
            f"the plan deletes {' and '.join(text for _, text in over)}; nothing was written. "
            f"Check the plan, then run apply with --allow-deletions {max(n for n, _ in over)}"
        )
    final_accounts = next(f for f in plan.files if f.name == accounts.FILENAME)
    if final_accounts.write and not final_accounts.content[0]:
        raise Refused(
            "the plan would leave postfix-accounts.cf without accounts, and DMS shuts "
            "down without one; nothing was written"
        )


def render_files(
    plan: Plan,
    *,
    hasher: Callable[[Sequence[Secret]], list[str]] = hash_many,
    unresolved_hash: Callable[[str], str] | None = None,
) -> dict[str, bytes]:
    """Bytes for every file the plan writes; new password hashes are made here."""
    pending = sorted(a for a in plan.secrets if a != RSPAMD_CONTROLLER_KEY)
    made = dict(zip(pending, hasher([plan.secrets[a] for a in pending]), strict=True))

    def hash_for(value: Any) -> str:
        if not isinstance(value, PendingHash):
            return str(value)
        if value.address in made:
            return made[value.address]
        if unresolved_hash is not None:
            return unresolved_hash(value.address)
        raise SecretError(
            f"{value.address}: the password could not be read, so apply cannot "
            "hash it (planned with --offline?)"
        )

    out: dict[str, bytes] = {}
    keys: dict[tuple[str, str], dkimkeys.KeyPair] = {}
    for fp in plan.files_to_write():
        if isinstance(fp.content, PendingKey):
            out[fp.name] = _key_file(fp.content, keys)
            continue
        text = render_file(fp, hash_for)
        if isinstance(fp.content, str) and rspamd_pw.PENDING in text:
            text = text.replace(rspamd_pw.PENDING, _rspamd_hash(plan))
        out[fp.name] = text.encode("utf-8", "surrogateescape")
    return out


def _rspamd_hash(plan: Plan) -> str:
    """The Rspamd web UI password's new hash (`rspamadm pw --type pbkdf2`), made now."""
    secret = plan.secrets.get(RSPAMD_CONTROLLER_KEY)
    if secret is None:
        raise SecretError(
            "rspamd.controller: the password could not be read, so apply cannot hash it "
            "(planned with --offline?)"
        )
    return rspamd_pw.make(secret.reveal())


def _key_file(pending: PendingKey, made: dict[tuple[str, str], dkimkeys.KeyPair]) -> bytes:
    """The private key or DNS record file of a key pair made once per (domain, selector):
    OpenDKIM's (`private`, `txt`) or Rspamd's (`rspamd-private`, `rspamd-public`,
    `rspamd-dns`)."""
    pair = made.get((pending.domain, pending.selector))
    if pair is None:
        pair = made[(pending.domain, pending.selector)] = dkimkeys.generate(pending.bits)
    if pending.part in ("private", "rspamd-private"):
        return pair.private_pem
    if pending.part == "rspamd-public":
        return rspamdkeys.render_public(pending.selector, pair.public_b64).encode()
    if pending.part == "rspamd-dns":
        return rspamdkeys.render_dns(pair.public_b64).encode()
    return opendkim.render_txt(pending.domain, pending.selector, pair.public_b64).encode()


def render_file(fp: FilePlan, hash_for: Callable[[Any], str]) -> str:
    if fp.name == amavis.FILENAME:
        return amavis.render(fp.content)
    if fp.name == CRON:
        lines, comments = fp.content
        return cron.render(lines, comments=comments, filename=CRON)
    if isinstance(fp.content, str):  # a whole file decided by the planner (TrustedHosts, .txt)
        return fp.content
    entries, comments, invalid = fp.content
    # the files holding secrets get their hashes (or relay passwords) put in here, at apply
    if fp.name == accounts.FILENAME:
        entries = [
            accounts.AccountLine(e.address, hash_for(e.password_hash), e.extra) for e in entries
        ]
    elif fp.name == masters.FILENAME:
        entries = [masters.MasterLine(e.name, hash_for(e.password_hash)) for e in entries]
    elif fp.name == sasl.FILENAME:
        entries = [sasl.SaslLine(e.key, e.username, hash_for(e.password)) for e in entries]
    return registry.BY_NAME[fp.name].render_lines(entries, comments, invalid)


def apply_plan(
    plan: Plan,
    observed: Observed,
    contents: Mapping[str, bytes],
    *,
    lock_timeout: float = 120.0,
    on_wait: Callable[[str], None] | None = None,
    while_locked: Callable[[tuple[str, ...]], None] | None = None,
    before_write: Callable[[tuple[str, ...]], None] | None = None,
) -> ApplyResult:
    """Write `contents` (from `render_files`) under DMS's lock; see the module docstring.

    `while_locked(written)` runs after the files are written, before DMS's lock is released
    (the sidecar's fast apply); `before_write(names)` under the lock, after every check, just
    before the first file is written (fast apply hides DMS's checksum record from its change
    detector meanwhile). What they raise is not caught here."""
    config_dir = observed.config_dir
    by_name = {fp.name: fp for fp in plan.files}
    snaps = {name: _snapshot(observed, name, by_name) for name in contents}
    todo = [name for name in write_order(contents) if contents[name] != snaps[name].data]
    new_state = plan.ownership
    if not new_state.plan_key:
        new_state = dataclasses.replace(new_state, plan_key=state_file.new_plan_key())
    state_text = state_file.render(new_state).encode()
    state_snap = observed.snapshots[state_file.FILENAME]
    if not todo and state_snap.data == state_text:
        if wait_for_peers(config_dir, timeout=lock_timeout, on_wait=on_wait):
            raise VolumeChanged("another dms-reconciler was applying while we planned")
        _clear_crash_debris(config_dir, on_wait)
        return ApplyResult((), {}, {})

    if CRON in todo:
        require_cron_folder(observed.cron_path)
    written: list[str] = []
    state_written = False
    sha512: dict[str, str] = {}
    carried = 0
    with DmsLock(config_dir, timeout=lock_timeout, on_wait=on_wait):
        suspend.refuse_if_suspended(config_dir)  # again under the lock `suspend` takes too
        _remove_stale_temp_files(config_dir)
        held: dict[str, int] = {}
        staged: dict[str, str] = {}
        late: dict[str, int] = {}  # name -> how much of the old inode was carried so far
        made: list[str] = []  # folders this apply created (opendkim/keys/<domain>/)
        intent_written = placing = done = False
        try:
            # Every check, and every write that can be undone (new folders, staged temp files),
            # before the state file: a refusal up to the first rename leaves the volume as it was.
            for name in todo:
                snap = snaps[name]
                held[name] = _open_and_check(snap, by_name[name].sha256_before)
            _check_unchanged(observed, skip=set(todo))
            made = _make_folders(config_dir, todo)
            for name in todo:
                if not by_name[name].in_place:
                    staged[name] = _stage(snaps[name], contents[name])
            if before_write is not None and todo:
                before_write(tuple(todo))
            if todo:
                intent = state_file.render(observed.ownership.union(new_state)).encode()
                if intent != state_snap.data:  # an unchanged state file is not touched either
                    _atomic_write(os.path.join(config_dir, state_file.FILENAME), intent, state_snap)
                    intent_written = True
            placing = True  # from here a file may be in place before `written` names it
            for name in todo:
                snap = snaps[name]
                if by_name[name].in_place:
                    _write_in_place(snap.path, contents[name])
                else:
                    # `staged` keeps the temp name until it is gone: after an exchange it holds
                    # the displaced old file, which must not outlive an interrupted apply either.
                    lines, upto = _put_in_place(staged[name], snap, held[name], contents[name])
                    del staged[name]
                    carried += lines
                    if held[name] >= 0:
                        late[name] = upto
                written.append(name)
            for name, upto in late.items():  # appends that reached the old inode even later
                carried += _carry_tail(snaps[name].path, held[name], upto)
            for name in written:
                data = read_snapshot(snaps[name].path).data or b""
                sha512[name] = hashlib.sha512(data).hexdigest()
            state_now = read_snapshot(os.path.join(config_dir, state_file.FILENAME))
            if state_now.data != state_text:
                _atomic_write(os.path.join(config_dir, state_file.FILENAME), state_text, state_now)
            state_written = state_text != state_snap.data
            done = True
        except VolumeChanged as exc:
            raise VolumeChanged(str(exc), tuple(written), carried) from None
        except VolumeError as exc:
            if not written:
                raise
            raise VolumeError(
                f"{exc}. Already written, each file whole: {', '.join(written)}; "
                "run apply again to finish"
            ) from None
        finally:
            for fd in held.values():
                if fd >= 0:
                    os.close(fd)
            for tmp in staged.values():
                _unlink_quietly(tmp)
            if not done and not written:
                undo_state = intent_written and not placing
                _undo_prepare(config_dir, made, state_snap if undo_state else None)
        if while_locked is not None and written:
            while_locked(tuple(written))
    paths = {name: snaps[name].path for name in written}
    return ApplyResult(tuple(written), paths, sha512, carried, state_written)


def _make_folders(config_dir: str, names: Iterable[str]) -> list[str]:
    """The folders of files in subfolders of the volume (opendkim/keys/<domain>/), as
    `mkdir -p` in open-dkim makes them; a symlink on the way is refused. Returns the folders
    created, parents first (a refused apply removes them again)."""
    made: list[str] = []
    try:
        _make_folders_into(config_dir, names, made)
    except VolumeError:
        _undo_prepare(config_dir, made, None)
        raise
    return made


def _make_folders_into(config_dir: str, names: Iterable[str], made: list[str]) -> None:
    for name in names:
        folder = os.path.dirname(name)
        if not folder or name == CRON:
            continue
        path = config_dir
        for part in folder.split("/"):
            path = os.path.join(path, part)
            try:
                os.mkdir(path, 0o755)
                made.append(path)
            except FileExistsError:
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    raise VolumeError(symlink_refusal(path, folder=True)) from None
                if not stat.S_ISDIR(mode):
                    raise VolumeError(
                        f"{path} is not a folder; refusing to write into it"
                    ) from None
            except OSError as exc:
                raise VolumeError(_why(exc, path)) from None


def _undo_prepare(config_dir: str, made: list[str], state_snap: FileSnapshot | None) -> None:
    """A refusal before any file was put in place: remove the folders this apply made (each
    only if still empty) and give the state file back its old content (`state_snap`, when the
    intent was already written), so the volume is as it was."""
    if state_snap is not None:
        path = os.path.join(config_dir, state_file.FILENAME)
        try:
            if state_snap.data is None:
                _unlink_quietly(path)
            else:
                _atomic_write(path, state_snap.data, state_snap)
        except VolumeError:
            pass  # the intent is a superset of the old state: harmless, only less tidy
    for path in reversed(made):
        try:
            os.rmdir(path)
        except OSError:
            pass


def _snapshot(observed: Observed, name: str, by_name: Mapping[str, FilePlan]) -> FileSnapshot:
    """The file as observed; a file the volume did not have (a new DKIM key) is missing."""
    snap = observed.snapshots.get(name)
    return snap if snap is not None else FileSnapshot(by_name[name].path, None)


def write_record(config_dir: str, data: bytes) -> None:
    """Replace the `verified` record (mode 0600). Not under DMS's lock: DMS never reads it, and
    every fact in any version of it is true. A failure only costs the next run time."""
    path = os.path.join(config_dir, verified.FILENAME)
    try:
        _atomic_write(path, data, FileSnapshot(path, None))
    except VolumeError:
        pass


def _check_unchanged(observed: Observed, *, skip: set[str]) -> None:
    """Every other file the plan was made from is still as observed (we hold the lock now).

    A plan is only right for the volume it was made from: another apply that finished while we
    waited for the lock may have rewritten files this plan does not touch, or the state file.
    """
    for name, snap in observed.snapshots.items():
        if name not in skip and read_snapshot(snap.path).data != snap.data:
            raise VolumeChanged(f"{snap.path} changed since it was read")


def _open_and_check(snap: FileSnapshot, expected_sha256: str | None) -> int:
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


def _put_in_place(tmp: str, snap: FileSnapshot, held: int, new: bytes) -> tuple[int, int]:
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
        raise VolumeError(_why(exc, path)) from None
    if not _is_inode(path, mine):  # replaced since we checked: do not even try
        raise VolumeChanged(f"{path} was changed by another writer while applying")
    if not _exchange(tmp, path):
        return _replace_checked(tmp, snap, held, upto, carried)
    # `tmp` now holds the file we displaced: is it the one we checked, at most appended to?
    try:
        same = _is_inode(tmp, mine)
        now = _read_all(held) if same else b""
    except OSError as exc:
        raise VolumeError(_why(exc, path)) from None
    if not same or not now.startswith(old):
        _swap_back(tmp, path, ours, staged_inode)
        _unlink_quietly(tmp)
        raise VolumeChanged(f"{path} was changed by another writer while applying")
    carried += _append_tail(path, now[:upto], now[upto:])  # appended in the last microseconds
    _unlink_quietly(tmp)
    _fsync_dir(os.path.dirname(path))
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
        _unlink_quietly(tmp)
        raise VolumeChanged(f"{snap.path} was changed by another writer while applying")
    _commit(tmp, snap.path)
    return carried + _append_tail(snap.path, now[:upto], now[upto:]), len(now)


def _link_new(tmp: str, path: str) -> None:
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        _unlink_quietly(tmp)
        raise VolumeChanged(f"{path} was created by another writer while applying") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            _unlink_quietly(tmp)
            raise VolumeError(_why(exc, path)) from None
        if os.path.lexists(path):  # no hard links here: check, then rename
            _unlink_quietly(tmp)
            raise VolumeChanged(f"{path} was created by another writer while applying") from None
        _commit(tmp, path)
        return
    _unlink_quietly(tmp)
    _fsync_dir(os.path.dirname(path))


def _carry_tail(path: str, held: int, upto: int) -> int:
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
        raise VolumeError(_why(exc, path)) from None
    try:
        view = memoryview(tail)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        raise VolumeError(_why(exc, path)) from None
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
    raise VolumeError(_why(OSError(err, os.strerror(err)), b))


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _stage(snap: FileSnapshot, data: bytes) -> str:
    """Write `data` to a temp file beside `snap.path`, with the old file's mode and owner."""
    directory, base = os.path.split(snap.path)
    tmp = os.path.join(directory, f".{base}{TEMP_MARK}{uuid.uuid4().hex[:12]}.tmp")
    mode = snap.mode if snap.mode is not None else _new_file_mode(snap.path)
    if base in _OWNER_ONLY:
        mode &= 0o700  # a world-readable relay password file becomes 0600 when we rewrite it
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise VolumeError(_why(exc, snap.path)) from None
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
        _unlink_quietly(tmp)
        raise VolumeError(_why(exc, snap.path)) from None
    os.close(fd)
    return tmp


def _with_folder_owner(snap: FileSnapshot, directory: str) -> FileSnapshot:
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
        _unlink_quietly(tmp)
        raise VolumeError(_why(exc, path)) from None
    _fsync_dir(os.path.dirname(path))


def _atomic_write(path: str, data: bytes, snap: FileSnapshot) -> None:
    _commit(_stage(snap if snap.path == path else FileSnapshot(path, None), data), path)


def _write_in_place(path: str, data: bytes) -> None:
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
        raise VolumeError(_why(exc, path)) from None
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
        raise VolumeError(_why(exc, path)) from None
    finally:
        os.close(fd)


def _fsync_dir(directory: str) -> None:
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


def _clear_crash_debris(config_dir: str, on_wait: Callable[[str], None] | None) -> None:
    """Nothing to write, but an apply killed earlier may have left its lock or temp files: take
    the lock (which removes a dead owner's lock) and sweep, so none of it outlives this apply."""
    try:
        names = os.listdir(config_dir)
    except OSError:
        return
    if not any(_is_temp_file(name) for name in names):
        token = lock_token(os.path.join(config_dir, LOCK_NAME)) if LOCK_NAME in names else ""
        if not token or owner_is_dead(token) is None:
            return
    # Best effort, without waiting: leftovers are harmless, a busy lock is not ours to wait for.
    try:
        with DmsLock(config_dir, timeout=0, on_wait=on_wait):
            _remove_stale_temp_files(config_dir)
    except (LockBusy, VolumeError):
        pass


def _is_temp_file(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name and name.endswith(".tmp")


def _remove_stale_temp_files(config_dir: str) -> None:
    """Temp files left by a killed apply (we hold the lock, so none is in use)."""
    try:
        names = os.listdir(config_dir)
    except OSError:
        return
    for name in names:
        if _is_temp_file(name):
            _unlink_quietly(os.path.join(config_dir, name))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _why(exc: OSError, path: str) -> str:
    return os_error_text(exc, path, outcome="the old file is intact")

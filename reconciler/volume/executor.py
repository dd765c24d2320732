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

Here is the order and the guard; `contents` makes the bytes (step 1), `atomic` puts one file in
place (step 4). Paths come from the observed `Volume`: the plan names files by logical name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from reconciler import state as state_file
from reconciler.configvolume import Volume
from reconciler.errors import LockBusy, Refused, VolumeError
from reconciler.formats import accounts, registry
from reconciler.passwords import verified
from reconciler.plan import DeletionGuard, Plan
from reconciler.volume import suspend
from reconciler.volume.atomic import (
    TEMP_MARK,
    VolumeChanged,
    atomic_write,
    carry_tail,
    open_and_check,
    put_in_place,
    stage,
    unlink_quietly,
    why,
    write_in_place,
)
from reconciler.volume.lock import LOCK_NAME, DmsLock, lock_token, owner_is_dead, wait_for_peers
from reconciler.volume.observe import CRON, FileSnapshot, Observed, read_snapshot, symlink_refusal

WRITE_ORDER = tuple(f.name for f in registry.FILES)


def write_order(names: Iterable[str]) -> list[str]:
    """`names` in the order files are put in place: DKIM keys first, then WRITE_ORDER."""
    rank = {name: i for i, name in enumerate(WRITE_ORDER)}
    return sorted(names, key=lambda n: (n in rank, rank.get(n, 0), n))


@dataclass(frozen=True)
class ApplyResult:
    written: tuple[str, ...]  # logical names of the files written
    paths: Mapping[str, str]  # logical name -> path
    sha512: Mapping[str, str]  # logical name -> sha512 of what was written (DMS's checksum)
    carried_lines: int = 0  # lines another writer appended while we renamed, carried over
    state_written: bool = False  # the state file (what we own) was created or changed


def require_cron_folder(volume: Volume) -> None:
    """The cron file's folder must exist: it is the host side of a bind mount, so creating it
    here would write beside DMS rather than into it. plan checks this too, so it shows the same
    refusal apply would give."""
    cron_path = volume.path(CRON)
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
    volume = observed.volume
    folder = volume.folder
    by_name = {fp.name: fp for fp in plan.files}
    snaps = {name: _snapshot(observed, name) for name in contents}
    todo = [name for name in write_order(contents) if contents[name] != snaps[name].data]
    new_state = plan.ownership
    if not new_state.plan_key:
        new_state = dataclasses.replace(new_state, plan_key=state_file.new_plan_key())
    state_text = state_file.render(new_state).encode()
    state_snap = observed.snapshots[state_file.FILENAME]
    if not todo and state_snap.data == state_text:
        if wait_for_peers(folder, timeout=lock_timeout, on_wait=on_wait):
            raise VolumeChanged("another dms-reconciler was applying while we planned")
        _clear_crash_debris(folder, on_wait)
        return ApplyResult((), {}, {})

    if CRON in todo:
        require_cron_folder(volume)
    written: list[str] = []
    state_written = False
    sha512: dict[str, str] = {}
    carried = 0
    with DmsLock(folder, timeout=lock_timeout, on_wait=on_wait):
        suspend.refuse_if_suspended(folder)  # again under the lock `suspend` takes too
        _remove_stale_temp_files(folder)
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
                held[name] = open_and_check(snap, by_name[name].sha256_before)
            _check_unchanged(observed, skip=set(todo))
            made = _make_folders(folder, todo)
            for name in todo:
                if not by_name[name].in_place:
                    staged[name] = stage(snaps[name], contents[name])
            if before_write is not None and todo:
                before_write(tuple(todo))
            if todo:
                intent = state_file.render(observed.ownership.union(new_state)).encode()
                if intent != state_snap.data:  # an unchanged state file is not touched either
                    atomic_write(volume.path(state_file.FILENAME), intent, state_snap)
                    intent_written = True
            placing = True  # from here a file may be in place before `written` names it
            for name in todo:
                snap = snaps[name]
                if by_name[name].in_place:
                    write_in_place(snap.path, contents[name])
                else:
                    # `staged` keeps the temp name until it is gone: after an exchange it holds
                    # the displaced old file, which must not outlive an interrupted apply either.
                    lines, upto = put_in_place(staged[name], snap, held[name], contents[name])
                    del staged[name]
                    carried += lines
                    if held[name] >= 0:
                        late[name] = upto
                written.append(name)
            for name, upto in late.items():  # appends that reached the old inode even later
                carried += carry_tail(snaps[name].path, held[name], upto)
            for name in written:
                data = read_snapshot(snaps[name].path).data or b""
                sha512[name] = hashlib.sha512(data).hexdigest()
            state_now = read_snapshot(volume.path(state_file.FILENAME))
            if state_now.data != state_text:
                atomic_write(volume.path(state_file.FILENAME), state_text, state_now)
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
                unlink_quietly(tmp)
            if not done and not written:
                undo_state = intent_written and not placing
                _undo_prepare(folder, made, state_snap if undo_state else None)
        if while_locked is not None and written:
            while_locked(tuple(written))
    paths = {name: snaps[name].path for name in written}
    return ApplyResult(tuple(written), paths, sha512, carried, state_written)


def _make_folders(folder: str, names: Iterable[str]) -> list[str]:
    """The folders of files in subfolders of the volume (opendkim/keys/<domain>/), as
    `mkdir -p` in open-dkim makes them; a symlink on the way is refused. Returns the folders
    created, parents first (a refused apply removes them again)."""
    made: list[str] = []
    try:
        _make_folders_into(folder, names, made)
    except VolumeError:
        _undo_prepare(folder, made, None)
        raise
    return made


def _make_folders_into(root: str, names: Iterable[str], made: list[str]) -> None:
    for name in names:
        folder = os.path.dirname(name)
        if not folder or name == CRON:
            continue
        path = root
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
                raise VolumeError(why(exc, path)) from None


def _undo_prepare(folder: str, made: list[str], state_snap: FileSnapshot | None) -> None:
    """A refusal before any file was put in place: remove the folders this apply made (each
    only if still empty) and give the state file back its old content (`state_snap`, when the
    intent was already written), so the volume is as it was."""
    if state_snap is not None:
        path = os.path.join(folder, state_file.FILENAME)
        try:
            if state_snap.data is None:
                unlink_quietly(path)
            else:
                atomic_write(path, state_snap.data, state_snap)
        except VolumeError:
            pass  # the intent is a superset of the old state: harmless, only less tidy
    for path in reversed(made):
        try:
            os.rmdir(path)
        except OSError:
            pass


def _snapshot(observed: Observed, name: str) -> FileSnapshot:
    """The file as observed; a file the volume did not have (a new DKIM key) is missing."""
    snap = observed.snapshots.get(name)
    return snap if snap is not None else FileSnapshot(observed.volume.path(name), None)


def write_record(volume: Volume, data: bytes) -> None:
    """Replace the `verified` record (mode 0600). Not under DMS's lock: DMS never reads it, and
    every fact in any version of it is true. A failure only costs the next run time."""
    path = volume.path(verified.FILENAME)
    try:
        atomic_write(path, data, FileSnapshot(path, None))
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


def _clear_crash_debris(folder: str, on_wait: Callable[[str], None] | None) -> None:
    """Nothing to write, but an apply killed earlier may have left its lock or temp files: take
    the lock (which removes a dead owner's lock) and sweep, so none of it outlives this apply."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    if not any(_is_temp_file(name) for name in names):
        token = lock_token(os.path.join(folder, LOCK_NAME)) if LOCK_NAME in names else ""
        if not token or owner_is_dead(token) is None:
            return
    # Best effort, without waiting: leftovers are harmless, a busy lock is not ours to wait for.
    try:
        with DmsLock(folder, timeout=0, on_wait=on_wait):
            _remove_stale_temp_files(folder)
    except (LockBusy, VolumeError):
        pass


def _is_temp_file(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name and name.endswith(".tmp")


def _remove_stale_temp_files(folder: str) -> None:
    """Temp files left by a killed apply (we hold the lock, so none is in use)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if _is_temp_file(name):
            unlink_quietly(os.path.join(folder, name))

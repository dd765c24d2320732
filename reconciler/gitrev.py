"""The git commit mailserver.yaml came from, when it sits in a git work tree.

A checkout, a `git worktree`, or git-sync's layout (`root/current -> .worktrees/<hash>`: the
path goes through a symlink, resolved here once so every question is asked of one worktree).
Asked of real git, read-only: `git rev-parse HEAD HEAD:./<name>` gives the commit and the blob
id of the file in it; the bytes actually loaded are hashed as a git blob and compared with that
id. Equal: the revision is the commit. Different, or the file is not in the commit (new,
untracked, ignored): the revision is `<commit>-dirty`, like `git describe --dirty`. No
`git status`: it would refresh the index (a write, and a lock on a read-only git-sync volume)
and could run a configured fsmonitor command; rev-parse runs nothing from the repository.

Never a failure of the caller: outside any repository the answer is no revision, quietly; a
repository git cannot read (an unreadable `.git`, a worktree whose repository is gone, git
missing, "dubious ownership", a hang) is no revision with a one-line reason.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass

TIMEOUT_SECONDS = 5.0
DIRTY_SUFFIX = "-dirty"
# What would make `git -C DIR` ask another repository than the one holding the file (a
# pre-commit hook runs us with GIT_DIR and GIT_INDEX_FILE set): `git rev-parse --local-env-vars`.
_REPOSITORY_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_GRAFT_FILE",
    "GIT_REPLACE_REF_BASE",
    "GIT_SHALLOW_FILE",
    "GIT_NO_REPLACE_OBJECTS",
)


@dataclass(frozen=True)
class GitRevision:
    """`revision`: `<commit>` or `<commit>-dirty`; None outside git or when git could not say
    (then `problem` says why, in one line)."""

    revision: str | None = None
    problem: str | None = None

    @property
    def commit(self) -> str | None:
        return self.revision.removesuffix(DIRTY_SUFFIX) if self.revision else None

    @property
    def dirty(self) -> bool:
        return bool(self.revision and self.revision.endswith(DIRTY_SUFFIX))

    def short(self) -> str | None:
        """For people: 12 hex digits, `-dirty` kept."""
        if not self.revision:
            return None
        return self.revision[:12] + (DIRTY_SUFFIX if self.dirty else "")


def find_work_tree(folder: str) -> str | None:
    """The nearest folder at or above `folder` (resolved) holding a `.git` entry, or None.

    Looked up here, without git, so that a file outside any repository costs no process."""
    current = os.path.realpath(folder)
    while True:
        if os.path.lexists(os.path.join(current, ".git")):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def blob_id(data: bytes, *, sha256: bool = False) -> str:
    """The id git gives a blob holding `data` (SHA-1, or SHA-256 repositories)."""
    digest = hashlib.sha256() if sha256 else hashlib.sha1()  # noqa: S324 - git's object id
    digest.update(b"blob %d\0" % len(data))
    digest.update(data)
    return digest.hexdigest()


def revision_of(
    path: str, data: bytes | None = None, *, timeout: float = TIMEOUT_SECONDS
) -> GitRevision:
    """The revision of the file at `path` whose content is `data` (read here when None)."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    if find_work_tree(folder) is None:
        return GitRevision()
    name = os.path.basename(path)
    if data is None:
        try:
            with open(os.path.join(folder, name), "rb") as handle:
                data = handle.read()
        except OSError:
            data = None
    env = {k: v for k, v in os.environ.items() if k not in _REPOSITORY_ENV}
    env.update({"LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"})
    command = ["git", "-C", folder, "rev-parse", "HEAD", f"HEAD:./{name}"]
    where = f"the git revision of {path}"
    try:
        done = subprocess.run(
            command, capture_output=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        return GitRevision(problem=f"cannot read {where}: git is not installed")
    except subprocess.TimeoutExpired:
        return GitRevision(problem=f"cannot read {where}: git did not answer in {timeout:g} s")
    except OSError as exc:
        return GitRevision(problem=f"cannot read {where}: {exc.strerror}")
    lines = done.stdout.decode("ascii", "replace").split()
    commit = lines[0] if lines else ""
    if not _is_object_id(commit):
        return GitRevision(problem=f"cannot read {where}: {_git_error(done.stderr)}")
    blob = lines[1] if len(lines) > 1 and done.returncode == 0 else ""
    clean = (
        data is not None and _is_object_id(blob) and blob == blob_id(data, sha256=len(blob) == 64)
    )
    return GitRevision(revision=commit if clean else commit + DIRTY_SUFFIX)


def _is_object_id(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


def _git_error(stderr: bytes) -> str:
    """git's reason in one line: the `fatal:` line, with its advice (safe.directory) kept short."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    fatal = next((line for line in lines if line.startswith("fatal:")), "")
    reason = (fatal or next((line for line in lines if line), "git failed")).removeprefix("fatal: ")
    if "dubious ownership" in reason:
        reason += (
            " (the repository belongs to another user; trust it with "
            "GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0=<its path>)"
        )
    elif "unknown revision" in reason or "ambiguous argument 'HEAD'" in reason:
        reason = "the repository has no commit yet"
    return reason[:300]

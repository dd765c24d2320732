"""The applied revision: the git commit mailserver.yaml came from, in the plan (JSON, text,
Markdown) and the state file. Real git: commits, a `git worktree`, a git-sync style symlink swap,
a dirty work tree, a file outside any repository and a `.git` git cannot read."""

from __future__ import annotations

import json
import os
from pathlib import Path

from reconciler import state
from reconciler.gitrev import revision_of
from tests.support.ci_util import git, make_repo
from tests.support.util import make_volume, run_cli, sha512_hash

HASH = sha512_hash("admin-pass", salt="adminsalt")


def desired(target: str = "admin@example.com") -> str:
    return f"""
version: 1
domains: [example.com]
accounts:
  admin@example.com: {{password_hash: "{HASH}"}}
aliases:
  postmaster@example.com: {target}
"""


def plan_json(file: Path, volume, *more: str) -> dict:
    done = run_cli("plan", "-f", str(file), *volume.args(), "--format", "json", *more)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def recorded(volume) -> str:
    text = (volume.config / state.FILENAME).read_text()
    return state.parse(text)[0].revision


def test_plan_and_state_carry_the_commit_and_only_a_write_records_a_new_one(tmp_path):
    repo = make_repo(tmp_path / "repo")
    first = repo.commit(desired(), "first")
    volume = make_volume(tmp_path / "vol")

    plan = plan_json(repo.file, volume)
    assert plan["desired"]["revision"] == first
    assert "revision_error" not in plan["desired"]
    text = run_cli("plan", "-f", str(repo.file), *volume.args())
    assert text.stdout.splitlines()[0] == f"Desired state: {repo.file} at git commit {first[:12]}"
    md = run_cli("plan", "-f", str(repo.file), *volume.args(), "--format", "markdown")
    assert f"Desired state at git commit `{first[:12]}`." in md.stdout

    applied = run_cli("apply", "-f", str(repo.file), *volume.args())
    assert applied.returncode == 0, applied.stderr
    assert recorded(volume) == first

    # A commit that does not touch the volume: no write, so the record keeps the first commit.
    (repo.root / "README").write_text("docs\n")
    git(repo.root, "add", "README")
    git(repo.root, "commit", "-q", "-m", "docs")
    before = volume.snapshot()
    assert run_cli("apply", "-f", str(repo.file), *volume.args()).returncode == 0
    assert volume.snapshot() == before

    third = repo.commit(desired("other@example.net"), "third")
    assert run_cli("apply", "-f", str(repo.file), *volume.args()).returncode == 0
    assert recorded(volume) == third


def test_a_dirty_or_untracked_file_says_so(tmp_path):
    repo = make_repo(tmp_path / "repo")
    commit = repo.commit(desired(), "first")
    volume = make_volume(tmp_path / "vol")
    repo.write(desired("changed@example.net"))  # edited, not committed
    assert plan_json(repo.file, volume)["desired"]["revision"] == commit + "-dirty"
    text = run_cli("plan", "-f", str(repo.file), *volume.args()).stdout
    assert "(with changes not committed)" in text.splitlines()[0]
    git(repo.root, "add", repo.rel)  # staged is still not committed
    assert plan_json(repo.file, volume)["desired"]["revision"] == commit + "-dirty"

    other = tmp_path / "repo" / "sub" / "mailserver.yaml"  # never added
    other.parent.mkdir()
    other.write_text(desired())
    assert plan_json(other, volume)["desired"]["revision"] == commit + "-dirty"
    git(repo.root, "checkout", "-q", "HEAD", "--", repo.rel)
    assert plan_json(repo.file, volume)["desired"]["revision"] == commit


def test_git_worktree_and_a_git_sync_symlink_swap(tmp_path):
    repo = make_repo(tmp_path / "repo")
    one = repo.commit(desired(), "one")
    two = repo.commit(desired("other@example.net"), "two")
    volume = make_volume(tmp_path / "vol")

    # git-sync: worktrees under .worktrees/<hash>, `current` a symlink swapped to the new one.
    root = tmp_path / "git-sync"
    root.mkdir()
    for commit in (one, two):
        git(repo.root, "worktree", "add", "-q", "--detach", str(root / ".worktrees" / commit), commit)
    (root / "current").symlink_to(Path(".worktrees") / one)
    through_link = root / "current" / "mailserver.yaml"
    assert plan_json(through_link, volume)["desired"]["revision"] == one
    tmp_link = root / "current.tmp"
    tmp_link.symlink_to(Path(".worktrees") / two)
    os.replace(tmp_link, root / "current")
    plan = plan_json(through_link, volume)
    assert plan["desired"]["revision"] == two
    assert plan["desired"]["file"] == str(through_link)  # the path as given, not resolved


def test_outside_git_there_is_no_revision_and_no_warning(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "mailserver.yaml").write_text(desired())
    volume = make_volume(tmp_path / "vol")
    done = run_cli("plan", "-f", str(folder / "mailserver.yaml"), *volume.args(), "--format", "json")
    assert done.returncode == 0 and done.stderr == ""
    assert set(json.loads(done.stdout)["desired"]) == {"file", "sha256"}
    assert run_cli("apply", "-f", str(folder / "mailserver.yaml"), *volume.args()).returncode == 0
    assert "revision" not in json.loads((volume.config / state.FILENAME).read_text())


def test_a_git_dir_git_cannot_read_is_a_message_not_a_failure(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "mailserver.yaml").write_text(desired())
    # what a `git worktree` leaves once its repository is gone
    (folder / ".git").write_text(f"gitdir: {tmp_path}/gone/.git/worktrees/broken\n")
    volume = make_volume(tmp_path / "vol")
    done = run_cli("plan", "-f", str(folder / "mailserver.yaml"), *volume.args(), "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert "revision" not in data["desired"]
    assert "not a git repository" in data["desired"]["revision_error"]
    assert "cannot read the git revision" in done.stderr and "Traceback" not in done.stderr
    applied = run_cli("apply", "-f", str(folder / "mailserver.yaml"), *volume.args())
    assert applied.returncode == 0, applied.stderr


def test_git_missing_or_hanging_is_a_message(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo")
    repo.commit(desired())
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no git on PATH
    found = revision_of(str(repo.file))
    assert found.revision is None and found.problem and "git is not installed" in found.problem
    hang = tmp_path / "bin"
    hang.mkdir()
    (hang / "git").write_text("#!/bin/sh\nexec /bin/sleep 30\n")
    (hang / "git").chmod(0o755)
    monkeypatch.setenv("PATH", str(hang))
    found = revision_of(str(repo.file), timeout=0.5)
    assert found.revision is None and "did not answer in 0.5 s" in (found.problem or "")


def test_the_revision_is_asked_of_the_files_repository_not_of_GIT_DIR(tmp_path, monkeypatch):
    """A pre-commit hook runs us with GIT_DIR set (to another repository, here)."""
    repo = make_repo(tmp_path / "repo")
    commit = repo.commit(desired())
    other = make_repo(tmp_path / "other")
    other.commit(desired("x@example.net"))
    monkeypatch.setenv("GIT_DIR", str(other.root / ".git"))
    assert revision_of(str(repo.file)).revision == commit


def test_state_files_with_and_without_a_revision_read_back():
    old = state.parse('{"format": 1, "owned": {"postfix-virtual.cf": ["a@example.com"]}}')[0]
    assert old.revision == "" and old.owned("postfix-virtual.cf") == {"a@example.com"}
    new = state.Ownership({"postfix-virtual.cf": frozenset({"a"})}, revision="ab" * 20 + "-dirty")
    assert state.parse(state.render(new))[0] == new
    assert json.loads(state.render(new)) == json.loads(json.dumps(json.loads(state.render(new))))
    damaged = state.parse('{"format": 1, "owned": {}, "revision": "not a commit"}')
    assert damaged[0].revision == "" and damaged[1] is None
    assert "revision" not in state.render(state.Ownership())

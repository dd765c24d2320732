"""The pre-commit hooks (.pre-commit-hooks.yaml), run by the real `pre-commit try-repo`.

`dms-reconciler-validate` is a `language: python` hook: pre-commit builds a virtualenv and installs
this repository into it. To run without a package index (CI machines, air-gapped laptops) the
virtualenv sees the system site-packages, where the dependencies already are, and pip builds
without an isolated build environment; docs/ci.md gives users the same three variables.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.ci_util import git, make_repo
from tests.test_ci_plan import BASE
from tests.util import REPO

OFFLINE = {"VIRTUALENV_SYSTEM_SITE_PACKAGES": "1", "PIP_NO_INDEX": "1",
           "PIP_NO_BUILD_ISOLATION": "0"}


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pre-commit's cache for the module (try-repo itself always uses a fresh one)."""
    assert shutil.which("pre-commit"), "pre-commit is a test dependency (pip install pre-commit)"
    return tmp_path_factory.mktemp("pre-commit-home")


def try_repo(workdir: Path, home: Path, hook: str, *args: str,
             path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DMS_", "PIP_", "VIRTUALENV_"))}
    env.update(OFFLINE, PRE_COMMIT_HOME=str(home), GIT_CONFIG_GLOBAL=os.devnull,
               GIT_CONFIG_NOSYSTEM="1", NO_COLOR="1", PRE_COMMIT_COLOR="never")
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["pre-commit", "try-repo", str(REPO), hook, "--verbose", *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def repo_with(tmp_path: Path, files: dict[str, str]) -> Path:
    repo = make_repo(tmp_path / "user-repo")
    for name, text in files.items():
        (repo.root / name).parent.mkdir(parents=True, exist_ok=True)
        (repo.root / name).write_text(text)
        git(repo.root, "add", name)
    return repo.root


VALID = BASE.lstrip("\n")
INVALID = VALID.replace("quota: 5G", "quota: lots")


def test_the_hooks_file_declares_both_hooks() -> None:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    by_id = {h["id"]: h for h in hooks}
    assert by_id["dms-reconciler-validate"]["language"] == "python"
    assert by_id["dms-reconciler-validate-system"]["language"] == "system"
    for hook in hooks:
        assert shlex.split(hook["entry"]) == ["dms-reconciler", "validate"]
        assert hook["pass_filenames"] is True


def test_python_hook_fails_on_invalid_files_only(tmp_path: Path, pre_commit_home: Path) -> None:
    """All files: only files named mailserver.yaml are checked, each one of them. (try-repo
    installs the hook into a fresh store every time, so one run covers pass and fail.)"""
    root = repo_with(tmp_path, {
        "mailserver.yaml": VALID,
        "staging/mailserver.yml": INVALID,
        "other.yaml": "not: [a, mailserver, file\n",  # not ours to check
    })
    done = try_repo(root, pre_commit_home, "dms-reconciler-validate", "--all-files")
    assert done.returncode == 1
    assert "Failed" in done.stdout
    assert "staging/mailserver.yml:4:" in done.stdout
    assert "mailserver.yaml is valid: 2 domains, 9 accounts" in done.stdout  # checked too
    assert "other.yaml" not in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_system_hook_uses_the_installed_command(tmp_path: Path, pre_commit_home: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "dms-reconciler"
    shim.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} exec "
                    f"{shlex.quote(sys.executable)} -m reconciler \"$@\"\n")
    shim.chmod(0o755)
    root = repo_with(tmp_path, {"mailserver.yaml": INVALID})
    path = f"{bin_dir}:{os.environ['PATH']}"
    done = try_repo(root, pre_commit_home, "dms-reconciler-validate-system", "--all-files",
                    path=path)
    assert done.returncode == 1
    assert "mailserver.yaml:4:" in done.stdout


def test_a_commit_of_an_invalid_file_is_stopped(tmp_path: Path, pre_commit_home: Path) -> None:
    """The hook as users install it: .pre-commit-config.yaml, `pre-commit install`, git commit."""
    root = repo_with(tmp_path, {"mailserver.yaml": VALID})
    rev = git(REPO, "rev-parse", "HEAD")
    (root / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {REPO}\n    rev: {rev}\n    hooks:\n"
        "      - id: dms-reconciler-validate\n")
    git(root, "add", ".pre-commit-config.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DMS_", "PIP_", "VIRTUALENV_"))}
    env.update(OFFLINE, PRE_COMMIT_HOME=str(pre_commit_home), GIT_CONFIG_GLOBAL=os.devnull,
               GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.net",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.net")
    subprocess.run(["pre-commit", "install"], cwd=root, env=env, check=True, capture_output=True)
    good = subprocess.run(["git", "commit", "-q", "-m", "good"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert good.returncode == 0, good.stdout + good.stderr
    (root / "mailserver.yaml").write_text(INVALID)
    git(root, "add", "mailserver.yaml")
    bad = subprocess.run(["git", "commit", "-q", "-m", "bad"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 1
    assert "mailserver.yaml:4:" in bad.stdout + bad.stderr
    assert git(root, "log", "--format=%s") == "good"  # the bad commit was not made

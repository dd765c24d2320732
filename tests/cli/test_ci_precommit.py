"""The pre-commit hooks (.pre-commit-hooks.yaml), run by the real `pre-commit try-repo`.

`dms-reconciler-validate` is a `language: python` hook: pre-commit builds a virtualenv and installs
this repository into it. Without a package index (CI machines, air-gapped laptops) pip installs
from a folder of wheels made once where an index is reachable; docs/ci.md gives users that recipe,
and these tests follow it: the wheels are made first, then every pre-commit run has pip's index
turned off (PIP_NO_INDEX=1) and a virtualenv that sees nothing of this machine's site-packages.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cli.test_ci_plan import BASE
from tests.support.ci_util import git, make_repo
from tests.support.util import REPO


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs' "where an index is reachable" step: wheels of the build tools, dms-reconciler and
    its dependencies (`pip wheel`), made from a clone of the committed HEAD, as users would from
    the repository."""
    base = tmp_path_factory.mktemp("wheelhouse")
    source, wheels = base / "src", base / "wheels"
    subprocess.run(["git", "clone", "-q", str(REPO), str(source)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_NO_INDEX",)}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
         "--wheel-dir", str(wheels), "setuptools", "wheel", str(source)],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"pip wheel needs a reachable package index: {done.stderr}"
    return wheels


@pytest.fixture(scope="module")
def offline(wheelhouse: Path) -> dict[str, str]:
    """What docs/ci.md tells users to set for pre-commit without an index."""
    text = (REPO / "docs" / "ci.md").read_text()
    recipe = re.search(r"`(PIP_NO_INDEX=1 PIP_FIND_LINKS=\S+) pre-commit run`", text)
    assert recipe, "docs/ci.md no longer gives the offline pre-commit recipe"
    variables = dict(item.split("=", 1) for item in recipe.group(1).split())
    assert set(variables) == {"PIP_NO_INDEX", "PIP_FIND_LINKS"}
    return {"PIP_NO_INDEX": variables["PIP_NO_INDEX"], "PIP_FIND_LINKS": str(wheelhouse)}


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pre-commit's cache for the module (try-repo itself always uses a fresh one)."""
    assert shutil.which("pre-commit"), "pre-commit is a test dependency (pip install pre-commit)"
    return tmp_path_factory.mktemp("pre-commit-home")


def _env(offline: dict[str, str], home: Path) -> dict[str, str]:
    """This machine's environment without pip or virtualenv settings, then the offline recipe.
    The hook's virtualenv gets no system site-packages: everything comes from the wheels."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DMS_", "PIP_", "VIRTUALENV_"))}
    env.update(offline, VIRTUALENV_SYSTEM_SITE_PACKAGES="0", PRE_COMMIT_HOME=str(home),
               GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", NO_COLOR="1",
               PRE_COMMIT_COLOR="never")
    return env


def try_repo(workdir: Path, home: Path, hook: str, *args: str, offline: dict[str, str],
             path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = _env(offline, home)
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


def test_python_hook_fails_on_invalid_files_only(tmp_path: Path, pre_commit_home: Path,
                                                 offline: dict[str, str]) -> None:
    """All files: only files named mailserver.yaml are checked, each one of them. (try-repo
    installs the hook into a fresh store every time, so one run covers pass and fail.)"""
    root = repo_with(tmp_path, {
        "mailserver.yaml": VALID,
        "staging/mailserver.yml": INVALID,
        "other.yaml": "not: [a, mailserver, file\n",  # not ours to check
    })
    done = try_repo(root, pre_commit_home, "dms-reconciler-validate", "--all-files",
                    offline=offline)
    assert done.returncode == 1
    assert "Failed" in done.stdout
    assert "staging/mailserver.yml:4:" in done.stdout
    assert "mailserver.yaml is valid: 2 domains, 9 accounts" in done.stdout  # checked too
    assert "other.yaml" not in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_system_hook_uses_the_installed_command(tmp_path: Path, pre_commit_home: Path) -> None:
    """Nothing is installed for a system hook: no wheels, no index."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "dms-reconciler"
    shim.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} exec "
                    f"{shlex.quote(sys.executable)} -m reconciler \"$@\"\n")
    shim.chmod(0o755)
    root = repo_with(tmp_path, {"mailserver.yaml": INVALID})
    path = f"{bin_dir}:{os.environ['PATH']}"
    done = try_repo(root, pre_commit_home, "dms-reconciler-validate-system", "--all-files",
                    offline={"PIP_NO_INDEX": "1"}, path=path)
    assert done.returncode == 1
    assert "mailserver.yaml:4:" in done.stdout


def test_a_commit_of_an_invalid_file_is_stopped(tmp_path: Path, pre_commit_home: Path,
                                                offline: dict[str, str]) -> None:
    """The hook as docs/ci.md tells users to install it: its .pre-commit-config.yaml (with this
    checkout as the repository), `pre-commit autoupdate` to pin `rev`, `pre-commit install`,
    git commit."""
    root = repo_with(tmp_path, {"mailserver.yaml": VALID})
    snippet = re.search(r"```yaml\n(repos:\n.*?)```", (REPO / "docs" / "ci.md").read_text(), re.S)
    assert snippet, "docs/ci.md no longer shows a .pre-commit-config.yaml"
    config = yaml.safe_load(snippet.group(1))
    assert config["repos"][0]["repo"] == "https://github.com/dms-reconciler/dms-reconciler"
    config["repos"][0]["repo"] = str(REPO)
    (root / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config))
    env = _env(offline, pre_commit_home)
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.net", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.net")
    pinned = subprocess.run(["pre-commit", "autoupdate"], cwd=root, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    rev = yaml.safe_load((root / ".pre-commit-config.yaml").read_text())["repos"][0]["rev"]
    assert rev == git(REPO, "rev-parse", "HEAD")  # no release tag yet: the newest commit
    git(root, "add", ".pre-commit-config.yaml")
    subprocess.run(["pre-commit", "install"], cwd=root, env=env, check=True, capture_output=True)
    good = subprocess.run(["git", "commit", "-q", "-m", "good"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "mutable reference" not in good.stdout + good.stderr
    (root / "mailserver.yaml").write_text(INVALID)
    git(root, "add", "mailserver.yaml")
    bad = subprocess.run(["git", "commit", "-q", "-m", "bad"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 1
    assert "mailserver.yaml:4:" in bad.stdout + bad.stderr
    assert git(root, "log", "--format=%s") == "good"  # the bad commit was not made


def test_the_hooks_file_tells_users_the_same_as_the_docs() -> None:
    """The comment at the top of .pre-commit-hooks.yaml repeats docs/ci.md's snippet."""
    comment = "".join(line[1:].removeprefix(" ") + "\n" for line in
                      (REPO / ".pre-commit-hooks.yaml").read_text().splitlines()
                      if line.startswith("#"))
    shown = re.search(r"(repos:\n(?: {2,}.*\n)+)", comment)
    docs = re.search(r"```yaml\n(repos:\n.*?)```", (REPO / "docs" / "ci.md").read_text(), re.S)
    assert shown and docs
    assert yaml.safe_load(shown.group(1)) == yaml.safe_load(docs.group(1))

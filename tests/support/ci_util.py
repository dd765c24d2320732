"""Helpers for the CI tests: a throw-away git repository holding mailserver.yaml versions."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.util import REPO, run_cli

PLAN_SCHEMA = REPO / "schema" / "plan.schema.json"
GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,  # the host's git config must not change what the tests see
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "CI test", "GIT_AUTHOR_EMAIL": "ci@example.net",
    "GIT_COMMITTER_NAME": "CI test", "GIT_COMMITTER_EMAIL": "ci@example.net",
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}, timeout=60, check=False)
    assert done.returncode == 0, f"git {' '.join(args)} failed: {done.stderr}"
    return done.stdout.strip()


@dataclass
class Repo:
    """A git repository with mailserver.yaml at `rel` (relative to the top folder)."""

    root: Path
    rel: str = "mailserver.yaml"

    @property
    def file(self) -> Path:
        return self.root / self.rel

    def write(self, text: str) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self.file.write_text(textwrap.dedent(text).lstrip("\n"))

    def commit(self, text: str, message: str = "change") -> str:
        self.write(text)
        git(self.root, "add", self.rel)
        git(self.root, "commit", "-q", "-m", message)
        return git(self.root, "rev-parse", "HEAD")

    def plan(self, *args: str, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli("plan", "-f", str(self.file), *args, env=env, cwd=cwd or self.root)

    def plan_json(self, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        done = self.plan(*args, "--format", "json", env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]


def make_repo(root: Path, rel: str = "mailserver.yaml") -> Repo:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    return Repo(root, rel)


def actions(plan: dict[str, Any]) -> set[tuple[str, str, str]]:
    """{(action, kind, key)} of a plan's changes."""
    return {(c["actions"][0], c["kind"], c["key"]) for c in plan["changes"]}


def load_plan_schema() -> dict[str, Any]:
    return json.loads(PLAN_SCHEMA.read_text())  # type: ignore[no-any-return]

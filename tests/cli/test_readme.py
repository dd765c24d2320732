"""The README's first screen stays true: its first command, the output it shows, the environment
variables, the supported Pythons, the docs index and the licence."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support.util import REPO

README = (REPO / "README.md").read_text()
VENV_AND_INSTALL = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README, re.S)


def test_it_says_what_it_is_before_any_command() -> None:
    first_code = README.index("```")
    assert "GitOps for [docker-mailserver]" in README[:first_code]


def test_the_first_command_prints_what_the_readme_shows(tmp_path: Path) -> None:
    """Everything after the venv and `pip install -e .` (which .ci/run does the same way), run in
    the checkout with this interpreter's scripts first on PATH; then the volume is unchanged."""
    first, tests = _blocks("sh")[:2]
    assert tests.strip() == "bash .ci/run"
    assert first.startswith(VENV_AND_INSTALL), first
    bindir = Path(sys.executable).parent
    assert (bindir / "dms-reconciler").exists(), "dms-reconciler is not installed beside python"
    before = {p: p.read_bytes() for p in (REPO / "examples" / "volume").rglob("*") if p.is_file()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
    env.update(PATH=f"{bindir}{os.pathsep}{env['PATH']}", NO_COLOR="1", COLUMNS="100")
    done = subprocess.run(["sh", "-c", first[len(VENV_AND_INSTALL):].strip()], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # the revision line names the checkout's commit; the README shows a placeholder
    shown = re.sub(r"(at git commit )[0-9a-f]{12}(-dirty)?", r"\g<1>0123456789ab", done.stdout)
    assert shown == _blocks("text")[0]
    after = {p: p.read_bytes() for p in (REPO / "examples" / "volume").rglob("*") if p.is_file()}
    assert after == before  # plan writes nothing


def test_every_environment_variable_is_listed() -> None:
    from reconciler.cli.main import cli

    names = {param.envvar for command in cli.commands.values() for param in command.params
             if isinstance(param.envvar, str)}
    assert "DMS_RECONCILER_STUCK_AFTER" in names
    missing = sorted(n for n in names if f"`{n}`" not in README)
    assert not missing, f"README's environment variables lack {missing}"


def test_supported_pythons_match_pyproject_and_ci() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    assert "Supported Python versions: 3.11, 3.12 and 3.13" in README
    assert "bash .ci/pythons" in (REPO / ".ci" / "run").read_text()


def test_docs_index_lists_every_doc_and_the_links_resolve() -> None:
    for doc in sorted((REPO / "docs").glob("*.md")):
        assert f"[docs/{doc.name}](docs/{doc.name})" in README, f"{doc.name} is not in the index"
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README):
        assert (REPO / target).exists(), f"README links to a missing {target}"


def test_licence_is_the_mit_text_pyproject_names() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}
    licence = (REPO / "LICENSE").read_text()
    assert licence.startswith("MIT License\n\nCopyright (c) 2026 the dms-reconciler authors\n")
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in licence

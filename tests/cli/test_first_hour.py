"""What a new admin meets in the first hour: plan says what apply will say, every option either
works or is refused, errors come in the format asked for, colour behaves like other tools."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.load.test_decisions import ADMIN, ONE_ACCOUNT
from tests.support.util import PYTHONPATH, REPO, make_volume, run_cli, write_desired

WITH_CRON = ONE_ACCOUNT + """\
    sa_learn:
      - {schedule: "0 2 * * *", learn: spam, folder: .Junk}
    """


def test_plan_refuses_a_missing_cron_folder_as_apply_does(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    shutil.rmtree(volume.cron.parent)
    desired = write_desired(tmp_path / "mailserver.yaml", WITH_CRON)
    outs = {}
    for command in ("plan", "apply"):
        result = run_cli(command, "-f", str(desired), *volume.args())
        assert result.returncode == 1, result.stdout
        assert "Traceback" not in result.stderr
        outs[command] = result.stderr
    assert outs["plan"] == outs["apply"]
    assert f"mkdir -p {volume.cron.parent}" in outs["plan"]
    assert os.listdir(volume.config) == []
    volume.cron.parent.mkdir()
    assert run_cli("plan", "-f", str(desired), *volume.args()).returncode == 0
    # without sa_learn jobs the cron file is not written, so its folder does not matter
    shutil.rmtree(volume.cron.parent)
    plain = write_desired(tmp_path / "plain.yaml", WITH_CRON.split("    sa_learn:")[0])
    assert run_cli("plan", "-f", str(plain), *volume.args()).returncode == 0


INVALID = f"""
    version: 1
    domains: [example.com]
    accounts:
      admin@example.com: {{password_hash: "{ADMIN}", quota: lots}}
    """


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_errors_come_in_the_format_asked_for(tmp_path: Path, command: str) -> None:
    """CI captures stdout: an invalid file there is the error report in that format, with the
    same positioned errors validate gives; stderr still has the text."""
    from markdown_it import MarkdownIt

    volume = make_volume(tmp_path / "dms")
    desired = write_desired(tmp_path / "mailserver.yaml", INVALID)
    formats = ["json", "markdown"] if command == "plan" else ["json"]
    for fmt in formats:
        result = run_cli(command, "-f", str(desired), *volume.args(), "--format", fmt)
        assert result.returncode == 1
        assert f"{desired}:4:" in result.stderr
        if fmt == "json":
            report = json.loads(result.stdout)
            assert report["valid"] is False and report["file"] == str(desired)
            assert [(e["line"], e["path"]) for e in report["errors"]] == [
                (4, "accounts.admin@example.com.quota")]
        else:
            tokens = MarkdownIt("commonmark").parse(result.stdout)
            fences = [t.content for t in tokens if t.type == "fence"]
            assert len(fences) == 1 and f"{desired}:4:" in fences[0]
            assert result.stdout.startswith("### dms-reconciler plan\n")
    result = run_cli(command, "-f", str(desired), "--config-dir", str(tmp_path / "missing"),
                     "--format", "json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["errors"]  # the file is checked first
    fine = write_desired(tmp_path / "fine.yaml", INVALID.replace(", quota: lots", ""))
    result = run_cli(command, "-f", str(fine), "--config-dir", str(tmp_path / "missing"),
                     "--format", "json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["valid"] is True and "does not exist" in report["error"]


def test_apply_of_a_saved_plan_refuses_the_options_it_would_ignore(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    desired = write_desired(tmp_path / "mailserver.yaml", WITH_CRON)
    saved = tmp_path / "saved.plan"
    assert run_cli("plan", "-f", str(desired), *volume.args(), "--out", str(saved)).returncode == 0
    for extra in (["-f", str(desired)], ["--prune"], ["--config-dir", str(volume.config)],
                  ["--cron-file", str(volume.cron)]):
        result = run_cli("apply", str(saved), *extra)
        assert result.returncode == 1, extra
        assert "cannot be used with a saved PLAN" in result.stderr
        assert extra[0].lstrip("-") in result.stderr
    assert os.listdir(volume.config) == []
    done = run_cli("apply", str(saved), "--allow-deletions", "0", env={"DMS_RECONCILER_PRUNE": ""})
    assert done.returncode == 0, done.stderr


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_COLOR", "FORCE_COLOR", "TERM") and not k.startswith("DMS_")}
    env.update(PYTHONPATH=PYTHONPATH, TERM="xterm-256color")
    env.update(extra)
    return env


def _on_a_terminal(args: list[str], **env: str) -> str:
    """Run the CLI with stdout and stderr on a pseudo-terminal, as a person at a shell."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", *args], stdout=follower,
                            stderr=follower, stdin=subprocess.DEVNULL, env=_env(**env))
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(60)
    os.close(leader)
    return b"".join(chunks).decode()


def _piped(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], env=_env(**env),
                          capture_output=True, text=True, timeout=60, check=False)


ESC = "\x1b["


def test_colour_follows_the_terminal_term_dumb_no_color_and_force_color(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    good = write_desired(tmp_path / "mailserver.yaml", WITH_CRON)
    bad = write_desired(tmp_path / "bad.yaml", INVALID)
    plan = ["plan", "-f", str(good), *volume.args()]
    coloured = _on_a_terminal(plan)
    assert f"{ESC}1mPlan: 2 to add" in coloured  # the final line in bold
    assert f"{ESC}32m" in coloured  # the legend's green +
    for env, extra in (({"TERM": "dumb"}, []), ({"NO_COLOR": "1"}, []), ({}, ["--no-color"]),
                       ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, [])):
        assert ESC not in _on_a_terminal(plan + extra, **env), (env, extra)
    assert ESC not in _on_a_terminal(["--no-color", *plan])
    assert ESC not in _piped(plan).stdout  # not a terminal
    assert f"{ESC}1mPlan: 2 to add" in _piped(plan, FORCE_COLOR="1").stdout
    assert ESC not in _piped(plan, FORCE_COLOR="0").stdout

    invalid = _piped(["validate", "-f", str(bad)], FORCE_COLOR="1")
    assert f": {ESC}31m{ESC}1merror{ESC}0m: " in invalid.stdout  # errors in red
    assert f"{ESC}31m{ESC}1m{bad}: 1 error; nothing was changed" in invalid.stdout
    failed = _piped(["plan", "-f", str(bad)], FORCE_COLOR="1")
    assert f"{ESC}31m{ESC}1mdms-reconciler: error:{ESC}0m" in failed.stderr
    applied = _piped(["apply", "-f", str(good), *volume.args()], FORCE_COLOR="1")
    assert f"{ESC}32m{ESC}1mApply complete!" in applied.stdout
    again = _piped(["apply", "-f", str(good), *volume.args(), "--no-color"], FORCE_COLOR="1")
    assert ESC not in again.stdout + again.stderr


def test_the_readme_command_table_lists_every_command_and_option() -> None:
    """Checked against the real click commands: each command has a row (or two, for apply PLAN),
    and every long option of the command appears in its rows."""
    from reconciler.cli.main import cli

    readme = (REPO / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    for name, command in cli.commands.items():
        mine = " ".join(row.split(" | ")[0] for row in rows
                        if row.startswith((f"| `{name} ", f"| `{name}`")))
        assert mine, f"README's command table has no row for `{name}`"
        for param in command.params:
            names = [o for o in (*param.opts, *param.secondary_opts) if o.startswith("-")]
            if not names or names[0] in ("--help", "--no-color"):
                continue  # an argument, or what every command takes
            shown = [o for o in names if re.search(rf"{re.escape(o)}(?![\w-])", mine)]
            assert shown, f"`{name} {names[-1]}` is not in README's command table"
    assert "`--no-color`" in readme

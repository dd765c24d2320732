"""A progress bar while many secrets are hashed or verified: on a terminal's stderr only, and
never with JSON output or when stderr is a file or pipe."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.passwords.sources import PROGRESS_FROM
from tests.support.util import PYTHONPATH, Volume

ACCOUNTS = PROGRESS_FROM + 20


@pytest.fixture
def host(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir()
    lines = ["version: 1", "domains: [example.com]", "accounts:"]
    for i in range(ACCOUNTS):
        (tmp_path / "secrets" / f"u{i}").write_text(f"password-{i}\n")
        lines.append(f"  u{i}@example.com: {{password_file: secrets/u{i}}}")
    path = tmp_path / "mailserver.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(args: list[str], *, terminal: bool) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (or a pipe); (status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
    env.update({"PYTHONPATH": PYTHONPATH, "NO_COLOR": "1", "TERM": "xterm", "COLUMNS": "80"})
    argv = [sys.executable, "-m", "reconciler", *args]
    if not terminal:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        return done.returncode, done.stdout, done.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=follower, env=env, text=True)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out, shown.decode(errors="replace")


def test_hashing_and_verifying_show_a_bar_on_a_terminal(host: Path, volume: Volume) -> None:
    code, out, err = _run(["apply", "-f", str(host), *volume.args()], terminal=True)
    assert code == 0, err
    assert "Hashing passwords" in err and "100%" in err
    assert "Hashing" not in out and "Apply complete!" in out
    # without the record of verified files (and the files are new anyway), the plan verifies all
    (volume.config / "dms-reconciler.verified.json").unlink(missing_ok=True)
    code, out, err = _run(["plan", "-f", str(host), *volume.args()], terminal=True)
    assert code == 0, err
    assert "Verifying passwords" in err and "No changes." in out


@pytest.mark.parametrize("how", ["stderr is a pipe", "json output"])
def test_no_bar_off_a_terminal_or_with_json(host: Path, volume: Volume, how: str) -> None:
    fmt = ["--format", "json"] if how == "json output" else []
    code, out, err = _run(
        ["apply", "-f", str(host), *volume.args(), *fmt], terminal=how == "json output"
    )
    assert code == 0, err
    assert "passwords" not in err and "%" not in err
    assert "Hashing" not in out

"""What a new admin meets in the first hour: plan says what apply will say, every option either
works or is refused, errors come in the format asked for, colour behaves like other tools."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.util import Volume, make_volume, run_cli, sha512_hash, write_desired

ADMIN = sha512_hash("admin-pw", salt="adminSalt0001")
WITH_CRON = f"""
    version: 1
    domains: [example.com]
    accounts:
      admin@example.com: {{password_hash: "{ADMIN}"}}
    sa_learn:
      - {{schedule: "0 2 * * *", learn: spam, folder: .Junk}}
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

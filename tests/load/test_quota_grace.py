"""Quota forms DMS v16 gives no grace (helpers/accounts.sh writes `userdb_quota_storage_grace`
only for `^[1-9][0-9]*[BkMGT]$`, a tenth in whole units): validate and plan warn and name the same
limit in a form that keeps the 10%. The real DMS: tests/realdms/test_mail.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.addresses import quota_grace_lost
from tests.support.util import run_cli, sha512_hash, write_desired

FULL = f"""\
version: 1
domains: [example.test]
accounts:
  admin@example.test: {{password_hash: "{sha512_hash("pw", "saltsalt")}", quota: 50M}}
"""


@pytest.mark.parametrize("size,better", [("5M", "5120k"), ("1G", "1024M"),
                                         ("050M", "50M"), ("05G", "5120M"), ("9k", "9216B")])
def test_quota_forms_v16_gives_no_grace(size: str, better: str) -> None:
    said = quota_grace_lost(size)
    assert said is not None and f"write {better} for the same limit" in said


@pytest.mark.parametrize("size", ["0", "0M", "00G", "10M", "50M", "1024G", "100B"])
def test_quota_forms_that_keep_the_grace(size: str) -> None:
    assert quota_grace_lost(size) is None


def test_validate_warns_about_a_quota_without_grace(tmp_path: Path) -> None:
    path = write_desired(tmp_path / "m.yaml", FULL.replace("quota: 50M", "quota: 5G"))
    done = run_cli("validate", "-f", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "m.yaml:4:" in out and "accounts.admin@example.test.quota: DMS v16 (Dovecot 2.4) " \
        "gives quota 5G no grace" in out, out
    clean = run_cli("validate", "-f", str(write_desired(tmp_path / "ok.yaml", FULL)))
    assert "grace" not in clean.stdout + clean.stderr

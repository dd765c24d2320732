"""A password Dovecot's crypt cannot take is refused at plan time, naming the account: libxcrypt
(what DMS's Dovecot verifies SHA512-CRYPT with) refuses 512 bytes or more, so the hash a
fallback library would make could never let that user log in. The limit is checked against the
real `doveadm pw`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.passwords.hashing import MAX_PASSWORD_BYTES
from tests.support.util import make_volume, run_cli, write_desired

DESIRED = """
version: 1
domains: [example.test]
accounts:
  long@example.test: {password_env: LONG_PASSWORD}
"""


def doveadm_hash(password: str) -> str:
    done = subprocess.run(["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("doveadm") is None, reason="needs Dovecot's doveadm (.ci/run)")
def test_the_limit_is_where_dovecots_crypt_stops() -> None:
    assert doveadm_hash("a" * MAX_PASSWORD_BYTES).startswith("{SHA512-CRYPT}$6$")
    assert doveadm_hash("a" * (MAX_PASSWORD_BYTES + 1)) == "{SHA512-CRYPT}*0"


@pytest.mark.parametrize("size, ok", [(MAX_PASSWORD_BYTES, True), (MAX_PASSWORD_BYTES + 1, False)])
def test_a_password_longer_than_dovecot_takes_is_refused(tmp_path: Path, size: int, ok: bool) -> None:
    volume = make_volume(tmp_path / "dms")
    desired = write_desired(tmp_path / "mailserver.yaml", DESIRED)
    password = "é" * (size // 2) + "x" * (size % 2)  # counted in UTF-8 bytes, not characters
    assert len(password.encode()) == size
    done = run_cli("apply", "-f", str(desired), *volume.args(),
                   env={"LONG_PASSWORD": password})
    if ok:
        assert done.returncode == 0, done.stderr
        assert "long@example.test|{SHA512-CRYPT}$6$" in (volume.config / "postfix-accounts.cf").read_text()
        return
    assert done.returncode == 1
    assert "long@example.test" in done.stderr and f"{size} bytes" in done.stderr
    assert password not in done.stderr + done.stdout
    assert not (volume.config / "postfix-accounts.cf").exists()

"""The real DMS v16 with Rspamd signing (`dkim: {signer: rspamd}`, ENABLE_RSPAMD=1 and
ENABLE_OPENDKIM=0) and the web UI password from a secret (`rspamd.controller.password_env`):

- a message sent out by an authenticated user (submission, port 587) to an address outside
  (no network: Postfix defers it, and the queued message is read with `postcat`) carries a
  DKIM-Signature by Rspamd that verifies against the record `dms-reconciler dns` prints, and not
  against another key;
- Rspamd's controller accepts the password the secret holds and refuses another one (the
  volume's worker-controller.inc also holds an admin's `secure_ip` line, kept by apply, so that
  127.0.0.1 must give the password);
- DMS logs no WARN or ERROR about the keys or the signing config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.realdms import harness
from tests.realdms.harness import DmsVolume, RealDms, wait_until
from tests.realdms.test_rspamd import ALLOWED, RSPAMD_ENV
from tests.support.util import run_cli, sha512_hash

pytestmark = pytest.mark.realdms

IMAGE = harness.IMAGES["v16"]
WEB_PASSWORD = "web-ui-secret-4711"
DESIRED = f"""\
version: 1
hostname: {harness.HOSTNAME}
domains: [example.test]
accounts:
  admin@example.test: {{password_hash: "{sha512_hash("admin-pw", "adminsalt")}"}}
dkim:
  signer: rspamd
  example.test: {{}}
rspamd:
  controller: {{password_env: RSPAMD_WEB_PASSWORD}}
"""


@dataclass
class Host:
    dms: RealDms
    volume: DmsVolume
    desired: Path


@pytest.fixture(scope="module")
def host(real_engine: Any, real_client: Any) -> Iterator[Host]:
    harness.build_dms_image(real_engine, IMAGE.build_arg)
    root = harness.temp_root("realdms-rspamd-dkim-")
    volume = DmsVolume(root)
    desired = root / "mailserver.yaml"
    desired.write_text(DESIRED)
    over = volume.config / "rspamd" / "override.d"
    over.mkdir(parents=True)
    # the admin's own controller setting: 127.0.0.1 is no longer trusted without the password
    (over / "worker-controller.inc").write_text('secure_ip = "192.0.2.1";\n')
    # the admin's own signing setting, kept by apply: Rspamd checks the published key in DNS
    # before it signs (DMS's default check_pubkey = true), and there is no DNS here
    (over / "dkim_signing.conf").write_text("check_pubkey = false;\n")
    # rspamd/dkim/ as a DMS that ran before leaves it (`chown -R _rspamd:_rspamd` at start-up):
    # the key files apply makes there take its owner, so Rspamd can read them at once
    keys = volume.config / "rspamd" / "dkim"
    keys.mkdir()
    uid, gid = _rspamd_ids(real_client)
    os.chown(keys, uid, gid)
    result = run_cli("apply", "-f", str(desired), *volume.args(),
                     env={"RSPAMD_WEB_PASSWORD": WEB_PASSWORD})
    assert result.returncode == 0, result.stdout + result.stderr
    assert WEB_PASSWORD not in result.stdout + result.stderr
    assert "$1$" not in result.stdout + result.stderr  # nor its hash
    dms = harness.start_dms(real_client, volume, name="realdms-rspamd-dkim", env=RSPAMD_ENV,
                            image=IMAGE.image)
    try:
        # the milter and the controller listen (`rspamc stat` would need the password now)
        wait_until(lambda: dms.listening(11332) and dms.listening(11334), 120,
                   "Rspamd's milter port 11332 and controller port 11334")
        yield Host(dms, volume, desired)
    finally:
        dms.remove()
        shutil.rmtree(root, ignore_errors=True)


def _rspamd_ids(client: Any) -> tuple[int, int]:
    ids = "id -u _rspamd; id -g _rspamd"
    out = client.containers.run(IMAGE.image, entrypoint=["sh", "-c", ids], remove=True,
                                network_mode="none").decode().split()
    return int(out[0]), int(out[1])


def _queued(dms: RealDms, subject: str) -> bytes:
    """The message Postfix holds for the outside address (deferred: there is no network)."""

    def found() -> bytes | None:
        for line in dms.sh("postqueue -j", check=False).splitlines():
            entry = json.loads(line)
            code, text = dms.exec(["postcat", "-bh", "-q", entry["queue_id"]])
            if code == 0 and f"Subject: {subject}" in text:
                return text.encode()
        return None

    try:
        return bytes(wait_until(found, 60, f"'{subject}' in Postfix's queue"))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dms.mail_log()[-3000:]}") from None


def test_mail_sent_out_is_signed_by_rspamd_and_verifies_against_the_printed_record(host: Host):
    import dkim

    subject = "signed by rspamd"
    code, out = host.dms.exec([
        "swaks", "--server", "127.0.0.1", "--port", "587", "--auth", "PLAIN",
        "--auth-user", "admin@example.test", "--auth-password", "admin-pw",
        "--from", "admin@example.test", "--to", "someone@elsewhere.net",
        "--h-Subject", subject, "--body", "a message that leaves the server", "--silent", "2",
    ])
    assert code == 0, out
    message = _queued(host.dms, subject)
    private = host.volume.config / "rspamd/dkim/rsa-2048-mail-example.test.private.txt"
    assert private.stat().st_mode & 0o777 == 0o600
    assert (private.stat().st_uid, private.stat().st_gid) == (
        private.parent.stat().st_uid, private.parent.stat().st_gid)
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", message)
    assert re.search(rb"(?im)^DKIM-Signature:.*\bd=example\.test;", unfolded), message[:2000]
    shown = run_cli("dns", "-f", str(host.desired), *host.volume.args(), "--format", "json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    records = {r["name"]: r["value"] for r in json.loads(shown.stdout)["records"]
               if r["kind"] == "dkim"}
    assert list(records) == ["mail._domainkey.example.test."]
    looked_up: list[str] = []

    def dns(name: bytes, timeout: int = 5) -> bytes:
        looked_up.append(name.decode())
        return records.get(name.decode(), "").encode()

    assert dkim.verify(message, dnsfunc=dns), "the DKIM signature does not verify"
    assert looked_up == ["mail._domainkey.example.test."]
    from reconciler import dkimkeys

    other = "v=DKIM1; k=rsa; p=" + dkimkeys.generate(1024).public_b64
    assert not dkim.verify(message, dnsfunc=lambda n, timeout=5: other.encode())


def _status(dms: RealDms, password: str) -> str:
    """The controller's HTTP status for `/stat` with `password` (sent from the exec's environment
    through a header file on stdin: never on a command line)."""
    return dms.sh(
        "printf 'Password: %s\\n' \"$P\" | curl -s -o /dev/null -w '%{http_code}' -H @- "
        "http://127.0.0.1:11334/stat",
        env={"P": password},
    ).strip()


def test_the_controller_accepts_the_secret_and_refuses_another_password(host: Host):
    wait_until(lambda: _status(host.dms, WEB_PASSWORD) == "200", 60,
               "the controller to accept the password from the secret")
    assert _status(host.dms, "not-the-password") == "401"
    assert _status(host.dms, "") == "401"


def test_dms_logs_no_warning_about_our_files(host: Host):
    assert host.dms.problems(allow=ALLOWED) == []

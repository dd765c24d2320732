"""Knowing the target against real DMS containers: `plan --container` reads the release and the
settings from the container (docker inspect), reports them in the plan's `target`, and each
warning is shown next to what the real DMS does with those settings:

- Amavis and SpamAssassin off, quotas off, an unknown future DMS_RELEASE (both images): nothing
  listens for Amavis, spam reaches the inbox, no quota is applied; a stopped container is
  reported and the plan still made;
- ACCOUNT_PROVISIONER=LDAP (v16): the container's userdb holds none of our accounts;
- the v16.0.0 trap (v16 image with the v16.0.1 fix taken out, as ../shared/dms-image/README.md
  says, and DMS_RELEASE=v16.0.0): mail to the catch-all and to a forward is refused, as warned.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.realdms import harness
from tests.realdms.harness import GTUBE, DmsImage, DmsVolume, RealDms, wait_until
from tests.support.util import run_cli, sha512_hash

pytestmark = pytest.mark.realdms

DESIRED = f"""\
version: 1
hostname: {harness.HOSTNAME}
domains: [example.test, example.org]
accounts:
  admin@example.test: {{password_hash: "{sha512_hash("admin-pw", "adminsalt")}", quota: 50M}}
  bob@example.org: {{password_hash: "{sha512_hash("bob-pw", "bobsalt")}"}}
aliases:
  partner@example.org: someone@elsewhere.net
catch_all: {{example.test: admin@example.test}}
quarantine: {{mailbox: bob@example.org}}
sa_learn:
  - {{schedule: "0 2 * * *", learn: spam, folder: .Junk, accounts: [bob@example.org]}}
"""


def prepare(root: Path) -> tuple[DmsVolume, Path]:
    volume = DmsVolume(root / "dms")
    desired = root / "mailserver.yaml"
    desired.write_text(DESIRED)
    applied = run_cli("apply", "-f", str(desired), *volume.args())
    assert applied.returncode == 0, applied.stdout + applied.stderr
    return volume, desired


def plan_for(dms_name: str, desired: Path, volume: DmsVolume, engine: Any) -> dict[str, Any]:
    done = run_cli("plan", "-f", str(desired), *volume.args(), "--container", dms_name,
                   "--format", "json", env={"DOCKER_HOST": engine.url})
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_features_off_and_a_future_release(realdms_root: Path, start_real_dms: Any,
                                           real_engine: Any, dms_image: DmsImage) -> None:
    volume, desired = prepare(realdms_root / "off")
    dms = start_real_dms(volume, name="realdms-target-off", env={
        "ENABLE_AMAVIS": "0", "ENABLE_SPAMASSASSIN": "0", "ENABLE_QUOTAS": "0",
        "DMS_RELEASE": "v17.2.0"})
    data = plan_for(dms.name, desired, volume, real_engine)
    assert data["target"]["found"] is True and data["target"]["release"] == "v17.2.0"
    assert data["target"]["release_line"] == "unknown"
    settings = data["target"]["settings"]
    assert (settings["ENABLE_AMAVIS"], settings["ENABLE_SPAMASSASSIN"],
            settings["ENABLE_QUOTAS"], settings["ACCOUNT_PROVISIONER"]) == ("0", "0", "0", "FILE")
    assert "ACCOUNT_PROVISIONER" in data["target"]["defaulted"]  # unset: DMS's default shown
    assert [w.split(":")[0] for w in data["warnings"]] == [
        "DMS release v17.2.0 is not one dms-reconciler was tested with (v15.1.0 and v16)",
        "quotas are declared but ENABLE_QUOTAS=0",
        "quarantine is declared but ENABLE_AMAVIS=0",
        "sa_learn is declared but ENABLE_AMAVIS=0",
    ], data["warnings"]
    assert data["summary"]["has_changes"] is False  # the plan itself is made as usual
    # what the real DMS does with these settings
    assert dms.exec(["nc", "-z", "127.0.0.1", "10024"])[0] != 0  # no Amavis to read amavis.cf
    wait_until(lambda: dms.exec(["nc", "-z", "127.0.0.1", "25"])[0] == 0, 60, "Postfix on 25")
    dms.send("bob@example.org", "gtube-no-amavis", GTUBE)
    dms.wait_for_mail("bob@example.org", "gtube-no-amavis")  # the inbox: no spam filter at all
    # Dovecot's quota plugin is off: whatever dovecot-quotas.cf says limits nothing
    assert dms.exec(["test", "-f", "/etc/dovecot/conf.d/90-quota.conf"])[0] != 0
    code, out = dms.exec(["doveadm", "quota", "get", "-u", "admin@example.test"])
    assert code != 0 or "51200" not in out, out
    # the container stopped: reported, and the plan is still made
    dms.container.stop(timeout=20)
    data = plan_for(dms.name, desired, volume, real_engine)
    assert data["target"] == {"found": False, "container": f"container '{dms.name}'",
                              "reason": f"the DMS container '{dms.name}' is exited, "
                                        "not running"}
    assert data["warnings"][0].startswith("could not read the DMS container's settings")


@pytest.fixture(scope="module")
def v16_root() -> Iterator[Path]:
    root = harness.temp_root("realdms-v16only-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def start_v16(real_client: Any, volume: DmsVolume, name: str, env: dict[str, str],
              dms_images: dict[str, DmsImage]) -> RealDms:
    return harness.start_dms(real_client, volume, name=name, env=env,
                             image=dms_images["v16"].image)


def test_ldap_provisioner(v16_root: Path, real_client: Any, real_engine: Any,
                          dms_images: dict[str, DmsImage]) -> None:
    """The warning depends on the setting only, so it runs on one image (v16)."""
    volume, desired = prepare(v16_root / "ldap")
    dms = start_v16(real_client, volume, "realdms-target-ldap", {
        "ACCOUNT_PROVISIONER": "LDAP", "LDAP_SERVER_HOST": "ldap://127.0.0.1",
        "LDAP_SEARCH_BASE": "dc=example,dc=test", "LDAP_BIND_DN": "cn=admin,dc=example,dc=test",
        "LDAP_BIND_PW": "unused"}, dms_images)
    try:
        data = plan_for(dms.name, desired, volume, real_engine)
        assert data["target"]["settings"]["ACCOUNT_PROVISIONER"] == "LDAP"
        assert data["target"]["settings"]["ENABLE_QUOTAS"] == "1"  # the tests' env sets it
        assert data["warnings"][0].startswith("ACCOUNT_PROVISIONER=LDAP: DMS takes accounts")
        # what DMS did with it: Postfix and Dovecot ask LDAP, not our files
        assert dms.sh("postconf -h virtual_mailbox_maps").strip() == \
            "ldap:/etc/postfix/ldap-users.cf"
        auth = dms.sh("grep -E 'include auth-(passwdfile|ldap)' /etc/dovecot/conf.d/10-auth.conf")
        assert "#!include auth-passwdfile.inc" in auth, auth
        assert "\n!include auth-ldap.conf.ext" in "\n" + auth, auth
    finally:
        dms.remove()


def test_the_v16_0_0_quota_trap(v16_root: Path, real_client: Any, real_engine: Any,
                                dms_images: dict[str, DmsImage]) -> None:
    volume, desired = prepare(v16_root / "trap")
    dms = start_v16(real_client, volume, "realdms-target-trap", {"DMS_RELEASE": "v16.0.0"},
                    dms_images)
    try:
        # v16.0.0 as released: the line v16.0.1 added taken out (../shared/dms-image/README.md)
        dms.sh("sed -i 's/^quota_status_nouser = DUNNO/#&/' /etc/dovecot/conf.d/90-quota.conf "
               "&& doveadm reload")
        data = plan_for(dms.name, desired, volume, real_engine)
        assert data["target"]["release"] == "v16.0.0"
        [trap] = [w for w in data["warnings"] if "v16.0.0" in w]
        assert "@example.test (catch-all), partner@example.org. Fixed in v16.0.1" in trap, trap
        dms.wait_amavis()

        def refused(to: str) -> str:
            code, out = dms.exec(["swaks", "--server", "127.0.0.1", "--port", "25", "--from",
                                  harness.SENDER, "--to", to, "--h-Subject", f"trap-{to}"])
            return out if code != 0 and "Unknown user" in out else ""

        for to in ("anyone@example.test", "partner@example.org"):
            said = wait_until(lambda t=to: refused(t), 30, f"{to} refused by the quota check")
            assert "554 5.7.1" in said
        dms.send("admin@example.test", "trap-account")  # an account has a userdb entry
        dms.wait_for_mail("admin@example.test", "trap-account")
        # v16.0.1 (the line back): accepted, and the plan has nothing to warn about
        dms.sh("sed -i 's/^#\\(quota_status_nouser = DUNNO\\)/\\1/' "
               "/etc/dovecot/conf.d/90-quota.conf && doveadm reload")
        dms.send("anyone@example.test", "trap-fixed")
        dms.wait_for_mail("admin@example.test", "trap-fixed")
    finally:
        dms.remove()

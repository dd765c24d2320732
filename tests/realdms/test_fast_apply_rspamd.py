"""Fast apply with Rspamd on (the real DMS v16, ENABLE_RSPAMD=1): DMS's change detector hashes
every file under rspamd/ too. One write adds an account and changes `rspamd.actions`: fast apply
puts the account in place and writes DMS's checksum record with the config files' lines new and
the rspamd/ lines as DMS last applied them, so DMS's change detector, which handles each file on
its own (check-for-changes.sh `_handle_changes`), applies the new thresholds alone: it reloads
Rspamd and does not rebuild the accounts (minutes at 10,000, with existing users failing).

Only the v16 image, as tests/realdms/test_rspamd.py: Rspamd is what DMS intends as its default.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.reconcile import Target, apply_once
from reconciler.watch.dms import Dms
from reconciler.watch.fastapply import FastApply
from tests.realdms import harness
from tests.realdms.harness import DmsVolume, RealDms, wait_until
from tests.realdms.test_fast_apply import apply_fast, detector_cycles, detector_handlings
from tests.realdms.test_rspamd import ALLOWED, RSPAMD_ENV
from tests.realdms.test_rspamd_sidecar import (
    ACTIONS_FILE,
    DESIRED,
    NEW_ACCOUNT,
    _rspamd_ready,
    _running_reject,
)

pytestmark = pytest.mark.realdms

IMAGE = harness.IMAGES["v16"]


@dataclass
class Host:
    dms: RealDms
    target: Target
    client: Dms


@pytest.fixture(scope="module")
def rspamd_on(real_engine: Any, real_client: Any) -> Iterator[Host]:
    """DMS v16 with Rspamd on a volume written by `apply_once` from test_rspamd_sidecar's
    mailserver.yaml (two accounts, rspamd.actions)."""
    harness.build_dms_image(real_engine, IMAGE.build_arg)
    root = harness.temp_root("realdms-fast-rspamd-")
    try:
        volume = DmsVolume(root / "dms")
        desired = root / "mailserver.yaml"
        desired.write_text(DESIRED)
        target = Target(str(desired), volume.value)
        apply_once(target)
        dms = harness.start_dms(real_client, volume, name="realdms-fast-rspamd",
                                env=RSPAMD_ENV, image=IMAGE.image)
        try:
            dms.wait_postfix()
            _rspamd_ready(dms)
            yield Host(dms, target, Dms(container=dms.name,
                                        environ={"DOCKER_HOST": real_engine.url}))
        finally:
            dms.remove()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def userdb_stat(dms: RealDms) -> str:
    """The userdb's inode and mtime to the nanosecond: DMS's rebuild truncates and rewrites it in
    place (same inode), within the same second on a server this small."""
    return dms.sh("stat -c '%i %y' /etc/dovecot/userdb").strip()


def test_a_new_account_and_new_thresholds_in_one_write_rebuild_no_accounts(
    rspamd_on: Host,
) -> None:
    dms, target = rspamd_on.dms, rspamd_on.target
    desired = Path(target.desired_path)
    assert dms.has_applied("postfix-accounts.cf", ACTIONS_FILE)
    assert "reject = 15;" in dms.sh("rspamadm configdump actions 2>/dev/null")
    dms.mark()
    handlings = detector_handlings(dms)
    text = desired.read_text()
    desired.write_text(text.replace("reject: 15}", "reject: 17}", 1)
                       .replace("rspamd:", NEW_ACCOUNT, 1))

    result = apply_fast(target, FastApply(rspamd_on.client, target.volume.folder))
    userdb = userdb_stat(dms)  # as fast apply left it
    assert "carol@example.org" in dms.sh("cut -d: -f1 /etc/dovecot/userdb").split()
    # a retry only if DMS's change detector, handling the rspamd/ change, reloads Dovecot just then
    wait_until(lambda: dms.imap_login("carol@example.org", "carol-pw"), 15,
               "the new account to log in")
    # DMS's change detector applies the rspamd/ change: the record gets its new line
    wait_until(lambda: dms.has_applied("postfix-accounts.cf", ACTIONS_FILE), 60,
               "DMS's change detector to record the new rspamd/ file")
    detector_cycles(dms, 2)  # and it is idle again
    assert userdb_stat(dms) == userdb, "DMS's change detector rebuilt the userdb"
    assert detector_handlings(dms) == handlings + 1, "one handling: the rspamd/ change"

    assert result is not None and result.path == "fast", result
    assert result.others == (ACTIONS_FILE,), result
    assert f"{ACTIONS_FILE} changed too: DMS's change detector applies it" in result.message
    assert "postfix-accounts.cf" in result.message
    wait_until(lambda: _running_reject(dms) == 17.0, 60, "the running Rspamd's reject = 17")
    assert "reject = 17;" in dms.sh("rspamadm configdump actions 2>/dev/null")
    assert not dms.sh("ls -a /tmp | grep dms-reconciler", check=False).strip()
    _rspamd_ready(dms)
    problems = dms.problems(since_mark=True, allow=ALLOWED)
    assert problems == [], "DMS logged warnings or errors:\n" + "\n".join(problems)

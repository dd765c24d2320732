"""The sa-learn job on a DMS without a /var/mail-state mount, the case where the DMS FAQ's
`--dbpath /var/mail-state/lib-amavis/.spamassassin` made a root-owned database Amavis never read:
our line learns into /var/lib/amavis/.spamassassin, which Amavis opens, and leaves it Amavis's.
(test_mail.py runs the same job with /var/mail-state mounted.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.realdms import harness
from tests.realdms.harness import GTUBE, DmsVolume
from tests.support.util import run_cli, sha512_hash

pytestmark = pytest.mark.realdms

DESIRED = f"""\
version: 1
hostname: {harness.HOSTNAME}
domains: [example.org]
accounts:
  bob@example.org: {{password_hash: "{sha512_hash("bob-pw", "bobsalt")}"}}
sa_learn:
  - {{schedule: "0 2 * * *", learn: spam, folder: .Junk, accounts: [bob@example.org]}}
"""


def test_learns_into_the_database_amavis_reads_without_mail_state(
        realdms_root: Path, start_real_dms: Any) -> None:
    volume = DmsVolume(realdms_root / "no-state", state=False)
    desired = realdms_root / "no-state.yaml"
    desired.write_text(DESIRED)
    applied = run_cli("apply", "-f", str(desired), *volume.args())
    assert applied.returncode == 0, applied.stdout + applied.stderr
    dms = start_real_dms(volume, name="realdms-no-state")
    dms.wait_amavis()
    assert dms.sh("readlink -f /var/lib/amavis").strip() == "/var/lib/amavis"  # no link
    dms.send("bob@example.org", "gtube-no-state", GTUBE)
    dms.wait_for_mail("bob@example.org", "gtube-no-state", folder=".Junk")
    before = dms.bayes_nspam()
    code, out = dms.exec(["/bin/sh", "-c", dms.cron_command("bob/.Junk")])
    assert (code, out) == (0, "")
    assert dms.bayes_nspam() > before
    owners = dms.sh("stat -c '%U:%G %n' /var/lib/amavis/.spamassassin/*").splitlines()
    assert owners and all(o.startswith("amavis:amavis ") for o in owners), owners
    code, _ = dms.exec(["test", "-e", "/var/mail-state/lib-amavis"])
    assert code != 0  # the FAQ's folder, which Amavis would never read, was not made

"""The real DMS v16 with Rspamd running what `rspamd:` declares (ENABLE_RSPAMD=1, Amavis,
SpamAssassin, OpenDKIM, OpenDMARC and policyd-spf off):

- `rspamadm configdump` shows the declared thresholds, the multimap sender rules and the module
  states; a mail from a denied sender domain is rejected at SMTP time, one from an allowed sender
  is delivered with the allow symbol in its X-Spamd-Result header;
- a learn job's cron command run inside the container raises `rspamc stat`'s learned count;
- the declared settings survive later changes: the file is changed twice (thresholds, then the
  sender list), and after each change DMS's change detector has applied our files (its checksum
  file holds their sha512, which is what the sidecar's confirmer reads) and the module states
  and options are still in effect; DMS logs no WARN or ERROR about our files.

Only the v16 image: Rspamd is what DMS intends as its default from there on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.watch import dms as dms_watch
from tests.realdms import harness
from tests.realdms.harness import DmsVolume, RealDms, wait_until
from tests.support.util import run_cli, sha512_hash

pytestmark = pytest.mark.realdms

IMAGE = harness.IMAGES["v16"]
RSPAMD_ENV = {
    "ENABLE_RSPAMD": "1",
    "ENABLE_AMAVIS": "0",
    "ENABLE_SPAMASSASSIN": "0",
    "ENABLE_OPENDKIM": "0",
    "ENABLE_OPENDMARC": "0",
    "ENABLE_POLICYD_SPF": "0",
}
PW_HASH = "$2$6y69exj8zem6kpp43kiabd98j8pwccew$paw15tsh6f9ef1osyfkpsdm34jb5g1qcohj563yj59y69zthttcy"
BASE = f"""\
version: 1
hostname: {harness.HOSTNAME}
domains: [example.test, example.org, spam.test]
accounts:
  admin@example.test: {{password_hash: "{sha512_hash("admin-pw", "adminsalt")}"}}
  jane@example.org: {{password_hash: "{sha512_hash("jane-pw", "janesalt")}"}}
  spammer@spam.test: {{password_hash: "{sha512_hash("spam-pw", "spamsalt")}"}}
"""
RSPAMD = """\
rspamd:
  actions: {{greylist: 5, add_header: 7, reject: {reject}}}
  senders:
    allow: [{allow}]
    deny: ["@spam.test"]
  modules: {{disable: [rbl, phishing]}}
  options:
    module: {{classifier-bayes: {{autolearn: true}}}}
  controller: {{password_hash: "{pw}"}}
  learn:
    - {{schedule: "0 2 * * *", learn: spam, folder: .Junk, accounts: [admin@example.test]}}
"""
# DMS logs these with Rspamd and no network (../shared/dms-image/README.md); each says why
ALLOWED = (
    r"!! INSECURE !! SSL configured with plain text access",  # the tests run DMS without TLS
    r"rspamd.*(DNS|resolv|cannot load map|maps\.rspamd\.com)",  # no resolver: --network none
)


@dataclass
class Host:
    dms: RealDms
    volume: DmsVolume
    desired: Path


def _write(desired: Path, *, reject: int, allow: str) -> None:
    desired.write_text(BASE + RSPAMD.format(reject=reject, allow=allow, pw=PW_HASH))


def _apply(host: Host) -> str:
    result = run_cli("apply", "-f", str(host.desired), *host.volume.args())
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _configdump(dms: RealDms, *sections: str) -> str:
    return dms.sh("rspamadm configdump " + " ".join(sections) + " 2>/dev/null")


def _confirmed(host: Host, written: list[str]) -> None:
    """DMS's change detector applied our files: what the sidecar's confirmer checks, through its
    own reader of DMS's checksum file."""

    def applied() -> bool:
        recorded = dms_watch.parse_chksum(host.dms.checksums())
        return all(recorded.get(name) == host.volume.sha512(name) for name in written)

    wait_until(applied, 60, f"DMS's checksum file to record {written}")


def _rspamd_result(host: Host, message: str) -> str:
    """Rspamd's log line for a delivered message (its symbols): a prefilter `accept` ends the
    scan before milter_headers, so the allow symbol is in Rspamd's task log, not in a header."""
    mid = re.search(r"(?im)^Message-Id: <([^>]+)>", message)
    assert mid, message[:1000]
    log = host.volume.logs / "rspamd.log"
    return str(
        wait_until(
            lambda: next(
                (line for line in log.read_text(errors="replace").splitlines()
                 if mid[1] in line and "rspamd_task_write_log" in line),
                None,
            ),
            30,
            f"Rspamd's log line for <{mid[1]}>",
        )
    )


def _rspamd_ready(dms: RealDms) -> None:
    wait_until(
        lambda: dms.exec(["nc", "-z", "127.0.0.1", "11332"])[0] == 0
        and dms.exec(["rspamc", "stat"])[0] == 0,
        120,
        "Rspamd's milter port 11332 and controller",
    )


@pytest.fixture(scope="module")
def host(real_engine: Any, real_client: Any) -> Iterator[Host]:
    harness.build_dms_image(real_engine, IMAGE.build_arg)
    root = harness.temp_root("realdms-rspamd-")
    volume = DmsVolume(root)
    desired = root / "mailserver.yaml"
    _write(desired, reject=11, allow='"jane@example.org"')
    host = Host(None, volume, desired)  # type: ignore[arg-type]
    _apply(host)
    dms = harness.start_dms(real_client, volume, name="realdms-rspamd", env=RSPAMD_ENV,
                            image=IMAGE.image)
    host.dms = dms
    try:
        _rspamd_ready(dms)
        yield host
    finally:
        dms.remove()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_configdump_shows_the_declared_settings(host: Host) -> None:
    actions = _configdump(host.dms, "actions")
    assert "reject = 11;" in actions and "greylist = 5;" in actions and "add_header = 7;" in actions
    multimap = _configdump(host.dms, "multimap")
    assert "DMS_SENDER_ALLOW {" in multimap and "DMS_SENDER_DENY_DOMAIN {" in multimap
    states = _configdump(host.dms, "--modules-state")
    disabled = states.split("Modules disabled (explicitly):")[1].splitlines()[0]
    assert "rbl" in disabled.split(", ") or " rbl" in disabled
    assert "phishing" in disabled
    assert "autolearn = true;" in _configdump(host.dms, "classifier")
    assert PW_HASH in _configdump(host.dms, "worker")


def test_denied_sender_is_rejected_and_allowed_one_carries_the_symbol(host: Host) -> None:
    code, out = host.dms.exec(["swaks", "--server", "127.0.0.1", "--port", "25", "--from",
                               "spammer@spam.test", "--to", "admin@example.test",
                               "--h-Subject", "from a denied sender"])
    assert code != 0 and "554" in out, out
    host.dms.send("admin@example.test", "from an allowed sender", sender="jane@example.org")
    text = host.dms.wait_for_mail("admin@example.test", "from an allowed sender")
    assert "DMS_SENDER_ALLOW" in _rspamd_result(host, text)


def test_a_learn_job_raises_the_learned_count(host: Host) -> None:
    def learned() -> int:
        out = host.dms.sh("rspamc stat")
        return int(out.split("Messages learned:")[1].split()[0])

    before = learned()
    junk = "/var/mail/example.test/admin/.Junk/cur"  # in the container
    host.dms.sh(f"mkdir -p {junk}")
    for i in range(3):
        host.dms.sh(
            f"printf 'From: a{i}@spam.test\\nTo: admin@example.test\\nSubject: offer {i}\\n"
            f"Message-ID: <learn{i}@spam.test>\\n\\ncheap pills number {i} casino lottery winner "
            f"prize money now click here today {i}\\n' > {junk}/{i}:2,S"
        )
    command = host.dms.cron_command("rspamc")
    host.dms.sh(command)
    assert learned() >= before + 3


def test_declared_settings_survive_two_later_changes(host: Host) -> None:
    host.dms.mark()
    for reject, allow in ((15, '"jane@example.org"'), (20, '"jane@example.org", "@example.test"')):
        _write(host.desired, reject=reject, allow=allow)
        out = _apply(host)
        assert "rspamd/override.d/" in out
        written = [
            "rspamd/override.d/actions.conf",
            *(["rspamd/override.d/multimap.conf"] if "@example.test" in allow else []),
        ]
        _confirmed(host, written)
        wait_until(lambda r=reject: f"reject = {r};" in _configdump(host.dms, "actions"), 60,
                   f"reject = {reject} in configdump")
        states = _configdump(host.dms, "--modules-state")
        disabled = states.split("Modules disabled (explicitly):")[1].splitlines()[0]
        assert "rbl" in disabled and "phishing" in disabled, states
        assert "autolearn = true;" in _configdump(host.dms, "classifier")
    _rspamd_ready(host.dms)
    host.dms.send("jane@example.org", "after two changes", sender="admin@example.test")
    text = host.dms.wait_for_mail("jane@example.org", "after two changes")
    assert "DMS_SENDER_ALLOW_DOMAIN" in _rspamd_result(host, text)
    assert host.dms.problems(since_mark=True, allow=ALLOWED) == []

"""The real DMS (v15.1.0 and v16, see conftest.py) on a volume dms-reconciler writes: mail to every
kind of declared address, IMAP logins for each password source, quotas as each Dovecot reads them,
changes applied by the sidecar and confirmed from DMS's checksum file, spam to the quarantine
mailbox, and DMS's logs free of warnings about our files. What v16 changed where it touches our
files is pinned here too: the alias dummy accounts (DMS #4581) and the quota grace.

One DMS container serves the whole module (DMS starts in ~6.5 s, Amavis takes longer); the tests
run in file order and each one's changes are the next one's starting point.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.kinds.quarantine import quarantine_note
from tests.realdms import harness
from tests.realdms.harness import GTUBE, DmsImage, DmsVolume, RealDms, wait_until
from tests.support.util import run_cli, sha512_hash
from tests.support.watch_process import WatchProcess, save_atomically

pytestmark = pytest.mark.realdms

PASSWORDS = {"admin": "admin-pw-1", "jane": "jane-pw-1", "bob": "bob-pw-1", "carol": "carol-pw-1"}
ADMIN_HASH = sha512_hash(PASSWORDS["admin"], "adminsalt")
ENV = {"BOB_PASSWORD": PASSWORDS["bob"], "CAROL_PASSWORD": PASSWORDS["carol"]}
DESIRED = f"""\
version: 1
hostname: {harness.HOSTNAME}
domains: [example.test, example.org]
accounts:
  admin@example.test: {{password_hash: "{ADMIN_HASH}", quota: 50M}}
  carol@example.test: {{password_env: CAROL_PASSWORD}}
  jane@example.org: {{password_file: jane.txt}}
  bob@example.org: {{password_env: BOB_PASSWORD}}
aliases:
  sales@example.org: bob@example.org
  team@example.org: [jane@example.org, bob@example.org]
  partner@example.org: someone@elsewhere.net
catch_all: {{example.test: admin@example.test}}
devnull: [noreply@example.test]
quarantine: {{mailbox: jane@example.org}}
sa_learn:
  - {{schedule: "0 2 * * *", learn: spam, folder: .Junk, accounts: [bob@example.org]}}
"""
# Lines that are not about our files, or that are known and documented, each with its reason:
ALLOWED = (
    # the tests run DMS without TLS (SSL_TYPE empty): DMS says so at every start
    r"!! INSECURE !! SSL configured with plain text access",
)


@dataclass
class MailHost:
    dms: RealDms
    volume: DmsVolume
    desired: Path
    watcher: WatchProcess

    def edit(self, old: str, new: str) -> None:
        text = self.desired.read_text()
        assert old in text, f"{old!r} is not in mailserver.yaml"
        save_atomically(self.desired, text.replace(old, new, 1))

    def wait_confirmed(self, after: int, timeout: float = 60.0) -> dict[str, Any]:
        """The sidecar's log line saying DMS applied its write (read from the checksum file)."""
        return self.watcher.wait_for_log(
            lambda r: r.get("dms") == "confirmed", after=after, timeout=timeout,
            what="the sidecar's confirmation that DMS applied the change")

    def assert_no_problems(self, *, since_mark: bool = True) -> None:
        problems = self.dms.problems(since_mark=since_mark, allow=ALLOWED)
        assert problems == [], "DMS logged warnings or errors:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def host(realdms_root: Path, start_real_dms: Any, real_engine: Any) -> Iterator[MailHost]:
    volume = DmsVolume(realdms_root / "dms")
    desired_dir = realdms_root / "gitops"
    desired_dir.mkdir()
    (desired_dir / "jane.txt").write_text(PASSWORDS["jane"] + "\n")
    desired = desired_dir / "mailserver.yaml"
    desired.write_text(DESIRED)
    applied = run_cli("apply", "-f", str(desired), *volume.args(), env=ENV)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    # carol's own mail is kept from the catch-all by self-routes in postfix-regexp.cf, which DMS
    # has nothing to warn about (a self-alias in postfix-virtual.cf made it warn: issue 22)
    assert "twice" not in applied.stdout and "Warning: self" not in applied.stdout, applied.stdout
    assert r"/^carol@example\.test$/ carol@example.test" in (
        volume.config / "postfix-regexp.cf").read_text()
    dms = start_real_dms(volume, name="realdms-mail")
    dms.wait_amavis()
    watcher = WatchProcess(
        ["-f", str(desired), *volume.args(), "--container", dms.name, "--interval", "60"],
        cwd=realdms_root, env={**ENV, "DOCKER_HOST": real_engine.url})
    try:
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed" or
                             "no changes" in r.get("message", ""), what="the first reconcile")
        yield MailHost(dms, volume, desired, watcher)
    finally:
        watcher.terminate()


def test_dms_starts_without_warnings_about_our_files(host: MailHost) -> None:
    logs = host.dms.logs()
    assert "is up and running" in logs
    # No self-alias line (carol has self-routes, the catch-all's own target admin needs no
    # route), so DMS has nothing to warn about
    lines = [line.split() for line in (host.volume.config / "postfix-virtual.cf").read_text(
        ).splitlines() if not line.startswith("#")]
    assert ["@example.test", "admin@example.test"] in lines
    assert [line for line in lines if line[0] == line[1]] == []
    assert "will not be added to '/etc/dovecot/userdb' twice" not in logs
    plan = run_cli("plan", "-f", str(host.desired), *host.volume.args(), env=ENV)
    assert plan.returncode == 0 and "No changes." in plan.stdout, plan.stdout
    host.assert_no_problems(since_mark=False)


def test_mail_reaches_every_kind_of_declared_address(host: MailHost) -> None:
    dms = host.dms
    dms.mark()
    sent = {
        "admin@example.test": ("account", ["admin@example.test"]),
        "sales@example.org": ("alias", ["bob@example.org"]),
        "team@example.org": ("multi-target alias", ["jane@example.org", "bob@example.org"]),
        "nobody-here@example.test": ("catch-all", ["admin@example.test"]),
        "carol@example.test": ("account in a catch-all domain", ["carol@example.test"]),
        "carol+tag@example.test": ("its +extension address", ["carol@example.test"]),
    }
    for to in [*sent, "noreply@example.test", "partner@example.org"]:
        dms.send(to, f"route-{to}")
    for to, (_kind, mailboxes) in sent.items():
        for mailbox in mailboxes:
            dms.wait_for_mail(mailbox, f"route-{to}")
    # the catch-all did not take carol's mail
    assert not any("route-carol" in m for m in dms.messages("admin@example.test"))
    # devnull: accepted and discarded by the local alias `devnull: /dev/null`
    dms.wait_for_log(r"to=<devnull@[^>]*>, orig_to=<noreply@example\.test>.*status=sent")
    assert not any("route-noreply@" in m for box in ("admin", "carol")
                   for m in dms.messages(f"{box}@example.test"))
    # forward: Postfix routes it to the outside address (no network here: it stays queued)
    queue = dms.sh("postqueue -j")
    assert "someone@elsewhere.net" in queue, queue
    host.assert_no_problems()


def test_imap_login_for_each_password_source(host: MailHost) -> None:
    dms = host.dms
    assert dms.imap_login("admin@example.test", PASSWORDS["admin"])  # password_hash
    assert dms.imap_login("jane@example.org", PASSWORDS["jane"])  # password_file
    assert dms.imap_login("bob@example.org", PASSWORDS["bob"])  # password_env
    assert dms.imap_login("carol@example.test", PASSWORDS["carol"])
    assert not dms.imap_login("bob@example.org", PASSWORDS["jane"])


def userdb(dms: RealDms) -> dict[str, str]:
    """/etc/dovecot/userdb as DMS generated it: {user: the whole line}."""
    lines = dms.sh("cat /etc/dovecot/userdb").splitlines()
    return {line.split(":", 1)[0]: line for line in lines if line.strip()}


def test_quota_as_the_dms_version_reads_it(host: MailHost, dms_image: DmsImage) -> None:
    """admin's `quota: 50M`: Dovecot 2.3 (v15) gets a quota rule, Dovecot 2.4 (v16) a storage
    size plus DMS's 10% grace; both enforce 51200 KiB."""
    line = userdb(host.dms)["admin@example.test"]
    if dms_image.v16:
        assert line.endswith("userdb_quota_storage_size=50M userdb_quota_storage_grace=5M"), line
        root = "user"
    else:
        assert line.endswith("userdb_quota_rule=*:bytes=50M"), line
        root = "User quota"
    shown = host.dms.sh("doveadm quota get -u admin@example.test")
    assert re.search(rf"^{root}\s+STORAGE\s+\d+\s+51200\b", shown, re.M), shown


def test_alias_dummy_accounts_follow_the_version(host: MailHost, dms_image: DmsImage) -> None:
    """DMS #4581 (v16): an alias gets a userdb entry (its quota check, and an IMAP login with
    that account's password) from the FIRST local account of its targets; catch-alls get none.
    We write a multi-target alias's targets sorted, so `team@example.org bob@...,jane@...` is
    bob's. v15 gave a catch-all one and a multi-target alias none."""
    line = (host.volume.config / "postfix-virtual.cf").read_text()
    assert "\nteam@example.org bob@example.org,jane@example.org\n" in line
    entries = userdb(host.dms)
    assert "/var/mail/example.org/bob/home" in entries["sales@example.org"]  # both versions
    if dms_image.v16:
        assert "/var/mail/example.org/bob/home" in entries["team@example.org"]
        assert "@example.test" not in entries
    else:
        assert "team@example.org" not in entries
        assert "/var/mail/example.test/admin/home" in entries["@example.test"]
    assert host.dms.imap_login("team@example.org", PASSWORDS["bob"]) is dms_image.v16
    assert not host.dms.imap_login("team@example.org", PASSWORDS["jane"])
    assert "partner@example.org" not in entries  # a forward: no local account, on both


def test_password_change_is_applied_and_confirmed(host: MailHost,
                                                  realdms_timings: dict[str, float]) -> None:
    dms = host.dms
    dms.mark()
    before = host.watcher.count()
    new_hash = sha512_hash("admin-pw-2", "adminsalt")
    changed = time.monotonic()
    host.edit(ADMIN_HASH, new_hash)
    confirmed = host.wait_confirmed(before)
    latency = time.monotonic() - changed
    realdms_timings.setdefault("sidecar: mailserver.yaml saved -> DMS confirmed", latency)
    assert dms.has_applied("postfix-accounts.cf")
    assert re.match(r"DMS applied the change in [\d.]+ s", confirmed["message"]), confirmed
    # Dovecot's reload (DMS's, or fast apply's) finishes in the background: bounded wait
    wait_until(lambda: dms.imap_login("admin@example.test", "admin-pw-2"), 30,
               "the new password to log in")
    assert not dms.imap_login("admin@example.test", PASSWORDS["admin"])
    host.assert_no_problems()


def test_account_removal_keeps_its_maildir(host: MailHost) -> None:
    dms = host.dms
    maildir = dms.maildir("carol@example.test")
    assert any("route-carol@" in m for m in dms.messages("carol@example.test"))
    dms.mark()
    before = host.watcher.count()
    host.edit("  carol@example.test: {password_env: CAROL_PASSWORD}\n", "")
    host.wait_confirmed(before)
    assert "carol@example.test" not in (host.volume.config / "postfix-accounts.cf").read_text()
    assert not dms.imap_login("carol@example.test", PASSWORDS["carol"])
    assert maildir.is_dir() and any("route-carol@" in m for m in dms.messages("carol@example.test"))
    # her address now belongs to the catch-all
    dms.send("carol@example.test", "after-removal")
    dms.wait_for_mail("admin@example.test", "after-removal")
    host.assert_no_problems()


def test_gtube_reaches_the_quarantine_mailbox(host: MailHost) -> None:
    """DMS's defaults (SPAMASSASSIN_SPAM_TO_INBOX=1, MOVE_SPAM_TO_JUNK=1): Amavis passes the
    spam on tagged, so the recipient still gets it, in .Junk, and the quarantine mailbox gets a
    copy, which DMS's sieve also files into its .Junk. The plan's note says exactly this."""
    dms = host.dms
    dms.mark()
    dms.send("bob@example.org", "gtube-1", GTUBE)
    dms.wait_for_mail("jane@example.org", "gtube-1", folder=".Junk")
    dms.wait_for_mail("bob@example.org", "gtube-1", folder=".Junk")
    assert not any("gtube-1" in m for m in dms.messages("jane@example.org"))  # not the inbox
    assert re.search(r"Passed SPAM .*<bob@example\.org>.*quarantine: jane@example\.org",
                     dms.mail_log())
    # the plan that writes the quarantine block says what the user gets (what we just saw)
    fresh = DmsVolume(host.volume.root.parent / "fresh")
    plan = run_cli("plan", "-f", str(host.desired), *fresh.args(), "--format", "json", env=ENV)
    assert plan.returncode == 0, plan.stderr
    assert quarantine_note("jane@example.org") in json.loads(plan.stdout)["notes"]
    host.assert_no_problems()


def test_sa_learn_job_learns_into_the_database_amavis_reads(host: MailHost) -> None:
    """With /var/mail-state mounted. Each line of the cron file DMS loaded is run the way cron
    runs it (its command through /bin/sh as root) rather than waited for: the count in Amavis's
    own database rises, its files stay Amavis's, and the job whose folder does not exist yet
    prints nothing and fails nothing (cron mails root whatever a job prints)."""
    dms = host.dms
    assert dms.messages("bob@example.org", ".Junk")  # the GTUBE mail of the test before
    before = dms.bayes_nspam()
    dms.mark()
    host.edit("accounts: [bob@example.org]}",
              "accounts: [bob@example.org]}\n"
              '  - {schedule: "0 4 * * *", learn: spam, folder: .NoSuchFolder, '
              "accounts: [jane@example.org]}")
    wait_until(lambda: ".NoSuchFolder" in dms.sh("cat /etc/cron.d/sa-learn"), 30,
               "the new cron file in the DMS container")
    for fragment in ("bob/.Junk", "jane/.NoSuchFolder"):
        code, out = dms.exec(["/bin/sh", "-c", dms.cron_command(fragment)])
        assert (code, out) == (0, ""), f"{fragment}: exit {code}, output {out!r}"
    assert dms.bayes_nspam() > before
    owners = dms.sh("stat -c '%U:%G %n' /var/lib/amavis/.spamassassin/*").splitlines()
    assert owners and all(o.startswith("amavis:amavis ") for o in owners), owners
    assert dms.sh("readlink -f /var/lib/amavis").strip() == "/var/mail-state/lib-amavis"
    host.assert_no_problems()


def test_a_virtual_change_in_a_known_domain_leaves_amavis_running(host: MailHost) -> None:
    """Amavis reads /etc/postfix/vhost alone of what a change regenerates. An alias in a domain
    the server already hosts leaves vhost byte for byte the same, so the sidecar's fast apply
    neither reloads nor restarts Amavis (DMS's own path would `amavisd reload`, refusing the mail
    Postfix hands it meanwhile), and the new alias's mail goes through Amavis at once."""
    dms = host.dms
    dms.mark()
    starts, spawns = dms.amavis_starts(), dms.supervisor_restarts("amavis")
    before = host.watcher.count()
    host.edit("  sales@example.org: bob@example.org\n",
              "  sales@example.org: bob@example.org\n  info@example.org: jane@example.org\n")
    confirmed = host.wait_confirmed(before)
    assert "by fast apply" in confirmed["message"], confirmed
    dms.send("info@example.org", "after-virtual-change")
    dms.wait_for_mail("jane@example.org", "after-virtual-change")
    assert (dms.amavis_starts() - starts, dms.supervisor_restarts("amavis") - spawns) == (0, 0)
    host.assert_no_problems()


def test_amavis_cf_and_virtual_changed_together_restart_amavis_once(host: MailHost) -> None:
    """A new quarantine mailbox (amavis.cf) and a new alias (postfix-virtual.cf) in one change:
    the sidecar installs amavis.cf and leaves the restart to DMS's own `amavisd reload`, which
    reads it; the next spam's copy goes to the new quarantine mailbox."""
    dms = host.dms
    dms.mark()
    starts = dms.amavis_starts()
    before = host.watcher.count()
    text = host.desired.read_text()
    assert "quarantine: {mailbox: jane@example.org}" in text
    save_atomically(host.desired, text.replace(
        "quarantine: {mailbox: jane@example.org}", "quarantine: {mailbox: admin@example.test}"
    ).replace("  sales@example.org: bob@example.org\n",
              "  sales@example.org: bob@example.org\n  info2@example.org: jane@example.org\n"))
    host.wait_confirmed(before)
    wait_until(lambda: dms.amavis_starts() > starts, 60, "DMS's own `amavisd reload`")
    time.sleep(10)  # a second restart (the sidecar's) would come within seconds of the first
    assert dms.amavis_starts() - starts == 1
    dms.wait_amavis()
    dms.send("bob@example.org", "gtube-2", GTUBE)
    dms.wait_for_mail("admin@example.test", "gtube-2", folder=".Junk")
    host.assert_no_problems()


def test_config_folder_briefly_missing_is_reported_and_converges(host: MailHost) -> None:
    """The config folder renamed away on the host (a restore, a botched move) while a change
    arrives: the sidecar reports it, keeps retrying and never makes the folder up; once the
    folder is back it applies the change and DMS confirms it. (DMS's bind mount follows the
    folder's inode, so DMS itself keeps its view.)"""
    dms = host.dms
    dms.mark()
    config = host.volume.config
    away = config.with_name("config.away")
    config.rename(away)
    try:
        before = host.watcher.count()
        host.edit("  sales@example.org: bob@example.org\n",
                  "  sales@example.org: bob@example.org\n  back@example.org: jane@example.org\n")
        record = host.watcher.wait_for_log(
            lambda r: r["message"].startswith("reconcile failed"), after=before, timeout=30,
            what="the report of the missing folder")
        assert "does not exist" in record["message"] and record["level"] == "error", record
        time.sleep(3)  # it keeps retrying meanwhile
        assert not config.exists()  # it never makes the volume up itself
    finally:
        away.rename(config)
    host.wait_confirmed(before)
    assert "back@example.org" in (config / "postfix-virtual.cf").read_text()
    dms.send("back@example.org", "after-missing-folder")
    dms.wait_for_mail("jane@example.org", "after-missing-folder")
    host.assert_no_problems()


def test_sidecar_health_reports_dms_confirmed(host: MailHost) -> None:
    code, body = host.watcher.get("/healthz")
    assert code == 200, body
    assert json.loads(body)["dms"]["state"] == "confirmed", body
    assert host.watcher.metric("dms_reconciler_dms_confirmed") == 1


def test_the_target_dms_is_reported(host: MailHost, dms_image: DmsImage,
                                    real_engine: Any) -> None:
    """The sidecar logs and exports the release and settings it read from the container;
    `plan --container` puts them in the plan's `target`, and with this DMS (every declared part
    works there) it has nothing to warn about."""
    release = "edge" if dms_image.v16 else "v15.1.0"  # 16-edge is an untagged build
    settings = {"enable_amavis": "1", "enable_spamassassin": "1", "enable_quotas": "1",
                "enable_rspamd": "0", "account_provisioner": "FILE"}
    assert host.watcher.metric("dms_reconciler_dms_info", found="true", release=release,
                               release_line=f"v{dms_image.major}", **settings) == 1
    [said] = [r for r in host.watcher.records() if "dms_target" in r]
    assert said["message"].startswith(f"DMS {release} (container {host.dms.name}): ")
    assert said["dms_target"]["settings"]["SPAMASSASSIN_SPAM_TO_INBOX"] == "1"  # DMS's default
    done = run_cli("plan", "-f", str(host.desired), *host.volume.args(), "--container",
                   host.dms.name, "--format", "json", env={**ENV, "DOCKER_HOST": real_engine.url})
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["target"] == said["dms_target"]
    assert [w for w in data["warnings"] if "DMS" in w or "declared but" in w] == []
    if dms_image.v16:
        assert any("DMS_RELEASE is 'edge'" in n for n in data["notes"])



def test_quota_forms_that_lose_the_grace_on_v16(host: MailHost, dms_image: DmsImage) -> None:
    """DMS v16 adds `userdb_quota_storage_grace` (10%, whole units rounded down) only for sizes
    matching `^[1-9][0-9]*[BkMGT]$`: `050M` gets none, `5M` gets `0M`; the same limits written
    as validate suggests (`50M`, `5120k`) keep it. validate warns about exactly the first two."""
    host.dms.mark()
    before = host.watcher.count()
    host.edit("quota: 50M}", "quota: 050M}")
    host.edit("  bob@example.org: {password_env: BOB_PASSWORD}",
              "  bob@example.org: {password_env: BOB_PASSWORD, quota: 5M}\n"
              "  jane2@example.org: {password_env: BOB_PASSWORD, quota: 5120k}")
    host.wait_confirmed(before)
    checked = run_cli("validate", "-f", str(host.desired))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    warned = [line for line in (checked.stdout + checked.stderr).splitlines() if "no grace" in line]
    assert len(warned) == 2, warned
    assert "050M" in warned[0] + warned[1] and "write 5120k" in warned[0] + warned[1], warned
    entries = wait_until(lambda: (e := userdb(host.dms)).get("jane2@example.org") and e, 60,
                         "jane2 in the userdb")
    attributes = {u: entries[u].rsplit("::", 1)[1] for u in
                  ("admin@example.test", "bob@example.org", "jane2@example.org")}
    if dms_image.v16:
        assert attributes == {
            "admin@example.test": "userdb_quota_storage_size=050M",
            "bob@example.org": "userdb_quota_storage_size=5M userdb_quota_storage_grace=0M",
            "jane2@example.org": "userdb_quota_storage_size=5120k "
                                 "userdb_quota_storage_grace=512k",
        }, attributes
    else:  # Dovecot 2.3: DMS's quota_grace = 10%% applies to every rule
        assert attributes == {"admin@example.test": "userdb_quota_rule=*:bytes=050M",
                              "bob@example.org": "userdb_quota_rule=*:bytes=5M",
                              "jane2@example.org": "userdb_quota_rule=*:bytes=5120k"}, attributes
    shown = host.dms.sh("doveadm quota get -u bob@example.org")
    assert re.search(r"STORAGE\s+\d+\s+5120\b", shown), shown
    host.assert_no_problems()

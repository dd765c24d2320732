"""The real DMS v15.1.0 running what the setup features declare, changed by the sidecar:

- a Dovecot master user reads another user's mailbox over IMAP (`jane@example.org*boss`);
- a restricted sender and a restricted recipient are refused by Postfix (after the sidecar put
  the access files in Postfix's restrictions and reloaded it, as `setup email restrict` does);
- a regexp alias delivers;
- mail from a relayed domain reaches a relay stand-in on the container's loopback (aiosmtpd,
  STARTTLS and AUTH) logged in with the declared credentials;
- that message carries a DKIM signature that verifies (dkimpy) against the TXT record
  `dms-reconciler dns` shows for the key apply made, once the sidecar installed opendkim/ and
  restarted OpenDKIM;
- DMS's own `setup` commands for the same entries find nothing to change (its `sedfile --strict`
  says "No difference") and leave our files byte for byte as they are.

DMS starts on a volume without any of these; one edit of mailserver.yaml, picked up by the
sidecar, brings them all in (the tests run in file order).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.realdms import harness
from tests.realdms.harness import DmsVolume, RealDms
from tests.support.util import run_cli, sha512_hash
from tests.support.watch_process import WatchProcess, save_atomically

pytestmark = pytest.mark.realdms

ADMIN_PW, JANE_PW, BOB_PW = "admin-pw-s1", "jane-pw-s1", "bob-pw-s1"
MASTER_PW = "master-Secret-s1"
RELAY_USER, RELAY_PW = "relay-user", "relay-Secret-s1"
ENV = {"MASTER_PASSWORD": MASTER_PW, "RELAY_PASSWORD": RELAY_PW}
BASE = f"""\
version: 1
hostname: {harness.HOSTNAME}
domains: [example.test, example.org]
accounts:
  admin@example.test: {{password_hash: "{sha512_hash(ADMIN_PW, 'adminsalt')}"}}
  jane@example.org: {{password_hash: "{sha512_hash(JANE_PW, 'janesalt')}"}}
  bob@example.org: {{password_hash: "{sha512_hash(BOB_PW, 'bobsalt')}"}}
aliases:
  sales@example.org: bob@example.org
"""
SETUP = """\
masters:
  boss: {password_env: MASTER_PASSWORD}
regexp_aliases:
  - {pattern: '^test[0-9]+@example\\.org$', to: jane@example.org}
restrict:
  send: [bob@example.org]
  receive: [sales@example.org]
relay:
  example.test: {host: 127.0.0.1, port: 2525, username: relay-user, password_env: RELAY_PASSWORD}
  example.org: {exclude: true}
dkim:
  example.test: {key_size: 2048}
"""
# DMS logs these once relaying is configured without DNS or TLS material of its own; each says why
ALLOWED = (
    r"!! INSECURE !! SSL configured with plain text access",  # the tests run DMS without TLS
)
STANDIN = Path(__file__).with_name("relay_standin.py")


@dataclass
class SetupHost:
    dms: RealDms
    volume: DmsVolume
    desired: Path
    watcher: WatchProcess


def _copy_into(dms: RealDms, files: dict[str, bytes | Path], target: str) -> None:
    """Put files (or whole package folders) into the container with one tar archive."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, source in files.items():
            if isinstance(source, Path):
                tar.add(str(source), arcname=name, filter=lambda i: None
                        if "__pycache__" in i.name else i)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(source)
                tar.addfile(info, io.BytesIO(source))
    dms.sh(f"mkdir -p {target}")
    assert dms.container.put_archive(target, buffer.getvalue())


def _start_standin(dms: RealDms) -> None:
    """aiosmtpd (and atpublic, attrs) from this machine's site-packages: pure Python, the same
    minor version as the container's python3 (Debian 12: 3.11)."""
    import aiosmtpd
    import attr
    import attrs
    import public

    packages = {Path(m.__file__).parent.name: Path(m.__file__).parent
                for m in (aiosmtpd, public, attr, attrs)}
    _copy_into(dms, {**packages, "relay_standin.py": STANDIN.read_bytes()}, "/tmp/standin")
    dms.sh("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=relay.standin "
           "-keyout /tmp/relay-standin.key -out /tmp/relay-standin.crt 2>/dev/null")
    dms.container.exec_run(["python3", "/tmp/standin/relay_standin.py"], detach=True,
                           environment={"PYTHONPATH": "/tmp/standin", "RELAY_USER": RELAY_USER,
                                        "RELAY_PASSWORD": RELAY_PW})
    harness.wait_until(lambda: dms.exec(["test", "-f", "/tmp/relay-inbox/ready"])[0] == 0, 30,
                       "the relay stand-in to listen on 127.0.0.1:2525")


@pytest.fixture(scope="module")
def host(realdms_root: Path, start_real_dms: Any, real_engine: Any) -> Iterator[SetupHost]:
    volume = DmsVolume(realdms_root / "dms")
    gitops = realdms_root / "gitops"
    gitops.mkdir()
    desired = gitops / "mailserver.yaml"
    desired.write_text(BASE)
    applied = run_cli("apply", "-f", str(desired), *volume.args(), env=ENV)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    dms = start_real_dms(volume, name="realdms-setup")
    dms.wait_amavis()
    _start_standin(dms)
    dms.send("jane@example.org", "before-the-master")  # for the master user to read
    dms.wait_for_mail("jane@example.org", "before-the-master")
    watcher = WatchProcess(
        ["-f", str(desired), *volume.args(), "--container", dms.name, "--interval", "60"],
        cwd=realdms_root, env={**ENV, "DOCKER_HOST": real_engine.url})
    try:
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed" or
                             "no changes" in r.get("message", ""), what="the first reconcile")
        dms.mark()
        before = watcher.count()
        save_atomically(desired, BASE + SETUP)
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", after=before, timeout=90,
                             what="DMS's confirmation of the setup features")
        for service in ("postfix", "opendkim"):
            record = watcher.wait_for_log(
                lambda r, s=service: r.get("service") == s, after=before, timeout=60,
                what=f"the sidecar's {service} reload")
            assert record.get("result") == "ok", record
        yield SetupHost(dms, volume, desired, watcher)
    finally:
        watcher.terminate()


def test_a_master_user_reads_another_mailbox_over_imap(host: SetupHost) -> None:
    script = ("import imaplib, os, sys\n"
              "c = imaplib.IMAP4('127.0.0.1', 143)\n"
              "try:\n    c.login(os.environ['U'], os.environ['P'])\n"
              "except imaplib.IMAP4.error:\n    sys.exit(3)\n"
              "c.select('INBOX', readonly=True)\n"
              "typ, data = c.search(None, 'SUBJECT', 'before-the-master')\n"
              "print(len(data[0].split())); c.logout()\n")
    code, out = host.dms.exec(["python3", "-c", script],
                              env={"U": "jane@example.org*boss", "P": MASTER_PW})
    assert code == 0 and out.strip().splitlines()[-1] == "1", out
    wrong, _ = host.dms.exec(["python3", "-c", script],
                             env={"U": "jane@example.org*boss", "P": JANE_PW})
    assert wrong == 3, "the master login took jane's own password"
    assert host.dms.imap_login("jane@example.org", JANE_PW)  # jane's own login still works


def _swaks(dms: RealDms, sender: str, to: str) -> tuple[int, str]:
    return dms.exec(["swaks", "--server", "127.0.0.1", "--port", "25", "--from", sender,
                     "--to", to, "--h-Subject", f"restricted-{sender}-{to}"])


def test_restricted_sender_and_recipient_are_refused(host: SetupHost) -> None:
    dms = host.dms
    code, out = _swaks(dms, "bob@example.org", "admin@example.test")
    assert code != 0 and "Sender address rejected: Access denied" in out, out
    code, out = _swaks(dms, "jane@example.org", "sales@example.org")
    assert code != 0 and "Recipient address rejected: Access denied" in out, out
    main_cf = dms.sh("postconf -h dms_smtpd_sender_restrictions smtpd_recipient_restrictions")
    assert "check_sender_access texthash:/tmp/docker-mailserver/postfix-send-access.cf" in main_cf
    assert "check_recipient_access texthash:/tmp/docker-mailserver/postfix-receive-access.cf" \
        in main_cf
    dms.send("admin@example.test", "unrestricted", sender="jane@example.org")
    dms.wait_for_mail("admin@example.test", "unrestricted")


def test_a_regexp_alias_delivers(host: SetupHost) -> None:
    host.dms.send("test42@example.org", "regexp-alias")
    host.dms.wait_for_mail("jane@example.org", "regexp-alias")


def _relayed(dms: RealDms, subject: str, timeout: float = 60.0) -> tuple[bytes, dict[str, Any]]:
    def found() -> tuple[bytes, dict[str, Any]] | None:
        listing = dms.sh("ls /tmp/relay-inbox", check=False).split()
        for name in sorted(n for n in listing if n.endswith(".eml")):
            code, text = dms.exec(["cat", f"/tmp/relay-inbox/{name}"])
            if code == 0 and f"Subject: {subject}" in text:
                note = json.loads(dms.sh(f"cat /tmp/relay-inbox/{name[:-4]}.json"))
                return text.encode(), note
        return None

    try:
        return harness.wait_until(found, timeout, f"'{subject}' at the relay stand-in")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dms.mail_log()[-3000:]}") from None


def test_relayed_mail_reaches_the_relay_with_the_declared_credentials(host: SetupHost) -> None:
    dms = host.dms
    dms.sh("printf 'Subject: relayed-1\\nFrom: admin@example.test\\nTo: someone@elsewhere.net\\n"
           "\\nthrough the relay\\n' | sendmail -f admin@example.test someone@elsewhere.net")
    message, note = _relayed(dms, "relayed-1")
    assert note == {"login": RELAY_USER, "tls": True, "mail_from": "admin@example.test",
                    "rcpt_tos": ["someone@elsewhere.net"]}, note
    assert b"through the relay" in message
    assert dms.exec(["test", "-f", "/tmp/relay-inbox/refused.log"])[0] != 0, "a login was refused"
    assert "relay=127.0.0.1[127.0.0.1]:2525" in dms.mail_log()


def test_the_relayed_message_is_dkim_signed_with_the_published_key(host: SetupHost) -> None:
    import dkim

    message, _ = _relayed(host.dms, "relayed-1")
    assert b"DKIM-Signature:" in message and b"d=example.test" in message
    shown = run_cli("dns", "-f", str(host.desired), *host.volume.args(), "--format", "json")
    assert shown.returncode == 0, shown.stderr
    records = {r["name"]: r["value"] for r in json.loads(shown.stdout)["records"]
               if r["kind"] == "dkim"}
    assert list(records) == ["mail._domainkey.example.test."]
    looked_up: list[str] = []

    def dns(name: bytes, timeout: int = 5) -> bytes:
        looked_up.append(name.decode())
        return records.get(name.decode(), "").encode()

    assert dkim.verify(message, dnsfunc=dns), "the DKIM signature does not verify"
    assert looked_up == ["mail._domainkey.example.test."]
    # and against another key it does not: the check can fail
    other = {"mail._domainkey.example.test.": "v=DKIM1; k=rsa; p=" + (
        __import__("reconciler.dkimkeys", fromlist=["generate"]).generate(1024).public_b64)}
    assert not dkim.verify(message, dnsfunc=lambda n, timeout=5: other[n.decode()].encode())


def test_dms_setup_commands_write_what_we_wrote(host: SetupHost) -> None:
    """DMS's own CLI, asked for the same entries, leaves every byte as it is, and the plan
    stays empty: the formats are the CLI's."""
    config = host.volume.config
    names = ["postfix-send-access.cf", "postfix-receive-access.cf", "postfix-relaymap.cf",
             "postfix-sasl-password.cf", "opendkim/KeyTable", "opendkim/SigningTable",
             "opendkim/keys/example.test/mail.private", "opendkim/keys/example.test/mail.txt"]
    before = {n: (config / n).read_bytes() for n in names}
    dms = host.dms
    for argv in (["setup", "relay", "add-domain", "example.test", "127.0.0.1", "2525"],
                 ["setup", "relay", "exclude-domain", "example.org"],
                 ["setup", "relay", "add-auth", "example.test", RELAY_USER, RELAY_PW]):
        # the CLI replaces the line with `sedfile --strict`, which fails when sed changed
        # nothing: DMS's own line for the entry is exactly the one we wrote
        code, out = dms.exec(argv)
        assert code == 1 and "No difference after call to 'sed'" in out, (argv[:3], out)
    dms.sh("setup config dkim keysize 2048 domain example.test")
    code, out = dms.exec(["setup", "email", "restrict", "add", "send", "bob@example.org"])
    assert "already denied" in out, out
    after = {n: (config / n).read_bytes() for n in names}
    assert after == before
    plan = run_cli("plan", "-f", str(host.desired), *host.volume.args(), env=ENV)
    assert plan.returncode == 0 and "No changes." in plan.stdout, plan.stdout + plan.stderr


def test_dms_logs_no_problem_about_these_files(host: SetupHost) -> None:
    problems = host.dms.problems(since_mark=True, allow=ALLOWED)
    assert problems == [], "DMS logged warnings or errors:\n" + "\n".join(problems)

"""The real sidecar process (`python -m reconciler watch --container ...`) with the real DMS v16
and changes under rspamd/:

- With Rspamd off (ENABLE_RSPAMD=0) DMS's change detector never hashes rspamd/
  (helpers/change-detection.sh: `[[ ${ENABLE_RSPAMD} -eq 1 ]]`): the sidecar does not wait for it,
  says the change has no effect until Rspamd is enabled, and the next change is written and
  confirmed at once.
- With Rspamd on, a change of `rspamd.actions` is confirmed from DMS's checksum record, the
  confirmation says DMS reloaded Rspamd, the running Rspamd (its controller) and `rspamadm
  configdump` show the new thresholds, and DMS logs no WARN or ERROR about our files.
- A change of thresholds while mail flows loses no mail: a sender thread sends a steady stream
  (swaks in the container, one message at a time) while the sidecar changes `rspamd.actions`
  twice; every message arrives exactly once, none is rejected; mail deferred on the way (by the
  client seeing a 4xx, or in Postfix's queue) is sent again / flushed and counted.

Only the v16 image, as tests/realdms/test_rspamd.py: Rspamd is what DMS intends as its default.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.watch import dms as dms_watch
from tests.realdms import harness
from tests.realdms.harness import DmsVolume, RealDms, wait_until
from tests.realdms.test_rspamd import ALLOWED, RSPAMD_ENV
from tests.support.util import run_cli, sha512_hash
from tests.support.watch_process import WatchProcess, save_atomically

pytestmark = pytest.mark.realdms

IMAGE = harness.IMAGES["v16"]
ACTIONS_FILE = "rspamd/override.d/actions.conf"
DESIRED = f"""\
version: 1
hostname: {harness.HOSTNAME}
domains: [example.test, example.org]
accounts:
  admin@example.test: {{password_hash: "{sha512_hash("admin-pw", "adminsalt")}"}}
  bob@example.org: {{password_hash: "{sha512_hash("bob-pw", "bobsalt")}"}}
rspamd:
  actions: {{greylist: 6, add_header: 8, reject: 15}}
  senders:
    deny: ["@spam.test"]
"""
NEW_ACCOUNT = f"""\
  carol@example.org: {{password_hash: "{sha512_hash("carol-pw", "carolsalt")}"}}
rspamd:"""
MESSAGES = 40  # the stream: at least this many, and more until both changes are confirmed


@dataclass
class Host:
    dms: RealDms
    volume: DmsVolume
    desired: Path
    watcher: WatchProcess

    def edit(self, old: str, new: str) -> int:
        """Change mailserver.yaml as git or an editor would; the sidecar's log length before."""
        after = self.watcher.count()
        text = self.desired.read_text()
        assert old in text, f"{old!r} is not in mailserver.yaml"
        save_atomically(self.desired, text.replace(old, new, 1))
        return after

    def confirmed(self, after: int, timeout: float = 120.0) -> dict[str, Any]:
        return self.watcher.wait_for_log(
            lambda r: r.get("dms") == "confirmed", after=after, timeout=timeout,
            what="the sidecar's confirmation that DMS applied the change")

    def assert_no_problems(self) -> None:
        problems = self.dms.problems(since_mark=True, allow=ALLOWED)
        assert problems == [], "DMS logged warnings or errors:\n" + "\n".join(problems)


def _start(real_client: Any, real_engine: Any, root: Path, name: str,
           env: dict[str, str]) -> Host:
    volume = DmsVolume(root / "dms")
    desired_dir = root / "gitops"
    desired_dir.mkdir()
    desired = desired_dir / "mailserver.yaml"
    desired.write_text(DESIRED)
    applied = run_cli("apply", "-f", str(desired), *volume.args())
    assert applied.returncode == 0, applied.stdout + applied.stderr
    dms = harness.start_dms(real_client, volume, name=name, env=env, image=IMAGE.image)
    try:
        dms.wait_postfix()
        watcher = WatchProcess(
            ["-f", str(desired), *volume.args(), "--container", dms.name, "--interval", "60"],
            cwd=root, env={"DOCKER_HOST": real_engine.url})
    except BaseException:
        dms.remove()
        raise
    host = Host(dms, volume, desired, watcher)
    try:
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed"
                             or "no changes" in r.get("message", ""), timeout=120,
                             what="the sidecar's first reconcile")
    except BaseException:
        _stop(host)
        raise
    return host


def _stop(host: Host) -> None:
    try:
        host.watcher.terminate()
    finally:
        host.dms.remove()


def _rspamd_ready(dms: RealDms) -> None:
    wait_until(lambda: dms.listening(11332) and dms.exec(["rspamc", "stat"])[0] == 0,
               180, "Rspamd's milter port 11332 and controller")


def _running_reject(dms: RealDms) -> float | None:
    """The reject threshold the running Rspamd uses: its controller's /actions (no password from
    127.0.0.1, a secure_ip), asked with Python in the container (curl is not in the image)."""
    script = ("import json, urllib.request\n"
              "r = urllib.request.urlopen('http://127.0.0.1:11334/actions', timeout=5)\n"
              "print(json.dumps(json.load(r)))\n")
    code, out = dms.exec(["python3", "-c", script])
    if code != 0:
        return None
    try:
        actions = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    for action in actions:
        if action.get("action") == "reject":
            return float(action["value"])
    return None


def _recorded(host: Host) -> dict[str, str]:
    return dms_watch.parse_chksum(host.dms.checksums())


@pytest.fixture(scope="module")
def on(real_engine: Any, real_client: Any) -> Iterator[Host]:
    """DMS v16 with Rspamd, and the sidecar."""
    harness.build_dms_image(real_engine, IMAGE.build_arg)
    root = harness.temp_root("realdms-rspamd-sidecar-")
    host = _start(real_client, real_engine, root, "realdms-rspamd-sidecar", RSPAMD_ENV)
    try:
        _rspamd_ready(host.dms)
        yield host
    finally:
        _stop(host)
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_with_rspamd_off_the_sidecar_does_not_wait_for_rspamd_files(
        real_engine: Any, real_client: Any) -> None:
    harness.build_dms_image(real_engine, IMAGE.build_arg)
    root = harness.temp_root("realdms-rspamd-off-")
    host = _start(real_client, real_engine, root, "realdms-rspamd-off",
                  {**RSPAMD_ENV, "ENABLE_RSPAMD": "0"})
    try:
        assert not [n for n in _recorded(host) if n.startswith("rspamd/")]  # DMS never hashes
        host.dms.mark()
        after = host.edit("reject: 15}", "reject: 20}")
        warned = host.watcher.wait_for_log(
            lambda r: r.get("rspamd") == "off", after=after, timeout=60,
            what="the sidecar saying the rspamd/ change has no effect")
        assert warned["level"].upper().startswith("WARN"), warned
        assert warned["message"].startswith(f"{ACTIONS_FILE} written, but Rspamd is off")
        assert "no effect until Rspamd is enabled" in warned["message"]
        assert "reject = 20;" in (host.volume.config / ACTIONS_FILE).read_text()
        # it did not start waiting for DMS (a wait would end in a time-out, and hold writes)
        records = host.watcher.records()[after:]
        assert not [r for r in records if r.get("dms") in ("waiting", "timed_out")], records
        code, health = host.watcher.get("/healthz")
        assert code == 200 and json.loads(health)["dms"] != "waiting", health

        # the next change is written and confirmed as always, without Rspamd's files
        after = host.edit("rspamd:", NEW_ACCOUNT)
        confirmed = host.confirmed(after)
        assert "Rspamd" not in confirmed["message"], confirmed
        recorded = _recorded(host)
        assert recorded.get("postfix-accounts.cf") == host.volume.sha512("postfix-accounts.cf")
        assert not [n for n in recorded if n.startswith("rspamd/")], recorded
        host.assert_no_problems()
    finally:
        _stop(host)
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_with_rspamd_on_a_change_is_confirmed_as_rspamd_reloaded(on: Host) -> None:
    on.dms.mark()
    after = on.edit("reject: 15}", "reject: 17}")
    confirmed = on.confirmed(after)
    assert f"it reloaded Rspamd (SIGHUP) for {ACTIONS_FILE}" in confirmed["message"], confirmed
    assert _recorded(on).get(ACTIONS_FILE) == on.volume.sha512(ACTIONS_FILE)
    wait_until(lambda: _running_reject(on.dms) == 17.0, 60, "the running Rspamd's reject = 17")
    assert "reject = 17;" in on.dms.sh("rspamadm configdump actions 2>/dev/null")
    _rspamd_ready(on.dms)
    on.assert_no_problems()


@dataclass
class Stream:
    """A sender thread: one message at a time through Postfix on port 25 (swaks in the DMS
    container), each with its own subject. A 4xx answer is what a sending MTA retries: the
    message is sent again (after waiting for the milter port), and counted."""

    dms: RealDms
    sent: list[str] = field(default_factory=list)
    client_deferrals: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    enough: threading.Event = field(default_factory=threading.Event)
    minimum: int = MESSAGES

    def run(self) -> None:
        try:
            number = 0
            while number < self.minimum or not self.enough.is_set():
                number += 1
                subject = f"flow-{number:03d}"
                self._send(subject)
                if number > 400:  # a stream that never stops is a failure, not a hang
                    self.errors.append("the stream did not end after 400 messages")
                    return
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))

    def _send(self, subject: str) -> None:
        for _ in range(10):
            code, out = self.dms.exec([
                "swaks", "--server", "127.0.0.1", "--port", "25", "--from", "bob@example.org",
                "--to", "admin@example.test", "--h-Subject", subject, "--silent", "2"])
            if code == 0:
                self.sent.append(subject)
                return
            if re.search(r"<\*\* 4\d\d", out):  # swaks marks the server's error replies <**
                self.client_deferrals.append(f"{subject}: {out.strip()[-300:]}")
                wait_until(lambda: self.dms.listening(25), 60, "Postfix on 25")
                continue
            self.rejected.append(f"{subject} (exit {code}): {out.strip()[-500:]}")
            return
        self.errors.append(f"{subject} was deferred 10 times")


def test_a_change_of_thresholds_while_mail_flows_loses_no_mail(on: Host) -> None:
    dms = on.dms
    _rspamd_ready(dms)
    dms.mark()
    log_start = len(dms.mail_log())
    stream = Stream(dms)
    sender = threading.Thread(target=stream.run, name="mail-stream", daemon=True)
    sender.start()
    changes = ({"greylist: 6": "greylist: 7", "add_header: 8": "add_header: 9",
                "reject: 17}": "reject: 19}"},
               {"greylist: 7": "greylist: 6", "add_header: 9": "add_header: 10",
                "reject: 19}": "reject: 21}"})
    confirmations = []
    try:
        for edits in changes:
            # each change starts while mail flows: a few messages sent since the last one
            mark = len(stream.sent)
            wait_until(lambda m=mark: len(stream.sent) >= m + 8 or stream.errors or
                       stream.rejected, 300, "8 more messages sent")
            assert not stream.errors and not stream.rejected, (stream.errors, stream.rejected)
            text = on.desired.read_text()
            for old, new in edits.items():
                assert old in text, old
                text = text.replace(old, new, 1)
            after = on.watcher.count()
            save_atomically(on.desired, text)
            confirmed = on.confirmed(after)
            assert "reloaded Rspamd" in confirmed["message"], confirmed
            confirmations.append(len(stream.sent))
        # and the stream goes on past the last reload
        last = len(stream.sent)
        wait_until(lambda: len(stream.sent) >= last + 5 or stream.errors or stream.rejected, 300,
                   "5 more messages after the last change")
    finally:
        stream.enough.set()
        sender.join(600)
    assert not sender.is_alive(), "the sender thread did not finish"
    assert stream.errors == [] and stream.rejected == [], (stream.errors, stream.rejected)
    assert len(stream.sent) >= MESSAGES

    # every message arrives, exactly once; Postfix's queue is flushed while waiting (a
    # deferred delivery is retried now, not after Postfix's default back-off)
    def arrived() -> bool:
        dms.exec(["postqueue", "-f"])
        subjects = [m for text in dms.messages("admin@example.test")
                    for m in re.findall(r"(?m)^Subject: (flow-\d{3})$", text)]
        return set(subjects) >= set(stream.sent)

    wait_until(arrived, 300, f"all {len(stream.sent)} messages in admin's mailbox", interval=1.0)
    subjects = [m for text in dms.messages("admin@example.test")
                for m in re.findall(r"(?m)^Subject: (flow-\d{3})$", text)]
    duplicates = sorted({s for s in subjects if subjects.count(s) > 1})
    assert duplicates == [] and sorted(subjects) == sorted(stream.sent), duplicates
    log = dms.mail_log()[log_start:]
    queue_deferrals = len(re.findall(r"status=deferred", log))
    bounced = re.findall(r".*status=bounced.*", log)
    milter = re.findall(r".*milter.*(?:error|not respond|timeout|unavailable).*", log, re.I)
    assert bounced == [], bounced
    wait_until(lambda: _running_reject(dms) == 21.0, 60, "the running Rspamd's reject = 21")
    dump = dms.sh("rspamadm configdump actions 2>/dev/null")
    assert "reject = 21;" in dump and "add_header = 10;" in dump and "greylist = 6;" in dump
    # scanned by Rspamd, or let through unscanned (milter_default_action = accept) while it
    # reloaded: not lost either way, and measured
    ids = [m for text in dms.messages("admin@example.test") if "Subject: flow-" in text
           for m in re.findall(r"(?im)^Message-Id: <([^>]+)>", text)[:1]]
    assert len(ids) == len(stream.sent)
    rspamd_log = (on.volume.logs / "rspamd.log").read_text(errors="replace")
    scanned = {line for line in rspamd_log.splitlines() if "rspamd_task_write_log" in line}
    unscanned = [i for i in ids if not any(i in line for line in scanned)]
    print(f"\nrspamd flow: {len(stream.sent)} messages, changes confirmed after "
          f"{confirmations} sent; client 4xx deferrals {len(stream.client_deferrals)}; "
          f"Postfix queue deferrals {queue_deferrals}; milter trouble lines {len(milter)}; "
          f"not scanned by Rspamd {len(unscanned)}")
    for line in stream.client_deferrals + milter:
        print("  " + line)
    on.assert_no_problems()


def test_a_new_account_and_new_thresholds_are_fast_applied_and_dms_applies_the_thresholds(
        on: Host) -> None:
    """One save adds an account and changes `rspamd.actions`: fast apply puts the account in
    place, DMS's change detector applies rspamd/ alone (tests/realdms/test_fast_apply_rspamd.py
    proves it rebuilds no account), and the confirmation says which path applied what."""
    _rspamd_ready(on.dms)
    on.dms.mark()
    text = on.desired.read_text()
    found = re.search(r"reject: (\d+)\}", text)
    assert found, text
    reject = int(found.group(1))
    after = on.watcher.count()
    save_atomically(on.desired, text.replace(f"reject: {reject}}}", f"reject: {reject + 2}}}", 1)
                    .replace("rspamd:", NEW_ACCOUNT, 1))
    confirmed = on.confirmed(after)
    assert (f"(by fast apply, and DMS's change detector for {ACTIONS_FILE}); it reloaded Rspamd"
            in confirmed["message"]), confirmed
    fast = [r for r in on.watcher.records()[after:] if r.get("fast_apply")]
    assert [r.get("fast_apply") for r in fast] == ["fast"], fast
    assert f"{ACTIONS_FILE} changed too" in fast[0]["message"], fast
    wait_until(lambda: on.dms.imap_login("carol@example.org", "carol-pw"), 15,
               "the new account to log in")
    wait_until(lambda: _running_reject(on.dms) == float(reject + 2), 60,
               f"the running Rspamd's reject = {reject + 2}")
    _rspamd_ready(on.dms)
    on.assert_no_problems()

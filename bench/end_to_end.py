"""End to end against the real DMS container: "file saved -> the new account logs in and receives
mail", the sidecar's fast apply beside DMS's own change detector and DMS's `setup email add`, with
a bystander that keeps logging in and receiving mail meanwhile.

For each size it generates a host (bench/generate.py: N accounts, `--alias-ratio` x N aliases,
hashes only), applies it to a fresh config volume, starts the real DMS image on it (private Docker
engine, `--network none`: tests/realdms/harness.py) and adds one account per run, three ways:

- **fast apply**: the real sidecar, `python -m reconciler watch --container NAME` on this host
  (DOCKER_HOST: the private engine) against the bind-mounted config volume; mailserver.yaml saved
  with one account more (a new file renamed over it, as git does);
- **DMS change detector**: the same with `--no-fast-apply`: the sidecar writes, DMS's
  check-for-changes.sh rebuilds;
- **setup email add**: no sidecar; `docker exec NAME setup email add ADDRESS PASSWORD`, timed from
  the moment the command starts.

From that moment it measures, in parallel: until the new account's IMAP LOGIN + SELECT works;
until a mail to it (SMTP on port 25, a new attempt every 0.1 s while Postfix refuses it, again if
it bounces) is in its maildir; until DMS's checksum record holds the new postfix-accounts.cf (DMS
is done). A bystander (tests/realdms/probe.py: the last account of postfix-accounts.cf, the one
DMS's rebuild restores last) logs in and mails itself, at most every 0.5 s, from just before the
save until all three are done; its failed logins, and its refused, deferred and bounced mails,
are counted. The next run starts once DMS is idle and the bystander's mails have arrived.

Fast apply and DMS's change detector alternate within each repetition (the sidecar is restarted
for each); the `setup email add` runs come last, with the sidecar stopped (the account it adds is
not in mailserver.yaml: a sidecar would remove it again).

    export DMS_IMAGE_WORK=/var/tmp/dms-image-fast     # where the DMS images are cached
    python -m bench.end_to_end --accounts 100 1000 --repeat 3 --image dms-local:15.1.0

Goal (issue 25): under 2 s at 10,000 accounts with fast apply (DMS's paths: minutes), zero
bystander failures.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import imaplib
import json
import os
import platform
import re
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from bench import generate as benchgen
from reconciler.reconcile import Target, apply_once
from tests.realdms import harness
from tests.realdms.harness import DmsVolume, RealDms, RealEngine, wait_until
from tests.realdms.probe import (
    PASSWORD,
    Probe,
    login_failures,
    mail_trouble,
    with_bystander,
)

REPO = Path(__file__).resolve().parent.parent
PATHS = {"fast": "fast apply", "detector": "DMS change detector", "setup": "setup email add"}
COLUMNS = ("accounts", "path", "saved -> IMAP login works", "saved -> mail delivered",
           "saved -> DMS done", "bystander failed logins", "bystander deferrals/bounces")
# What the sidecar's confirmation says applied the change, per path ("" without a sidecar).
CONFIRMED = {"fast": "fast apply", "detector": "DMS's change detector", "setup": ""}
LOCK = "check-for-changes.sh.lock"
CHKSUM = "/tmp/docker-mailserver-config-chksum"
# the bystander: a login and a mail at most this often (a `docker exec` of each paced it before)
PROBE_INTERVAL = 0.5  # DMS's record, in the container
LOGIN_MEANS = (
    "'IMAP login works': from the save until the new account's first IMAP LOGIN + SELECT INBOX "
    "that worked was done; a new attempt starts every 0.1 s, each on its own connection from a "
    "local address of its own (Dovecot delays a failed login's answer 2 s and holds later "
    "logins from the same IP 4 s: neither touches another attempt), so the account began to "
    "work at most ~0.1 s before the attempt that worked began.")
CLONE_NEWNET = 0x40000000


@dataclass
class Run:
    """One added account, one way."""

    accounts: int
    path: str  # a key of PATHS
    repeat: int
    address: str
    login: float  # seconds from the save until the first IMAP LOGIN + SELECT that worked was done
    mail: float  # ... to the mail in its maildir
    done: float  # ... to DMS's record holding the new postfix-accounts.cf
    logins: int  # the bystander's IMAP logins meanwhile
    failed_logins: int
    missing: int  # of which Dovecot did not know the bystander (missing from the userdb)
    at_reload: int  # ... the login raced a `dovecot reload` ("Internal login failure")
    mails: int  # the bystander's mails meanwhile
    deferrals: int  # refused by Postfix, or deferred/bounced in the mail log
    lost: int  # of its mails accepted, not in its inbox after the run (and a queue flush)
    applied_by: str  # the sidecar's confirmation ("fast apply", "DMS's change detector"), or ""
    trouble: list[str]  # the first refusals and mail log lines behind `deferrals`
    login_began: float = 0.0  # ... until that login attempt connected (the one before failed)
    login_wait: float = 0.0  # seconds Dovecot took to answer its LOGIN (no penalty: milliseconds)
    login_attempt: int = 0  # which attempt it was (from 1; one started every 0.1 s)
    fast_apply: str = ""  # the sidecar's fast apply message, with where its time went


class Sidecar:
    """`python -m reconciler watch` on this host, against the DMS container in the private
    engine; its JSON log goes to a file."""

    def __init__(self, host: Host, *, fast: bool) -> None:
        self.host = host
        self.log_path = Path(tempfile.mkstemp(prefix=f"watch-{'fast' if fast else 'dms'}-",
                                              suffix=".log", dir=host.volume.root)[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_RECONCILER_")}
        env.update({"DOCKER_HOST": host.engine_url, "DMS_RECONCILER_LOG_FORMAT": "json",
                    "PYTHONPATH": str(REPO),
                    # fast apply's message says where its time went (reconciler/watch/fastapply.py)
                    "DMS_RECONCILER_FAST_APPLY_TIMING": "1"})
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "watch", "-f", str(host.desired),
             "--config-dir", str(host.volume.config), "--cron-file", str(host.volume.cron),
             "--container", host.dms.name, "--listen", "127.0.0.1:0",
             "--fast-apply" if fast else "--no-fast-apply"],
            env=env, stdout=subprocess.DEVNULL, stderr=self._log, cwd=REPO)
        try:
            wait_until(self._ready, 120 + 0.02 * host.accounts, "the sidecar to be ready")
        except AssertionError as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{exc}; its log ({self.log_path}) ends:\n{tail}") from None
        except BaseException:
            self.stop()
            raise

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a traceback line: the sidecar said something outside its log format
        return out

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the sidecar exited ({self.proc.returncode}):\n{tail}")
        listen = next((r["listen"] for r in self.records() if "listen" in r), None)
        if listen is None:
            return False
        try:
            with urllib.request.urlopen(f"http://{listen}/readyz", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def confirmation(self, since: int) -> str:
        """Which path the sidecar says applied the change, from its log records after `since`:
        "fast apply", "DMS's change detector", or "" while it has not confirmed."""
        for record in self.records()[since:]:
            match = re.search(r"DMS applied the change.*\(by (.+)\)$", str(record.get("message")))
            if match:
                return match.group(1)
        return ""

    def timeline(self, since: int, saved: float) -> str:
        """When the sidecar began reconciling, finished fast apply and confirmed, in seconds
        after `saved` (wall clock), from its log records after `since`."""
        marks = []
        for record in self.records()[since:]:
            message = str(record.get("message"))
            name = ("began reconciling" if message == "reconciling"
                    else "fast apply done" if "fast_apply" in record
                    else "confirmed" if message.startswith("DMS applied the change") else "")
            stamp = str(record.get("time", ""))
            if name and stamp:
                at = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                marks.append(f"{name} +{at - saved:.2f} s")
        return ", ".join(marks)

    def fast_apply(self, since: int) -> str:
        """What fast apply said about the change (with where its time went), from the log
        records after `since`; "" if it said nothing."""
        return next((str(r["message"]) for r in self.records()[since:] if "fast_apply" in r), "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@dataclass
class Host:
    """A generated host on a running DMS: where to save, who is the bystander, who sends."""

    accounts: int
    volume: DmsVolume
    desired: Path
    dms: RealDms
    engine_url: str
    bystander: str
    sender: str  # an existing account: senders must be hosted (there is no DNS)
    domain: str  # for the new accounts: one without a catch-all
    timeout: float
    mail_baseline: float = 0.0  # seconds a mail to an existing account takes, no change going on
    one_source: bool = False  # the new account's login attempts all from 127.0.0.1 (--one-source)

    def target(self) -> Target:
        return Target(str(self.desired), self.volume.value)

    def idle(self) -> bool:
        """DMS has applied the volume as it is and nothing holds its lock."""
        return (self.dms.has_applied("postfix-accounts.cf")
                and not (self.volume.config / LOCK).exists())

    def idle_seen_from_host(self) -> bool:
        """`idle()` without a `docker exec`: DMS's checksum record read through the container's
        root in /proc. Polled every 0.05 s while a change is applied, a `docker exec` per look
        kept one exec running all the time (dockerd, containerd and runc on the CPUs the change
        needs)."""
        pid = int(self.dms.container.attrs["State"]["Pid"])
        try:
            record = Path(f"/proc/{pid}/root{CHKSUM}").read_text()
            accounts = (self.volume.config / "postfix-accounts.cf").read_bytes()
        except OSError:
            return False
        return (hashlib.sha512(accounts).hexdigest() in record
                and not (self.volume.config / LOCK).exists())


def make_host(client: Any, engine_url: str, root: Path, accounts: int, *, image: str,
              alias_ratio: int, timeout: float, log: Callable[[str], None]) -> Host:
    spec = benchgen.build(accounts, secrets_from="file", plaintext_fraction=0.0,
                          alias_ratio=alias_ratio)
    volume = DmsVolume(root / f"accounts-{accounts}")
    text, bystander = with_bystander(benchgen.to_yaml(spec).replace(
        "hostname: mail.bench-host.test", f"hostname: {harness.HOSTNAME}"), spec.domains[0])
    desired = volume.root / "mailserver.yaml"
    desired.write_text(text)
    apply_once(Target(str(desired), volume.value))
    last = (volume.config / "postfix-accounts.cf").read_text().splitlines()[-1]
    if not last.startswith(bystander + "|"):
        raise RuntimeError("the bystander is not the last line of postfix-accounts.cf")
    log(f"{accounts} accounts: starting {image} (start-up grows with the accounts: about 400 s "
        "at 10,000)")
    dms = harness.start_dms(client, volume, name=f"bench-e2e-{accounts}", image=image)
    try:
        # DMS's start-up leaves the mailbox folders it creates owned by root past a few dozen
        # accounts (its chown looks only near the top of /var/mail, DMS PR #4696): Dovecot could
        # not deliver to them. DMS's first change handling chowns them; do it once here instead.
        dms.sh("chown -R 5000:5000 /var/mail")
        dms.wait_amavis(300)
        wait_until(lambda: dms.imap_login(bystander, PASSWORD), 120, "the bystander to log in")
    except BaseException:
        dms.remove()
        raise
    domain = next(d for d in spec.domains if d not in spec.catch_all)
    host = Host(accounts, volume, desired, dms, engine_url, bystander, spec.quarantine, domain,
                timeout)
    host.mail_baseline = mail_baseline(host)
    log(f"{accounts} accounts: DMS up in {dms.started:.0f} s; a mail to an existing account "
        f"arrives in {host.mail_baseline:.2f} s")
    return host


def mail_baseline(host: Host, count: int = 3) -> float:
    """The median time a mail to an existing account (the bystander) takes from the SMTP
    submission to its maildir, with no change going on: what every "mail delivered" includes
    (postscreen, Amavis and SpamAssassin, Dovecot's LMTP)."""
    times: list[float] = []

    def measure() -> None:
        enter_network_of(int(host.dms.container.attrs["State"]["Pid"]))
        for number in range(count):
            subject = f"baseline {number} {time.time()}"
            began = time.monotonic()
            if not smtp_send(host.sender, host.bystander, subject):
                raise RuntimeError(f"Postfix refused a mail to {host.bystander}")
            wait_until(partial(arrived, host.dms, host.bystander, subject), 120,
                       f"the baseline mail '{subject}'", interval=0.05)
            times.append(time.monotonic() - began)

    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _catch(measure, errors), daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return float(statistics.median(times))


def wait_quietly(check: Callable[[], bool], until: float) -> bool:
    """`check()` became true before the monotonic time `until`."""
    try:
        return bool(wait_until(check, max(0.0, until - time.monotonic()), "a mail", interval=0.2))
    except AssertionError:
        return False


def arrived(dms: RealDms, address: str, subject: str) -> bool:
    return any(f"Subject: {subject}" in text for text in dms.messages(address))


def _catch(work: Callable[[], None], errors: list[BaseException]) -> None:
    try:
        work()
    except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
        errors.append(exc)


def save_with_account(desired: Path, address: str) -> None:
    """mailserver.yaml with one account more, saved as git does: a new file renamed over it."""
    text = desired.read_text().replace(
        "accounts:\n", f'accounts:\n  {address}:\n    password_hash: "{benchgen.hash_pool()[0]}"\n',
        1)
    temporary = desired.with_name(".mailserver.yaml.new")
    temporary.write_text(text)
    os.replace(temporary, desired)


def enter_network_of(pid: int) -> None:
    """Move the calling thread (only it: a network namespace is per thread) into the network
    namespace of process `pid`, the DMS container's: its sockets then reach Dovecot and Postfix on
    the container's 127.0.0.1 directly. A `docker exec` per look costs 0.2-3 s on a loaded
    machine, more than fast apply itself; a socket costs milliseconds."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into the network of {pid}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class _SourcedIMAP(imaplib.IMAP4):
    """imaplib's client, its connection made from a given local address."""

    def __init__(self, host: str, port: int, source: str, timeout: float) -> None:
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._source, 0))


def source_address(number: int) -> str:
    """The local address of the new account's `number`th login attempt: one of 65,024 in
    127.1.0.0/16 (all of 127/8 is the container's loopback), none of them 127.0.0.1, where the
    bystander logs in from. Dovecot's auth penalty is kept per remote IP: after a failed login
    from an IP it holds every later login from that IP 4 s before even looking the user up
    (2 s doubled per failure, the same user and password counting once; it is forgotten 15 s
    after the last failure: auth-penalty.c). An attempt from an address of its own pays none,
    and its failure penalises no later attempt and not the bystander."""
    number %= 254 * 256
    return f"127.1.{number // 254}.{number % 254 + 1}"


@dataclass
class Attempt:
    """One IMAP login of the new account, in seconds from the save."""

    started: float  # connecting
    answered: float  # Dovecot answered LOGIN (OK, or NO after its 2 s auth_failure_delay)
    ok: bool  # LOGIN and SELECT INBOX worked
    number: int = 0  # the how-manieth attempt (from 1)


def imap_attempt(address: str, source: str, started: float) -> Attempt:
    """IMAP LOGIN and SELECT INBOX on the container's 127.0.0.1:143 (from a thread in its
    network namespace), connecting from `source`."""
    began = time.monotonic()
    answered = began
    try:
        client = _SourcedIMAP("127.0.0.1", 143, source, timeout=10)
    except OSError:  # Dovecot restarting
        return Attempt(began - started, time.monotonic() - started, False)
    try:
        try:
            client.login(address, PASSWORD)
        finally:
            answered = time.monotonic()
        ok = client.select("INBOX")[0] == "OK"
        client.logout()
    except (imaplib.IMAP4.error, OSError):
        ok = False
    return Attempt(began - started, answered - started, ok)


class LoginRace:
    """From `started`: until an IMAP login of `address` works. Dovecot answers a failed login
    only after `auth_failure_delay` (2 s), and after a failure holds further logins from the
    same IP back (its auth penalty, 4 s): so a new attempt starts every 0.1 s, each in a thread
    of its own in the container's network namespace and each from a local address of its own
    (`source_address`), none waiting for another or paying for another's failure. The first
    attempt whose LOGIN + SELECT works stops the clock: `took` is when it had SELECTed, and it
    began at most 0.1 s after an attempt that still failed (`attempt`: when it began and when
    Dovecot answered its LOGIN)."""

    def __init__(self, started: float, address: str, deadline: float, netns: int, *,
                 one_source: bool = False) -> None:
        self.started, self.address, self.deadline, self.netns = started, address, deadline, netns
        self.one_source = one_source  # every attempt from 127.0.0.1: the probe before, penalised
        self.took: float | None = None
        self.attempt: Attempt | None = None
        self.errors: list[BaseException] = []
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(64)
        self._count = 0
        self._thread = threading.Thread(target=self._spawn, daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        while not self._done.is_set() and time.monotonic() < self.deadline and not self.errors:
            if self._slots.acquire(timeout=0.1):
                source = "127.0.0.1" if self.one_source else source_address(self._count)
                self._count += 1
                threading.Thread(target=self._attempt, args=(source, self._count),
                                 daemon=True).start()
            self._done.wait(0.1)

    def _attempt(self, source: str, number: int) -> None:
        try:
            enter_network_of(self.netns)
            attempt = imap_attempt(self.address, source, self.started)
            with self._lock:
                if self._done.is_set():
                    return
                if attempt.ok:
                    self.took = time.monotonic() - self.started
                    self.attempt = attempt
                    attempt.number = number
                    self._done.set()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self.errors.append(exc)
        finally:
            self._slots.release()

    def result(self, what: str) -> float:
        self._thread.join()
        if self.errors:
            raise self.errors[0]
        if self.took is None:
            raise TimeoutError(f"timed out waiting for {what}")
        return self.took


class DirectClient:
    """The bystander's client in the bench (tests/realdms/probe.py's ProbeClient): IMAP and SMTP
    from this process in the container's network namespace, from 127.0.0.1 (the new account's
    attempts have addresses of their own), instead of a `docker exec` of a Python or swaks
    client in the container for each login and mail."""

    def __init__(self, host: Host) -> None:
        self.netns = int(host.dms.container.attrs["State"]["Pid"])

    def enter(self) -> None:
        enter_network_of(self.netns)

    def login(self, address: str, password: str) -> bool:
        try:
            client = imaplib.IMAP4("127.0.0.1", 143, timeout=30)
        except OSError:
            return False  # no answer at all (Dovecot restarting): a failure too
        try:
            client.login(address, password)
            client.select("INBOX")
            client.logout()
            return True
        except (imaplib.IMAP4.error, OSError):
            return False

    def send(self, address: str, subject: str) -> str | None:
        message = f"From: {address}\r\nTo: {address}\r\nSubject: {subject}\r\n\r\nprobe\r\n"
        try:
            with smtplib.SMTP("127.0.0.1", 25, timeout=30) as client:
                client.sendmail(address, [address], message)
            return None
        except (smtplib.SMTPException, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300]


def smtp_send(sender: str, to: str, subject: str) -> bool:
    """One mail through Postfix on the container's 127.0.0.1:25; False if it is refused."""
    message = f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nend to end\r\n"
    try:
        with smtplib.SMTP("127.0.0.1", 25, timeout=30) as client:
            client.sendmail(sender, [to], message)
        return True
    except (smtplib.SMTPException, OSError):
        return False


class Stopwatch:
    """From `started`: until `check()` is true, polled in a thread of its own (in the network
    namespace of process `netns`)."""

    def __init__(self, started: float, check: Callable[[], bool], deadline: float,
                 netns: int | None = None) -> None:
        self.started = started
        self.took: float | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(check, deadline, netns),
                                        daemon=True)
        self._thread.start()

    def _run(self, check: Callable[[], bool], deadline: float, netns: int | None) -> None:
        try:
            if netns is not None:
                enter_network_of(netns)
            while time.monotonic() < deadline:
                if check():
                    self.took = time.monotonic() - self.started
                    return
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self.error = exc

    def result(self, what: str) -> float:
        self._thread.join()
        if self.error is not None:
            raise self.error
        if self.took is None:
            raise TimeoutError(f"timed out waiting for {what}")
        return self.took


class MailRace:
    """From `started`: until a mail to `address` is in its maildir. As for logins, a new SMTP
    attempt starts every 0.1 s, each in a thread of its own in the container's network
    namespace, none waiting for another: Postfix refuses the address (550) until its reload, and
    a session refused just before `postfix reload` is held about a second by the old smtpd
    before it ends (seen at every fast apply), which a serial retry waited out. Attempts stop
    once one was accepted; the clock stops when an accepted mail is in the maildir. When the
    mail log says an accepted one bounced or was deferred, attempts start again (the time until
    a mail sent then arrives, not Postfix's retry interval)."""

    def __init__(self, host: Host, address: str, log_mark: int, started: float,
                 deadline: float, netns: int) -> None:
        self.host, self.address, self.log_mark = host, address, log_mark
        self.started, self.deadline, self.netns = started, deadline, netns
        self.took: float | None = None
        self.errors: list[BaseException] = []
        self._accepted: list[str] = []  # subjects Postfix took, not known to have failed
        self._failed = 0  # bounced or deferred, in the mail log
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(32)
        self._count = 0
        self._spawner = threading.Thread(target=self._spawn, daemon=True)
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._spawner.start()
        self._watcher.start()

    def _running(self) -> bool:
        return not self._done.is_set() and time.monotonic() < self.deadline and not self.errors

    def _spawn(self) -> None:
        while self._running():
            with self._lock:
                waiting = bool(self._accepted)
            if not waiting and self._slots.acquire(timeout=0.1):
                self._count += 1
                threading.Thread(target=self._attempt, args=(self._count,), daemon=True).start()
            self._done.wait(0.1)

    def _attempt(self, number: int) -> None:
        try:
            enter_network_of(self.netns)
            subject = f"e2e {self.address} {number}"
            if smtp_send(self.host.sender, self.address, subject):
                with self._lock:
                    self._accepted.append(subject)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self.errors.append(exc)
        finally:
            self._slots.release()

    def _watch(self) -> None:
        looked = 0.0
        try:
            while self._running():
                with self._lock:
                    accepted = list(self._accepted)
                if accepted:
                    texts = self.host.dms.messages(self.address)
                    if any(f"Subject: {s}" in text for s in accepted for text in texts):
                        self.took = time.monotonic() - self.started
                        self._done.set()
                        return
                if time.monotonic() - looked > 2.0:  # the mail log grows: not at every look
                    looked = time.monotonic()
                    log = self.host.dms.mail_log()[self.log_mark:]
                    failed = len(re.findall(
                        rf"to=<{re.escape(self.address)}>.*status=(bounced|deferred)", log))
                    if failed > self._failed:  # bounced, or waits for Postfix's retry
                        with self._lock:
                            self._failed, self._accepted = failed, []
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self.errors.append(exc)

    def result(self, what: str) -> float:
        self._watcher.join()
        self._spawner.join()
        if self.errors:
            raise self.errors[0]
        if self.took is None:
            raise TimeoutError(f"timed out waiting for {what}")
        return self.took


def one_run(host: Host, path: str, repeat: int, sidecar: Sidecar | None) -> Run:
    dms = host.dms
    wait_until(host.idle, host.timeout, "DMS to be idle before the run", interval=0.5)
    address = f"e2e-{path}-{repeat}@{host.domain}"
    log_mark = len(dms.mail_log())
    records = len(sidecar.records()) if sidecar else 0
    probe = Probe(dms, host.bystander, client=DirectClient(host), interval=PROBE_INTERVAL).start()
    started = time.monotonic()
    saved = time.time()  # the same moment, on the wall clock of the sidecar's log
    deadline = started + host.timeout
    try:
        if path == "setup":
            code, out = dms.exec(["setup", "email", "add", address, PASSWORD])
            if code != 0:
                raise RuntimeError(f"setup email add failed ({code}):\n{out[-2000:]}")
        else:
            save_with_account(host.desired, address)
        accounts_cf = host.volume.config / "postfix-accounts.cf"
        netns = int(dms.container.attrs["State"]["Pid"])
        login = LoginRace(started, address, deadline, netns, one_source=host.one_source)
        mail = MailRace(host, address, log_mark, started, deadline, netns)
        done = Stopwatch(started, lambda: f"\n{address}|" in "\n" + accounts_cf.read_text()
                         and host.idle_seen_from_host(), deadline)
        took = (login.result(f"{address} to log in"), mail.result(f"a mail to {address}"),
                done.result("DMS to record the change"))
    finally:
        probe.stop()
    # A mail DMS deferred waits for Postfix's retry (minutes): flush the queue, then wait (at
    # most 2 minutes) until every mail of the bystander arrived or bounced for good; the ones
    # missing then are counted as lost.
    dms.exec(["postqueue", "-f"])

    def outstanding() -> list[str]:
        bounced = len(re.findall(rf"to=<{re.escape(host.bystander)}>.*status=bounced",
                                 dms.mail_log()[log_mark:]))
        absent = [s for s in probe.sent if not arrived(dms, host.bystander, s)]
        return absent if len(absent) > bounced else []

    wait_quietly(lambda: not outstanding(), time.monotonic() + 120)
    lost = [s for s in probe.sent if not arrived(dms, host.bystander, s)]
    log = dms.mail_log()[log_mark:]
    trouble = probe.refused + mail_trouble(log, host.bystander)
    missing, at_reload = login_failures(log, host.bystander)
    applied_by = fast_note = ""
    if sidecar is not None:
        applied_by = wait_until(lambda: sidecar.confirmation(records), 60,
                                "the sidecar's confirmation", interval=0.2)
        fast_note = sidecar.fast_apply(records)
        fast_note = f"{sidecar.timeline(records, saved)}; {fast_note}" if fast_note else ""
    assert login.attempt is not None
    return Run(host.accounts, path, repeat, address, *took, probe.logins, probe.failed_logins,
               missing, at_reload, len(probe.sent) + len(probe.refused), len(trouble),
               len(lost), applied_by, trouble[:5], login.attempt.started,
               login.attempt.answered - login.attempt.started, login.attempt.number, fast_note)


def run_size(client: Any, engine_url: str, root: Path, accounts: int, args: argparse.Namespace,
             log: Callable[[str], None]) -> tuple[list[Run], Host]:
    timeout = args.timeout or 120.0 + 0.15 * accounts
    host = make_host(client, engine_url, root, accounts, image=args.image,
                     alias_ratio=args.alias_ratio, timeout=timeout, log=log)
    host.one_source = args.one_source
    runs: list[Run] = []
    try:
        for repeat in range(1, args.repeat + 1):
            for path in [p for p in ("fast", "detector") if p in args.paths]:
                sidecar = Sidecar(host, fast=path == "fast")
                try:
                    runs.append(one_run(host, path, repeat, sidecar))
                finally:
                    sidecar.stop()
                log(describe(runs[-1]))
        if "setup" in args.paths:
            for repeat in range(1, args.repeat + 1):
                runs.append(one_run(host, "setup", repeat, None))
                log(describe(runs[-1]))
    finally:
        host.dms.remove()
    return runs, host


def describe(run: Run) -> str:
    by = f", applied by {run.applied_by}" if run.applied_by else ""
    return (f"{run.accounts} accounts, {PATHS[run.path]} #{run.repeat}: login {run.login:.2f} s "
            f"(the attempt that worked began at {run.login_began:.2f} s, its LOGIN answered in "
            f"{run.login_wait:.2f} s; attempt #{run.login_attempt}), "
            f"mail {run.mail:.2f} s, DMS done {run.done:.2f} s; bystander {run.failed_logins} of "
            f"{run.logins} logins failed ({run.missing} unknown user, {run.at_reload} at a Dovecot "
            f"reload), {run.deferrals} of {run.mails} mails refused/deferred/"
            f"bounced, {run.lost} lost{by}")


def table(runs: list[Run]) -> str:
    """The Markdown table: one row per size and path, medians of the repetitions."""
    rows = [f"| {' | '.join(COLUMNS)} |", f"|{'---|' * len(COLUMNS)}"]
    for accounts in dict.fromkeys(r.accounts for r in runs):
        for path in PATHS:
            mine = [r for r in runs if r.accounts == accounts and r.path == path]
            if not mine:
                continue

            def median(values: list[float]) -> float:
                return float(statistics.median(values))

            label = PATHS[path]
            if any(r.applied_by != CONFIRMED[path] for r in mine):  # e.g. fast apply fell back
                label += " (applied by " + ", ".join(sorted({r.applied_by for r in mine})) + ")"
            login, mail, done = (median([getattr(r, k) for r in mine])
                                 for k in ("login", "mail", "done"))
            failed, logins, deferrals, mails, missing, at_reload = (
                median([getattr(r, k) for r in mine])
                for k in ("failed_logins", "logins", "deferrals", "mails", "missing",
                          "at_reload"))
            why = ", ".join(part for part in (
                f"{missing:g} unknown user" if missing else "",
                f"{at_reload:g} at a Dovecot reload" if at_reload else "") if part)
            rows.append(f"| {accounts:,} | {label} | {login:.2f} s | {mail:.2f} s | {done:.2f} s "
                        f"| {failed:g} of {logins:g}{f' ({why})' if why else ''} "
                        f"| {deferrals:g} of {mails:g} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None, *, engine: RealEngine | None = None,
         out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, nargs="+", default=[100],
                        help="sizes to run (e.g. 100 1000 10000); default 100")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size and path (median)")
    parser.add_argument("--image", default=harness.DMS_IMAGE,
                        choices=[i.image for i in harness.IMAGES.values()])
    parser.add_argument("--alias-ratio", type=int, default=1,
                        help="aliases per account in the generated host (default 1)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="seconds one run may take (default 120 + 0.15 per account)")
    parser.add_argument("--one-source", action="store_true",
                        help="make every login attempt of the new account from 127.0.0.1, as the "
                        "probe did before: each then waits out Dovecot's auth penalty for the "
                        "attempts that failed before it (for comparison only)")
    parser.add_argument("--json", type=Path, help="also write every run here")
    parser.add_argument("--keep", action="store_true", help="keep the generated volumes")
    args = parser.parse_args(argv)

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    began, load_before = time.time(), os.getloadavg()
    own_engine = engine is None
    if engine is None:
        log(f"engine at {harness.WORK / 'docker'} (waits while another session uses it)")
        engine = RealEngine().start()
    root = harness.temp_root("bench-e2e-")
    runs: list[Run] = []
    hosts: dict[int, Host] = {}
    try:
        client = engine.client()
        try:
            client.images.get(args.image)
        except Exception:  # noqa: BLE001 - not built here yet: build.sh builds it (minutes)
            build = next(i.build_arg for i in harness.IMAGES.values() if i.image == args.image)
            log(f"building {args.image} with build.sh {build}")
            harness.build_dms_image(engine, build)
        for accounts in args.accounts:
            size_runs, hosts[accounts] = run_size(client, engine.url, root, accounts, args, log)
            runs += size_runs
        client.close()
    finally:
        if own_engine:
            engine.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"file saved -> the new account logs in and receives mail; real DMS {args.image}; "
          f"medians of {args.repeat}; {time.strftime('%Y-%m-%d', time.gmtime(began))}, "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after; {time.time() - began:.0f} s in all", file=out)
    print("hosts: bench/generate.py, N accounts (hashes only), "
          f"{args.alias_ratio} alias(es) per account, plus the bystander; DMS start-up "
          + ", ".join(f"{h.dms.started:.0f} s at {a:,}" for a, h in hosts.items())
          + "; a mail to an existing account, no change going on, arrives in "
          + ", ".join(f"{h.mail_baseline:.2f} s at {a:,}" for a, h in hosts.items())
          + " (Amavis, SpamAssassin: every 'mail delivered' includes it)", file=out)
    print(LOGIN_MEANS + (" NOTE --one-source: every attempt from 127.0.0.1, each held back by "
                         "Dovecot's auth penalty for the failures before it." if args.one_source
                         else ""), file=out)
    print("", file=out)
    print(table(runs), file=out)
    print("", file=out)
    for run in runs:
        print(describe(run), file=out)
    for run in runs:
        if run.fast_apply:
            print(f"{PATHS[run.path]} #{run.repeat}, the sidecar: {run.fast_apply}", file=out)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A bystander: an existing account that keeps logging in over IMAP and receiving mail while a
change is applied to a real DMS. Shared by the no-outage test (tests/realdms/test_no_outage.py)
and the end-to-end benchmark (bench/end_to_end.py).

The bystander is put last in postfix-accounts.cf (the reconciler sorts the file), so DMS's own
rebuild, which truncates the userdb and rewrites it line by line, restores it last: the account
that is missing longest on DMS's path.

- `with_bystander(text, domain)`: a generated mailserver.yaml with the bystander added;
- `Probe(dms, address).start()` ... `.stop()`: IMAP LOGIN + SELECT, then one mail to itself, back
  to back, counting failed logins and refused mails (through `docker exec` clients, or a
  `ProbeClient` of the caller's: the bench talks from its own process);
- `mail_trouble(log, address)`: the mail log's deferrals and bounces for an address (451, 550,
  status=deferred/bounced), the failures that show only there;
- `login_failures(log, address)`: why its logins failed, as Dovecot logs it (a user missing from
  the userdb, or a login that raced a `dovecot reload`);
- `wait_delivered(dms, probe)`: every mail the probe sent is in the bystander's inbox (bounded).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from bench import generate as benchgen
from tests.realdms.harness import RealDms

PASSWORD = "pool-password-0"  # the password of bench/generate.py's first pool hash
BYSTANDER_LOCAL = "zz-bystander-with-the-longest-address-of-all"
TROUBLE = re.compile(r"status=(deferred|bounced)|\b451\b|\b550\b")


def with_bystander(text: str, domain: str) -> tuple[str, str]:
    """`text` (bench/generate.py's YAML) with the bystander as an extra account in `domain`
    (password `PASSWORD`); (new text, the bystander's address)."""
    bystander = f"{BYSTANDER_LOCAL}@{domain}"
    entry = f'accounts:\n  {bystander}:\n    password_hash: "{benchgen.hash_pool()[0]}"\n'
    return text.replace("accounts:\n", entry, 1), bystander


class ProbeClient(Protocol):
    """How a probe reaches DMS from its own thread, instead of a `docker exec` per login and per
    mail (each starts dockerd's, containerd's and runc's work and an interpreter in the
    container: on a 2-core machine, load on the CPUs a change being measured needs)."""

    def enter(self) -> None:
        """Run first in the probe's thread (e.g. entering the container's network namespace)."""

    def login(self, address: str, password: str) -> bool:
        """IMAP LOGIN + SELECT INBOX; False when refused or unanswered."""

    def send(self, address: str, subject: str) -> str | None:
        """A mail from `address` to itself; None when accepted, else what refused it."""


@dataclass
class Probe:
    """IMAP logins and mails to the bystander, one after the other, until stopped: through
    `docker exec` clients in the container, or `client`."""

    dms: RealDms
    address: str
    password: str = PASSWORD
    client: ProbeClient | None = None
    interval: float = 0.0  # at least this many seconds from one login + mail to the next
    logins: int = 0
    failed_logins: int = 0
    sent: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Probe:
        self._thread = threading.Thread(target=self._run, name="bystander-probe", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)

    def _run(self) -> None:
        if self.client is not None:
            self.client.enter()
        number = 0
        while not self._stop.is_set():
            began = time.monotonic()
            self.logins += 1
            if not self._login():
                self.failed_logins += 1
            number += 1
            subject = f"probe-{id(self)}-{number}"
            refusal = self._send(subject)
            if refusal is None:
                self.sent.append(subject)
            else:
                self.refused.append(refusal)
            self._stop.wait(max(0.0, began + self.interval - time.monotonic()))

    def _login(self) -> bool:
        if self.client is not None:
            return self.client.login(self.address, self.password)
        try:
            return self.dms.imap_login(self.address, self.password)
        except AssertionError:  # no IMAP answer at all (Dovecot restarting): a failure too
            return False

    def _send(self, subject: str) -> str | None:
        if self.client is not None:
            return self.client.send(self.address, subject)
        code, out = self.dms.exec(
            ["swaks", "--server", "127.0.0.1", "--port", "25", "--from", self.address,
             "--to", self.address, "--h-Subject", subject, "--silent", "2"])
        if code == 0:
            return None
        return out.strip().splitlines()[-1] if out.strip() else str(code)


def mail_trouble(log: str, address: str) -> list[str]:
    """The lines of a mail log (a slice of it) where mail for `address` was deferred, bounced or
    refused with 451/550."""
    return [line for line in log.splitlines() if address in line and TROUBLE.search(line)]


def login_failures(log: str, address: str) -> tuple[int, int]:
    """Dovecot's account of `address`'s failed IMAP logins in a mail log (a slice of it):
    (unknown user: missing from the userdb, as while DMS rebuilds it; "Internal login failure":
    the login raced a `dovecot reload`, which restarts its auth process)."""
    missing = reload = 0
    for line in log.splitlines():
        if "imap-login: Disconnected" in line and f"user=<{address}>" in line:
            missing += "(auth failed" in line
            reload += "Internal login failure" in line
    return missing, reload


def wait_delivered(dms: RealDms, probe: Probe, timeout: float = 300.0) -> None:
    """Every mail the probe sent arrives in the bystander's inbox (a deferred one after Postfix's
    retry: hence the generous bound)."""
    for subject in probe.sent:
        dms.wait_for_mail(probe.address, subject, timeout=timeout)

"""A private, real Postfix + Dovecot built from a DMS config volume: the end-to-end proof.

dms-reconciler writes the DMS config volume; DMS turns that volume into server tables at start-up
and on every change. This harness does the same conversion (see
shared/reference/real-mail-stack.md, "How DMS turns its config volume into server tables"):

- `postfix-accounts.cf` -> Dovecot passwd-file (passdb and userdb) and Postfix `vmailbox`;
- `vhost` = the domains of all accounts plus of every `postfix-virtual.cf` key with an `@`;
- `virtual` = `postfix-virtual.cf` copied verbatim (texthash);
- `aliases` = `postmaster: root` plus `postfix-aliases.cf`, compiled with `postalias hash:`;
- maildirs `<mail>/<domain>/<local>/` owned by 5000:5000, never removed.

Then it runs Debian's Postfix and Dovecot as private instances on free 127.0.0.1 ports, with
every file under one 0755 folder, so a test can send mail over SMTP, look in the Maildirs and log
in over IMAP. The tables are regenerated from the volume by `rebuild()`, like DMS's change
detector. A missing Postfix or Dovecot is a test failure, never a skip: CI installs them.
"""

from __future__ import annotations

import ctypes
import email
import email.message
import grp
import imaplib
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.util import Volume, make_volume

VMAIL_UID = VMAIL_GID = 5000  # DMS_VMAIL_UID / DMS_VMAIL_GID
MYHOSTNAME = "mail.test.example"
BINARIES = ("postfix", "postalias", "postconf", "dovecot", "doveadm")
INSTALL_HINT = ("install them as CI does (.ci/run): apt-get install --no-install-recommends "
                "postfix dovecot-core dovecot-imapd dovecot-lmtpd, with Postfix's "
                "'No configuration' debconf answer")
_PR_SET_CHILD_SUBREAPER = 36
_WAIT = 15.0  # seconds: generous upper bound for anything the stack does (normally milliseconds)


class MailStackError(RuntimeError):
    """The stack itself misbehaved (not the product): the message carries the relevant log."""


@dataclass(frozen=True)
class Delivery:
    """One line of Postfix's delivery log for a message: where one recipient ended up."""

    to: str
    orig_to: str | None
    status: str  # sent | bounced | deferred | expired
    detail: str  # e.g. "delivered to file: /dev/null" or the LMTP answer


@dataclass(frozen=True)
class Sent:
    """The SMTP outcome of one message: the last reply code, and what happened after 250."""

    code: int
    reply: str
    token: str
    queue_id: str | None = None
    deliveries: tuple[Delivery, ...] = field(default=())

    @property
    def accepted(self) -> bool:
        return self.code == 250


@dataclass(frozen=True)
class Ports:
    smtp: int
    imap: int
    lmtp: int


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _valid_lines(path: Path) -> list[str]:
    """DMS's `_get_valid_lines_from_file`: no blank lines, no lines starting with `#`."""
    if not path.exists():
        return []
    text = path.read_text().replace("\r", "")
    return [line for line in text.split("\n") if line.strip() and not line.lstrip().startswith("#")]


def _cut_at(text: str, field_no: int) -> str:
    """`cut -d @ -fN`: a line without `@` is printed whole."""
    return text.split("@")[field_no - 1] if "@" in text else text


def _write(path: Path, text: str, mode: int = 0o644, *, backdate: bool = True,
           group: int | None = None) -> None:
    """Atomic write. Postfix stalls ~1.8 s on a table changed in the last second: backdate 2 s."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    if group is not None:
        os.chown(tmp, 0, group)
    os.replace(tmp, path)
    if backdate:
        _backdate(path)


def _backdate(path: Path) -> None:
    past = time.time() - 2
    os.utime(path, (past, past))


class MailStack:
    """Postfix + Dovecot fed from one DMS config volume: `start()`, then `rebuild()` per change."""

    def __init__(self, root: Path, volume: Volume) -> None:
        self.root = root
        self.volume = volume
        self.ports = Ports(*_free_ports(3))
        self.postfix_dir = root / "postfix"
        self.dovecot_dir = root / "dovecot"
        self.mail_root = root / "mail"
        self.log_dir = root / "log"
        self.postfix_log = self.log_dir / "postfix.log"
        self.dovecot_log = self.log_dir / "dovecot.log"
        self.dovecot_conf = self.dovecot_dir / "dovecot.conf"
        self._postfix: subprocess.Popen[bytes] | None = None
        self._dovecot: subprocess.Popen[bytes] | None = None
        self._helper_sessions: set[int] = set()

    # --- life cycle ---------------------------------------------------------------------------

    @classmethod
    def create(cls) -> MailStack:
        """A fresh stack in its own 0755 folder under /tmp, with an empty config volume in it."""
        root = Path(tempfile.mkdtemp(prefix="dms-mailstack-", dir="/tmp"))
        root.chmod(0o755)  # postfix, dovecot, dovenull and uid 5000 must all traverse it
        return cls(root, make_volume(root / "dms"))

    def start(self) -> None:
        """Write the server configs, build the tables from the volume, start both servers."""
        for sub in ("postfix", "dovecot", "mail", "log", "run", "state", "spool", "pfdata",
                    "localmail"):
            (self.root / sub).mkdir(mode=0o755, exist_ok=True)
        os.chown(self.root / "pfdata", _uid("postfix"), _gid("postfix"))
        os.chown(self.mail_root, VMAIL_UID, VMAIL_GID)
        os.chmod(self.root / "localmail", 0o1777)
        self._write_postfix_config()
        self._write_dovecot_config()
        self._build_tables()
        _set_subreaper(True)
        self._dovecot = self._spawn(["dovecot", "-F", "-c", str(self.dovecot_conf)], "dovecot")
        self._postfix = self._spawn(["postfix", "-c", str(self.postfix_dir), "start-fg"], "postfix")
        self._wait_for_port(self.ports.imap, b"* OK", self._dovecot, self.dovecot_log)
        self._wait_for_port(self.ports.lmtp, b"220", self._dovecot, self.dovecot_log)
        self._wait_for_port(self.ports.smtp, b"220", self._postfix, self.postfix_log)

    def stop(self) -> None:
        """Stop both servers, reap every process they started (no zombies), remove the folder."""
        if self._postfix is not None:
            sessions = _sessions_of(self._postfix.pid)
            # `abort` signals the master without `stop`'s one-second polling sleep.
            self._run(["postfix", "-c", str(self.postfix_dir), "abort"], check=False)
            _reap_sessions(sessions, self._postfix)
            self._postfix = None
        if self._dovecot is not None:
            sessions = _sessions_of(self._dovecot.pid)
            self._dovecot.terminate()  # dovecot -F: SIGTERM stops the master and its children
            _reap_sessions(sessions, self._dovecot)
            self._dovecot = None
        _reap_sessions(self._helper_sessions)
        self._helper_sessions.clear()
        _set_subreaper(False)
        if os.environ.get("DMS_MAILSTACK_KEEP") != "1":
            shutil.rmtree(self.root, ignore_errors=True)

    def rebuild(self) -> None:
        """What DMS's change detector does after the volume changed: tables, then both reloads."""
        self._build_tables()
        reloads = self._log_count(self.postfix_log, "reload -- version")
        sighups = self._log_count(self.dovecot_log, "SIGHUP received")
        self._run(["postfix", "-c", str(self.postfix_dir), "reload"])
        self._run(["doveadm", "-c", str(self.dovecot_conf), "reload"])
        # Both reloads are signals: wait until each master has re-read its tables.
        self._wait_log(self.postfix_log, "reload -- version", reloads + 1)
        self._wait_log(self.dovecot_log, "SIGHUP received", sighups + 1)

    # --- what tests use ---------------------------------------------------------------------

    def send(self, rcpt: str, *, sender: str = "", subject: str = "test",
             body: str = "hello\n") -> Sent:
        """One message over SMTP. After a 250, waits until Postfix has finished with it.

        The null sender `<>` is the default so no bounce is ever generated. The subject carries a
        unique token: `copies(token)` finds the message in every Maildir.
        """
        token = uuid.uuid4().hex
        msg = email.message.EmailMessage()
        msg["From"] = "tester@client.test"
        msg["To"] = rcpt
        msg["Subject"] = f"{subject} [{token}]"
        msg["Message-ID"] = f"<{token}@client.test>"
        msg.set_content(body)
        with smtplib.SMTP("127.0.0.1", self.ports.smtp, local_hostname="client.test",
                          timeout=_WAIT) as smtp:
            smtp.ehlo()
            code, reply = smtp.mail(sender)
            if code == 250:
                code, reply = smtp.rcpt(rcpt)
            if code != 250:
                return Sent(code, reply.decode(errors="replace"), token)
            code, reply = smtp.data(msg.as_bytes())
        text = reply.decode(errors="replace")
        found = re.search(r"queued as ([0-9A-Za-z]+)", text)
        if code != 250 or found is None:
            return Sent(code, text, token)
        queue_id = found.group(1)
        return Sent(code, text, token, queue_id, self._wait_done(queue_id))

    def maildir_messages(self, address: str) -> list[email.message.Message]:
        """Every message in the INBOX Maildir of `address` (new/ and cur/), oldest first."""
        local, _, domain = address.rpartition("@")
        maildir = self.mail_root / domain / local
        files = [p for sub in ("new", "cur") if (maildir / sub).is_dir()
                 for p in (maildir / sub).iterdir() if p.is_file()]
        files.sort(key=lambda p: p.stat().st_mtime_ns)
        return [email.message_from_bytes(p.read_bytes()) for p in files]

    def maildir(self, address: str) -> Path:
        local, _, domain = address.rpartition("@")
        return self.mail_root / domain / local

    def copies(self, token: str) -> Counter[str]:
        """address -> how many stored copies carry `token`, across every Maildir on disk and the
        local mail spool (where mail for local users such as root would land)."""
        found: Counter[str] = Counter()
        for path in self.mail_root.glob("*/*/*/*"):
            if path.parent.name in ("new", "cur") and path.is_file() and token in path.read_text(
                    errors="replace"):
                found[f"{path.parent.parent.name}@{path.parent.parent.parent.name}"] += 1
        for path in (self.root / "localmail").iterdir():
            if path.is_file() and token in path.read_text(errors="replace"):
                found[f"local:{path.name}"] += 1
        return found

    def imap_login(self, address: str, password: str) -> bool:
        """True if Dovecot accepts the login (and the INBOX opens), False if it refuses it.

        AUTHENTICATE PLAIN carries any password as UTF-8 bytes (LOGIN cannot: non-ASCII)."""
        credentials = b"\0" + address.encode() + b"\0" + password.encode()
        with imaplib.IMAP4("127.0.0.1", self.ports.imap, timeout=_WAIT) as imap:
            try:
                imap.authenticate("PLAIN", lambda _challenge: credentials)
            except imaplib.IMAP4.error as exc:
                if "AUTHENTICATIONFAILED" in str(exc):
                    return False
                raise
            status, _ = imap.select("INBOX")
            if status != "OK":
                raise MailStackError(f"login as {address} worked but INBOX did not open\n"
                                     + self.dovecot_log.read_text()[-3000:])
            imap.logout()
        return True

    def tables(self) -> dict[str, bytes]:
        """The generated server tables, for 'nothing changed' checks."""
        names = ["vhost", "vmailbox", "virtual", "aliases"]
        out = {name: (self.postfix_dir / name).read_bytes() for name in names}
        out["userdb"] = (self.dovecot_dir / "userdb").read_bytes()
        return out

    # --- table generation (DMS's start-up / change-detector conversion) ----------------------

    def _build_tables(self) -> None:
        config = self.volume.config
        accounts = []
        for line in _valid_lines(config / "postfix-accounts.cf"):
            login, _, rest = line.partition("|")  # IFS='|' read -r LOGIN PASS USER_ATTRIBUTES
            password, _, attrs = rest.partition("|")
            accounts.append((login, password, attrs))
        virtual_lines = _valid_lines(config / "postfix-virtual.cf")

        # _vhost_collect_postfix_domains: `cut -d @ -f2` of each login and of each alias key
        # whose two `cut` halves differ (bare `user` keys are skipped), then `sort | uniq`.
        domains = {_cut_at(login, 2) for login, _, _ in accounts}
        for line in virtual_lines:
            key = line.split()[0]
            if _cut_at(key, 1) != _cut_at(key, 2):
                domains.add(_cut_at(key, 2))

        userdb: list[str] = []
        vmailbox: list[str] = []
        for login, password, attrs in accounts:
            user, domain = _cut_at(login, 1), _cut_at(login, 2)
            home = self.mail_root / domain / user / "home"
            userdb_line = f"{login}:{password}:{VMAIL_UID}:{VMAIL_GID}::{home}::{attrs}"
            vmailbox_line = f"{login} {domain}/{user}/"
            for table, line in ((userdb, userdb_line), (vmailbox, vmailbox_line)):
                if line not in table:  # DMS: "will not be added ... twice"
                    table.append(line)
            home.mkdir(parents=True, exist_ok=True)
        for path in [self.mail_root, *self.mail_root.rglob("*")]:  # _chown_var_mail_if_necessary
            os.chown(path, VMAIL_UID, VMAIL_GID)

        pf = self.postfix_dir
        _write(pf / "vhost", "".join(f"{d}\n" for d in sorted(domains)))
        _write(pf / "vmailbox", "".join(f"{line}\n" for line in vmailbox))
        source = config / "postfix-virtual.cf"
        _write(pf / "virtual", source.read_text() if source.exists() else "")
        source = config / "postfix-regexp.cf"  # _handle_postfix_regexp_config: `: >`, then `cp`
        _write(pf / "regexp", source.read_text() if source.exists() else "")
        aliases_cf = config / "postfix-aliases.cf"
        _write(pf / "aliases", "postmaster: root\n"
               + (aliases_cf.read_text() if aliases_cf.exists() else ""))
        self._run(["postalias", "-c", str(pf), f"hash:{pf / 'aliases'}"])
        _backdate(pf / "aliases")
        _backdate(pf / "aliases.db")
        # Dovecot tracks the passwd-file by mtime and size: do not backdate it.
        _write(self.dovecot_dir / "userdb", "".join(f"{line}\n" for line in userdb), 0o640,
               backdate=False, group=_gid("dovecot"))

    # --- server configuration ---------------------------------------------------------------

    def _write_postfix_config(self) -> None:
        r, pf = self.root, self.postfix_dir
        main = f"""\
compatibility_level = 3.6
queue_directory = {r}/spool
data_directory = {r}/pfdata
maillog_file = {self.postfix_log}
maillog_file_prefixes = /var, /dev/stdout, {self.log_dir}
myhostname = {MYHOSTNAME}
mydomain = test.example
myorigin = $myhostname
# DMS's own value; the devnull recipe (`addr devnull` -> local alias) depends on it
mydestination = $myhostname, localhost.$mydomain, localhost
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = {pf}/vhost
virtual_mailbox_maps = texthash:{pf}/vmailbox
# DMS appends pcre:/etc/postfix/regexp (a copy of postfix-regexp.cf) when that file exists
virtual_alias_maps = texthash:{pf}/virtual, pcre:{pf}/regexp
alias_maps = hash:{pf}/aliases
alias_database = hash:{pf}/aliases
mail_spool_directory = {r}/localmail
virtual_transport = lmtp:inet:127.0.0.1:{self.ports.lmtp}
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = reject_unauth_destination
default_transport = error:outbound mail disabled in tests
relay_transport = error:outbound mail disabled in tests
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_error_sleep_time = 0
recipient_delimiter = +
"""
        # Debian's stock services, chroot off, plus our SMTP listener and postlogd.
        master = f"""\
127.0.0.1:{self.ports.smtp} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""
        _write(pf / "main.cf", main)
        _write(pf / "master.cf", master)

    def _write_dovecot_config(self) -> None:
        r, p = self.root, self.ports
        conf = f"""\
instance_name = dovecot-{p.imap}
base_dir = {r}/run
state_dir = {r}/state
log_path = {self.dovecot_log}
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# no 2-15 s penalty; Dovecot 2.3 still answers a failed login on its next 500 ms tick
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:{self.mail_root}/%d/%n
mail_privileged_group =
first_valid_uid = {VMAIL_UID}
first_valid_gid = {VMAIL_GID}
namespace inbox {{
  inbox = yes
  separator = .
}}
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT username_format=%u {self.dovecot_dir}/userdb
  # a failed login is otherwise answered on Dovecot's next 500 ms failure tick
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.dovecot_dir}/userdb
  default_fields = uid={VMAIL_UID} gid={VMAIL_GID} home={self.mail_root}/%d/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {p.imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {p.lmtp}
  }}
}}
"""
        _write(self.dovecot_conf, conf, backdate=False)

    # --- process and log plumbing -----------------------------------------------------------

    def _spawn(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        out = open(self.log_dir / f"{name}.stdout", "ab")  # noqa: SIM115 - lives with the process
        try:
            # Own session: stop() can always reach every process this server started.
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()

    def _run(self, argv: list[str], *, check: bool = True) -> None:
        """Run a helper command in its own session: `postfix reload` leaves a `postsuper` running
        in the background, which is reaped here later, never left a zombie."""
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._helper_sessions.add(proc.pid)
        out, _ = proc.communicate(timeout=60)
        _reap_sessions(self._helper_sessions, block=False)
        if check and proc.returncode != 0:
            raise MailStackError(f"{' '.join(argv)} failed ({proc.returncode}):\n{out}")

    def _wait_for_port(self, port: int, greeting: bytes, proc: subprocess.Popen[bytes],
                       log: Path) -> None:
        deadline = time.monotonic() + _WAIT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise MailStackError(f"{proc.args!r} exited with {proc.returncode}\n"
                                     + self._logs_tail(log))
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    if s.recv(200).startswith(greeting):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise MailStackError(f"nothing answered on 127.0.0.1:{port}\n" + self._logs_tail(log))

    def _logs_tail(self, log: Path) -> str:
        parts = []
        for path in (log, *sorted(self.log_dir.glob("*.stdout"))):
            if path.exists():
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    @staticmethod
    def _log_count(log: Path, text: str) -> int:
        return log.read_text(errors="replace").count(text) if log.exists() else 0

    def _wait_log(self, log: Path, text: str, count: int) -> None:
        deadline = time.monotonic() + _WAIT
        while self._log_count(log, text) < count:
            if time.monotonic() > deadline:
                raise MailStackError(f"waited for {text!r} in {log.name}\n" + self._logs_tail(log))
            time.sleep(0.005)

    def _wait_done(self, queue_id: str) -> tuple[Delivery, ...]:
        """Wait until the queue manager removed the message; return its delivery lines."""
        deadline = time.monotonic() + _WAIT
        pattern = re.compile(
            rf": {queue_id}: to=<([^>]*)>(?:, orig_to=<([^>]*)>)?, .*?status=(\w+) \((.*)\)$",
            re.MULTILINE)
        while True:
            log = self.postfix_log.read_text(errors="replace") if self.postfix_log.exists() else ""
            deliveries = tuple(Delivery(m[1], m[2], m[3], m[4]) for m in pattern.finditer(log))
            if f": {queue_id}: removed" in log:
                return deliveries
            if any(d.status == "deferred" for d in deliveries):
                raise MailStackError(f"message {queue_id} was deferred (a stack problem)\n"
                                     + self._logs_tail(self.postfix_log)
                                     + "\n" + self.dovecot_log.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                raise MailStackError(f"message {queue_id} still in the queue\n"
                                     + self._logs_tail(self.postfix_log))
            time.sleep(0.005)


def _set_subreaper(on: bool) -> None:
    """Make this process the reaper of orphans: Postfix's children outlive its master by a few
    milliseconds at stop, and in a container whose PID 1 does not reap they stay zombies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: orphans go to init, which reaps them


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id) of every process, zombies included."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:  # a process may exit between the listing and the read: ESRCH, ENOENT
            with open(f"/proc/{entry}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp sid
        table[int(text.split(" ", 1)[0])] = (int(fields[1]), int(fields[3]))
    return table


def _sessions_of(root_pid: int) -> set[int]:
    """The sessions of `root_pid` and all its descendants (Postfix's master makes its own)."""
    table = _processes()
    sessions, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        if pid in table:
            sessions.add(table[pid][1])
            todo += [child for child, (ppid, _) in table.items() if ppid == pid]
    return sessions


def _reap_sessions(sessions: set[int], server: subprocess.Popen[bytes] | None = None, *,
                   block: bool = True) -> None:
    """Reap every exited process of `sessions` (we are their subreaper). With `block`, wait until
    `server` and all of them are gone; after 10 s SIGKILL those sessions. Touches only processes
    this stack started: their sessions were created for them."""
    deadline = time.monotonic() + 10
    killed = False
    while True:
        members = {pid: ppid for pid, (ppid, sid) in _processes().items() if sid in sessions}
        for pid, ppid in members.items():
            if ppid == os.getpid() and (server is None or pid != server.pid):
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        if server is not None:
            server.poll()
        remaining = _members(sessions) - ({server.pid} if server is not None else set())
        if not block:
            sessions.intersection_update(_sessions_with_members(sessions))
            return
        if (server is None or server.returncode is not None) and not remaining:
            return
        if time.monotonic() > deadline:
            if killed:
                raise MailStackError(f"processes {sorted(remaining)} did not go away")
            for sid in sessions:
                try:
                    os.killpg(sid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            killed, deadline = True, time.monotonic() + 10
        time.sleep(0.01)


def _members(sessions: set[int]) -> set[int]:
    return {pid for pid, (_, sid) in _processes().items() if sid in sessions}


def _sessions_with_members(sessions: set[int]) -> set[int]:
    return {sid for _, (_, sid) in _processes().items() if sid in sessions}


def _uid(user: str) -> int:
    import pwd
    return pwd.getpwnam(user).pw_uid


def _gid(group: str) -> int:
    return grp.getgrnam(group).gr_gid


def start_stack() -> MailStack:
    """A running stack, or a test FAILURE naming what is missing (never a skip)."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"the end-to-end mail tests need {', '.join(missing)} on PATH: "
                    f"{INSTALL_HINT}", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the end-to-end mail tests must run as root (Postfix's master runs as root; "
                    "CI runs as root)", pytrace=False)
    stack = MailStack.create()
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="module")
def mail_stack() -> Iterator[MailStack]:
    """One real Postfix + Dovecot per test module; tests apply to `mail_stack.volume`, then
    call `rebuild()`."""
    stack = start_stack()
    try:
        yield stack
    finally:
        stack.stop()

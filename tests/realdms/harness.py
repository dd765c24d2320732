"""The real docker-mailserver (DMS v15.1.0 and v16) for the tests: images, engine, container, mail
helpers.

Everything here is the real thing: the image is DMS's own Dockerfile recipe rebuilt by
`../shared/dms-image/build.sh` (no registry is reachable), run in a private Docker engine whose
four network flags keep the host network untouched; every container runs with `--network none`
and is talked to with `docker exec` only. Nothing is skipped: a missing tool or a failed build
FAILS the test that needed it.

Reusable pieces (other test modules build on them):
- `RealEngine().start()`: the private engine at $DMS_IMAGE_WORK/docker (the one build.sh imports
  into, so the built image is cached in its data root).
- `build_dms_image()`, `build_python_base()`, `build_sidecar_image()`: cached image builds;
  `IMAGES`: the DMS versions every scenario runs against (test id -> `DmsImage`).
- `DmsVolume`: the host folders a DMS container mounts (config, cron file, mail, state, logs).
- `start_dms()` -> `RealDms`: a started DMS with `send()` (swaks inside the container),
  `messages()`/`wait_for_mail()` (its maildirs, read on the host), `imap_login()`,
  `checksums()`, `problems()` (WARN/ERROR lines of its logs) and `wait_amavis()`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.configvolume import Volume as ConfigVolume
from tests.dockerengine import COMPOSE_LABEL, DockerEngine
from tests.support.util import REPO

WORK = Path(os.environ.get("DMS_IMAGE_WORK", "/var/tmp/dms-image"))
DMS_IMAGE = "dms-local:15.1.0"
DMS_VERSION = "v15.1.0"


@dataclass(frozen=True)
class DmsImage:
    """One DMS version the real-DMS group runs against: the test id, `build.sh`'s argument, the
    local image it makes, and the major version (what differs is asked with `v16`)."""

    id: str
    build_arg: str
    image: str
    major: int

    @property
    def v16(self) -> bool:
        return self.major >= 16


# v16 is DMS master at the Debian 13 merge plus v16.0.1's routing fix (../shared/dms-image/README.md)
IMAGES = {
    "v15.1.0": DmsImage("v15.1.0", "15.1.0", DMS_IMAGE, 15),
    "v16": DmsImage("v16", "16-edge", "dms-local:16-edge", 16),
}
PYTHON_BASE_IMAGE = "dms-reconciler-python:3.11-bookworm-local"
SIDECAR_IMAGE = "dms-reconciler:local"
HOSTNAME = "mail.example.test"
SENDER = "tester@example.org"  # senders must be in a hosted domain: there is no DNS
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
HERE = Path(__file__).resolve().parent
# The settings `--network none` needs (../shared/dms-image/README.md), and the services we test.
BASE_ENV = {
    "OVERRIDE_HOSTNAME": HOSTNAME,
    "NETWORK_INTERFACE": "lo",  # else DMS panics: there is no eth0
    "PERMIT_DOCKER": "none",
    "ENABLE_AMAVIS": "1",
    "ENABLE_SPAMASSASSIN": "1",
    "ENABLE_CLAMAV": "0",  # no signatures can be fetched
    "ENABLE_RSPAMD": "0",
    "ENABLE_FAIL2BAN": "0",
    "ENABLE_POSTGREY": "0",
    "ENABLE_QUOTAS": "1",
    "SSL_TYPE": "",
    "LOG_LEVEL": "debug",
    "ENABLE_UPDATE_CHECK": "0",  # it would WARN "Update check failed": no network
    "DMS_CONFIG_POLL": "1",
}
SYSCTLS = {"net.ipv6.conf.lo.disable_ipv6": "0"}  # else Amavis crash-loops on ::1
# DMS's log levels as they appear in its logs (colour codes stripped).
PROBLEM = re.compile(r"\b(WARN|WARNING|ERROR|PANIC|FATAL)\b")
# Supervisor log lines caused by the host, not by DMS or our files: Redis (v16 starts its own for
# Rspamd) warns when the host kernel's vm.overcommit_memory is 0.
HOST_KERNEL = (re.compile(r"WARNING Memory overcommit must be enabled"),)
# DMS's change detector waiting for the lock dms-reconciler holds while it writes and fast-applies
# (about a second): DMS says so at WARN level, then finds the change applied. About the lock, not
# about our files (docs/sidecar-fast-apply.md); every real-DMS test allows it.
OUR_LOCK_HELD = re.compile(
    r"WARN .*Lock file '/tmp/docker-mailserver/check-for-changes\.sh\.lock' exists - another "
    r"execution of 'check-for-changes\.sh' is happening"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def dms_image_dir() -> Path:
    """../shared/dms-image beside the checkout (as CI lays it), or $DMS_IMAGE_DIR."""
    candidates = [os.environ.get("DMS_IMAGE_DIR", ""), str(REPO.parent / "shared" / "dms-image"),
                  "/work/shared/dms-image"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "build.sh").is_file():
            return Path(candidate)
    pytest.fail("the DMS image recipe (shared/dms-image/build.sh) is missing; looked in "
                + ", ".join(c for c in candidates if c), pytrace=False)


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- the engine and the images ------------------------------------------------------------------


class RealEngine(DockerEngine):
    """The private engine build.sh imports into ($DMS_IMAGE_WORK/docker, the paths dockerd.sh
    uses), so the DMS image is cached in its data root. Started here unless one already answers
    there (then it is left running); `stop()` only stops one started here."""

    def __init__(self) -> None:
        self.root = WORK / "docker"
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket = self.root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.proc = None
        self._log = None
        self.started_here = False
        self._lock: Any = None

    def start(self, timeout: float = 60.0) -> RealEngine:
        # One test session at a time uses this engine and its caches (other engineers, CI).
        self._lock = open(WORK / ".realdms.lock", "w")  # noqa: SIM115 - closed in stop()
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        if self.socket.exists() and self._ping():
            return self
        self.started_here = True
        super().start(timeout)
        return self

    def stop(self, *, remove_containers: bool = False) -> None:
        if self.started_here:
            super().stop(remove_containers=remove_containers)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _run_logged(argv: list[str], log: Path, env: dict[str, str], what: str,
                timeout: float) -> float:
    """Run a build step with its output in `log`; FAIL with the log's tail if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log, "wb") as out:
        try:
            code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = -1
    if code != 0:
        tail = log.read_text(errors="replace")[-4000:]
        pytest.fail(f"{what} failed (exit {code}, log {log}):\n{tail}", pytrace=False)
    return time.monotonic() - started


def build_dms_image(engine: RealEngine, version: str = "15.1.0") -> float:
    """DMS as a local image with `build.sh [version]`: v15.1.0 as `dms-local:15.1.0` (about 4 min
    cold, 0.1 s cached), `16-edge` as `dms-local:16-edge` (2-5 min cold, 0.2-0.4 s cached)."""
    recipe = dms_image_dir()
    for tool in ("debootstrap", "dockerd", "chroot"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: `bash .ci/run` installs it", pytrace=False)
    WORK.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recipe / "dockerd.sh", WORK / "dockerd.sh")  # build.sh calls $W/dockerd.sh
    (WORK / "dockerd.sh").chmod(0o755)
    env = {**os.environ, "DOCKER_HOST": engine.url, "DMS_IMAGE_WORK": str(WORK)}
    return _run_logged(["bash", str(recipe / "build.sh"), version],
                       WORK / "results" / f"build-{version}.log", env,
                       f"building the DMS image with build.sh {version}", 1500)


def build_python_base(engine: RealEngine) -> float:
    """A Python 3.11 bookworm image from build.sh's cached debootstrap rootfs (no registry)."""
    env = {**os.environ, "DOCKER_HOST": engine.url, "DMS_IMAGE_WORK": str(WORK)}
    return _run_logged(["bash", str(HERE / "build-python-base.sh"), PYTHON_BASE_IMAGE],
                       WORK / "results" / "python-base.log", env,
                       "building the Python base image", 900)


def build_sidecar_image(client: Any, tag: str = SIDECAR_IMAGE) -> float:
    """The project's own Dockerfile on the local Python base. The build runs with host
    networking so that its `pip install .` reaches the package index (the engine has no bridge);
    the image itself runs with `--network none`."""
    started = time.monotonic()
    try:
        client.images.build(path=str(REPO), tag=tag, rm=True, forcerm=True,
                            network_mode="host", buildargs={"PYTHON_IMAGE": PYTHON_BASE_IMAGE})
    except Exception as exc:  # BuildError carries the build log
        log = "".join(str(chunk.get("stream", chunk)) for chunk in getattr(exc, "build_log", []))
        pytest.fail(f"docker build of the sidecar image failed: {exc}\n{log[-4000:]}",
                    pytrace=False)
    return time.monotonic() - started


# --- a DMS container ----------------------------------------------------------------------------


@dataclass
class DmsVolume:
    """Host folders a DMS container mounts: the config volume, the sa-learn cron file (a single
    root-owned 0644 file, as DMS's FAQ mounts it), mail, logs and, if `state`, /var/mail-state."""

    root: Path
    state: bool = True

    def __post_init__(self) -> None:
        for folder in ("config", "cron", "mail", "logs", *(("state",) if self.state else ())):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        if not self.cron.exists():
            self.cron.touch()
        os.chown(self.cron, 0, 0)
        self.cron.chmod(0o644)

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def cron(self) -> Path:
        return self.root / "cron" / "sa-learn"

    @property
    def mail(self) -> Path:
        return self.root / "mail"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def value(self) -> ConfigVolume:
        """This volume as the reconciler's `Volume` value."""
        return ConfigVolume(str(self.config), str(self.cron))

    def args(self) -> list[str]:
        """The CLI's options for this volume."""
        return ["--config-dir", str(self.config), "--cron-file", str(self.cron)]

    def mounts(self) -> dict[str, dict[str, str]]:
        mounts = {
            str(self.config): {"bind": "/tmp/docker-mailserver", "mode": "rw"},
            str(self.cron): {"bind": "/etc/cron.d/sa-learn", "mode": "ro"},
            str(self.mail): {"bind": "/var/mail", "mode": "rw"},
            str(self.logs): {"bind": "/var/log/mail", "mode": "rw"},
        }
        if self.state:
            mounts[str(self.root / "state")] = {"bind": "/var/mail-state", "mode": "rw"}
        return mounts

    def sha512(self, name: str) -> str:
        return hashlib.sha512((self.config / name).read_bytes()).hexdigest()


@dataclass
class RealDms:
    """A running DMS container and what the tests ask of it."""

    container: Any
    volume: DmsVolume
    started: float = 0.0  # seconds from `docker run` to "is up and running"
    _log_marks: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.container.name)

    def exec(self, argv: list[str], *, env: dict[str, str] | None = None,
             user: str = "") -> tuple[int, str]:
        result = self.container.exec_run(argv, environment=env or {}, user=user)
        return result.exit_code, (result.output or b"").decode("utf-8", "replace")

    def sh(self, script: str, *, env: dict[str, str] | None = None, check: bool = True,
           user: str = "") -> str:
        code, out = self.exec(["bash", "-c", script], env=env, user=user)
        if check and code != 0:
            raise AssertionError(f"`{script}` failed in {self.name} (exit {code}):\n{out}")
        return out

    def reload(self) -> None:
        self.container.reload()

    # --- readiness ------------------------------------------------------------------------------

    def logs(self) -> str:
        return ANSI.sub("", self.container.logs().decode("utf-8", "replace"))

    def wait_up(self, timeout: float = 180.0) -> None:
        """Until DMS logs 'is up and running': its log is followed as a stream (read once, not
        the whole `docker logs` again at every look: megabytes at 10,000 accounts), and the
        container's state is looked at every second."""
        seen = threading.Event()

        def follow() -> None:
            tail = ""
            try:
                for chunk in self.container.logs(stream=True, follow=True):
                    tail = (tail + chunk.decode("utf-8", "replace"))[-200:]
                    if "is up and running" in ANSI.sub("", tail):
                        seen.set()
                        return
            except Exception:  # noqa: BLE001 - the container went away: the state check says so
                return

        reader = threading.Thread(target=follow, name="dms-log-follower", daemon=True)
        reader.start()

        def up() -> bool:
            if seen.is_set():
                return True
            self.reload()
            if self.container.status not in ("running", "created", "restarting"):
                status = self.container.status
                raise AssertionError(f"DMS exited ({status}):\n{self.logs()[-4000:]}")
            return seen.wait(1.0)

        try:
            wait_until(up, timeout, "DMS to log 'is up and running'", interval=0.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()[-4000:]}") from None

    def listening(self, port: int) -> bool:
        return self.exec(["nc", "-z", "127.0.0.1", str(port)])[0] == 0

    def wait_amavis(self, timeout: float = 180.0) -> None:
        """Amavis (port 10024) and Postfix (25) answer: mail can go through the content filter."""
        wait_until(lambda: self.listening(10024) and self.listening(25),
                   timeout, "Amavis on 10024 and Postfix on 25")

    def wait_postfix(self, timeout: float = 180.0) -> None:
        """Postfix answers on 25: DMS logs 'is up and running' before supervisord has always
        started it (seen on v16 after a restart)."""
        wait_until(lambda: self.listening(25), timeout, "Postfix on 25")

    # --- mail -----------------------------------------------------------------------------------

    def send(self, to: str, subject: str, body: str | None = None, sender: str = SENDER) -> str:
        """One message through Postfix on port 25 with swaks inside the container."""
        argv = ["swaks", "--server", "127.0.0.1", "--port", "25", "--from", sender, "--to", to,
                "--h-Subject", subject, "--silent", "2"]
        if body is not None:
            argv += ["--body", body]
        code, out = self.exec(argv)
        assert code == 0, f"swaks to {to} failed (exit {code}):\n{out}"
        return out

    def maildir(self, address: str) -> Path:
        user, domain = address.split("@")
        return self.volume.mail / domain / user

    def messages(self, address: str, folder: str = "") -> list[str]:
        """The texts of the messages in a mailbox's folder ('' the inbox, '.Junk', ...)."""
        base = self.maildir(address) / folder if folder else self.maildir(address)
        out = []
        for sub in ("new", "cur"):
            directory = base / sub
            if directory.is_dir():
                out += [p.read_text(errors="replace") for p in sorted(directory.iterdir())]
        return out

    def wait_for_mail(self, address: str, subject: str, folder: str = "",
                      timeout: float = 60.0) -> str:
        def found() -> str | None:
            for text in self.messages(address, folder):
                if f"Subject: {subject}" in text:
                    return text
            return None

        try:
            return str(wait_until(found, timeout, f"'{subject}' in {address}/{folder or 'INBOX'}"))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.mail_log()[-3000:]}") from None

    def mail_log(self) -> str:
        path = self.volume.logs / "mail.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 60.0, source: str = "mail") -> str:
        regex = re.compile(pattern)

        def found() -> str | None:
            text = self.mail_log() if source == "mail" else self.supervisor_logs()
            match = regex.search(text)
            return match.group(0) if match else None

        return str(wait_until(found, timeout, f"/{pattern}/ in the {source} log"))

    def imap_login(self, address: str, password: str) -> bool:
        """A real IMAP LOGIN to Dovecot on 127.0.0.1:143 (Python's imaplib in the container; the
        password goes in the exec's environment, never on a command line)."""
        script = ("import imaplib, os, sys\n"
                  "c = imaplib.IMAP4('127.0.0.1', 143)\n"
                  "try:\n    c.login(os.environ['U'], os.environ['P'])\n"
                  "except imaplib.IMAP4.error:\n    sys.exit(3)\n"
                  "c.select('INBOX'); c.logout()\n")
        code, out = self.exec(["python3", "-c", script], env={"U": address, "P": password})
        assert code in (0, 3), f"IMAP client failed (exit {code}):\n{out}"
        return code == 0

    # --- DMS's view -----------------------------------------------------------------------------

    def checksums(self) -> str:
        code, out = self.exec(["cat", "/tmp/docker-mailserver-config-chksum"])
        return out if code == 0 else ""

    def has_applied(self, *names: str) -> bool:
        """DMS's checksum file holds the sha512 the host's files have now."""
        recorded = self.checksums()
        return all(self.volume.sha512(n) in recorded for n in names)

    def supervisor_logs(self) -> str:
        return ANSI.sub("", self.sh("cat /var/log/supervisor/*.log", check=False))

    def mark(self) -> None:
        """Remember how far the logs go: `problems(since_mark=True)` reads only what follows."""
        self._log_marks = {"docker": len(self.logs()), "supervisor": len(self.supervisor_logs())}

    def problems(self, *, since_mark: bool = False,
                 allow: Iterable[str] = ()) -> list[str]:
        """WARN/ERROR/PANIC lines of `docker logs` and /var/log/supervisor/*.log, minus lines
        matching an `allow` pattern (each allowed pattern must say why where it is used)."""
        allowed = [re.compile(a) for a in allow] + [OUR_LOCK_HELD]
        texts = {"docker": self.logs(), "supervisor": self.supervisor_logs()}
        out = []
        for source, text in texts.items():
            if since_mark:
                text = text[self._log_marks.get(source, 0):]
            for line in text.splitlines():
                if source == "supervisor" and any(h.search(line) for h in HOST_KERNEL):
                    continue
                if PROBLEM.search(line) and not any(a.search(line) for a in allowed):
                    out.append(f"{source}: {line.strip()}")
        return out

    def bayes_nspam(self) -> int:
        """Spam messages learnt in the Bayes database Amavis reads: `sa-learn --dump magic` run
        as the amavis user (its home, /var/lib/amavis, holds the database Amavis opens). 0 while
        there is none, or Amavis cannot open it."""
        code, out = self.exec(["su", "amavis", "-s", "/bin/sh", "-c", "sa-learn --dump magic"])
        # "0.000          0          1          0  non-token data: nspam": the third column
        match = re.search(r"^\S+\s+\d+\s+(\d+)\s+\d+\s+non-token data: nspam$", out, re.M)
        return int(match.group(1)) if code == 0 and match else 0

    def cron_command(self, fragment: str) -> str:
        """The command part of the /etc/cron.d/sa-learn line containing `fragment` (what cron
        hands to /bin/sh)."""
        for line in self.sh("cat /etc/cron.d/sa-learn").splitlines():
            if fragment in line and not line.startswith("#"):
                fields = line.split()
                skip = 2 if fields[0].startswith("@") else 6  # schedule fields + the user
                return " ".join(fields[skip:])
        raise AssertionError(f"no line with {fragment!r} in /etc/cron.d/sa-learn")

    def amavis_starts(self) -> int:
        """How often Amavis (re)started: supervisord's spawns plus `amavisd reload`s, both of
        which make amavisd log its 'starting.' line."""
        return len(re.findall(r"amavis\[\d+\]: starting\.", self.mail_log()))

    def supervisor_restarts(self, program: str) -> int:
        return len(re.findall(rf"spawned: '{program}'", self.supervisor_logs()))

    def remove(self) -> None:
        try:
            self.container.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone is fine
            pass


def dms_settings(**extra: str) -> dict[str, str]:
    return {**BASE_ENV, **extra}


def start_dms(client: Any, volume: DmsVolume, *, name: str, env: dict[str, str] | None = None,
              labels: dict[str, str] | None = None, wait: bool = True,
              restart_policy: dict[str, Any] | None = None,
              image: str = DMS_IMAGE,
              extra_mounts: dict[str, dict[str, str]] | None = None) -> RealDms:
    """`docker run` DMS (`image`) on `volume` with the test settings plus `env`, wait until it
    is up: 180 s plus 60 ms per account of the volume (DMS's start-up regenerates every account:
    about 400 s at 10,000)."""
    try:
        client.containers.get(name).remove(force=True)
    except Exception:  # noqa: BLE001 - none left from an earlier run
        pass
    began = time.monotonic()
    container = client.containers.run(
        image, detach=True, name=name, hostname=HOSTNAME, network_mode="none",
        extra_hosts={HOSTNAME: "127.0.0.1"}, sysctls=SYSCTLS,
        environment=dms_settings(**(env or {})),
        volumes={**volume.mounts(), **(extra_mounts or {})}, labels=dict([COMPOSE_LABEL]) if labels is None else labels,
        restart_policy=restart_policy or {}, stop_signal="SIGTERM",
    )
    dms = RealDms(container, volume)
    if wait:
        try:
            dms.wait_up(start_timeout(volume))
        except BaseException:
            dms.remove()
            raise
        dms.started = time.monotonic() - began
    return dms


def start_timeout(volume: DmsVolume) -> float:
    """How long DMS's start-up may take on `volume`: it grows with the accounts it generates."""
    accounts = volume.config / "postfix-accounts.cf"
    count = accounts.read_bytes().count(b"\n") if accounts.exists() else 0
    return 180.0 + 0.06 * count


def temp_root(prefix: str) -> Path:
    """A folder for one DMS's volumes (not under pytest's tmp_path: it outlives a test)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))

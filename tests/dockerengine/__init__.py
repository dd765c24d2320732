"""A real, private Docker Engine for the tests, and a tiny image that behaves like DMS.

The engine is Debian's `dockerd` with its own data, exec root and socket, and the four network
flags that keep it from touching the host's bridge, iptables and ip_forward. Containers run with
`network_mode="none"`. There is no registry, so the stand-in for DMS is imported from a rootfs
tar: the static busybox, a change-detector loop that writes `/tmp/docker-mailserver-config-chksum`
the way DMS's `check-for-changes.sh` does (sha512sum lines, the lock held while "applying", the
file replaced only when done), and a `supervisorctl` script that logs its calls.

CI installs docker.io (`.ci/run`): if `dockerd` is missing, the fixtures FAIL, they never skip.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BUSYBOX = "/usr/bin/busybox"  # Debian's busybox-static
APPLETS = ("sh", "cat", "cp", "mv", "rm", "sleep", "sha512sum", "cmp", "echo", "date", "mkdir",
           "test", "[", "ls", "true", "env", "basename")
COMPOSE_LABEL = ("com.docker.compose.service", "mailserver")

CHANGE_DETECTOR = r"""#!/bin/sh
# Stands in for DMS's check-for-changes.sh: the same checksum file, written the same way, and the
# same lock held while it "applies" a change (FAKE_DMS_APPLY_SECONDS: DMS takes 23-41 ms an
# account). FAKE_DMS_START_SECONDS: DMS's start-up, before the checksum file is first written
# (setup-stack.sh's _setup_post). On SIGTERM it removes the lock if it holds it, as DMS's
# `trap _remove_lock EXIT` does.
DIR=/tmp/docker-mailserver
CHKSUM=/tmp/docker-mailserver-config-chksum
LOG=/var/log/changedetector.log
LOCK="$DIR/check-for-changes.sh.lock"
ME="fake-dms-$(cat /proc/sys/kernel/random/uuid 2>/dev/null || echo $$)"
sums() {
  set --
  for f in postfix-accounts.cf postfix-virtual.cf postfix-regexp.cf postfix-aliases.cf \
           postfix-relaymap.cf postfix-sasl-password.cf dovecot-quotas.cf dovecot-masters.cf; do
    [ -f "$DIR/$f" ] && set -- "$@" "$DIR/$f"
  done
  if [ $# -gt 0 ]; then sha512sum -- "$@"; fi
}
release() { [ "$(cat "$LOCK" 2>/dev/null)" = "$ME" ] && rm -f "$LOCK"; }
trap 'release; exit 0' TERM INT
sleep "${FAKE_DMS_START_SECONDS:-0}"
sums > "$CHKSUM"
echo ready > /tmp/fake-dms-ready
while true; do
  sums > "$CHKSUM.new"
  if ! cmp -s "$CHKSUM" "$CHKSUM.new"; then
    echo "change detected" >> "$LOG"
    # DMS's _create_lock: wait while another writer (dms-reconciler) holds the lock
    while [ -e "$LOCK" ]; do sleep 1; done
    echo "$ME" > "$LOCK"
    sleep "${FAKE_DMS_APPLY_SECONDS:-0}"
    release
    mv "$CHKSUM.new" "$CHKSUM"
    echo "completed handling of detected change" >> "$LOG"
  fi
  sleep "${DMS_CONFIG_POLL:-1}"
done
"""

SUPERVISORCTL_OK = """#!/bin/sh
echo "$*" >> /var/log/supervisorctl.calls
if [ "$1" = restart ]; then echo "$2: stopped"; echo "$2: started"; fi
exit 0
"""
# A wrapper whose real program is missing: the shell reports "not found", exit 127.
SUPERVISORCTL_127 = """#!/bin/sh
exec /usr/lib/supervisor/missing-supervisorctl "$@"
"""
# Put before busybox's applets on PATH: logs the argument list and the environment of every
# `docker exec` of `cat` or `cp` (what the sidecar runs), then runs the real applet.
EXEC_LOGGER = """#!/bin/sh
{ printf '%s' "$(basename "$0")"; for a in "$@"; do printf ' [%s]' "$a"; done; echo; } \\
    >> /var/log/exec-argv.log
env >> /var/log/exec-env.log
exec /bin/busybox "$(basename "$0")" "$@"
"""
SUPERVISORCTL_FAILS = """#!/bin/sh
echo "$*" >> /var/log/supervisorctl.calls
echo "$2: ERROR (no such process)"
exit 1
"""


class DockerEngine:
    """One private dockerd; `start()` returns once it answers /_ping."""

    def __init__(self) -> None:
        # short paths: unix socket paths are limited to 107 bytes
        self.root = Path(tempfile.mkdtemp(prefix="dke-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self, timeout: float = 30.0) -> DockerEngine:
        """Start dockerd (again, after `stop`: the same data, so containers with a restart
        policy come back, as after a host's engine restart)."""
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            pytest.fail("dockerd is not installed: install docker.io (`.ci/run` does); the "
                        "Docker tests need a real engine", pytrace=False)
        if os.geteuid() != 0:
            pytest.fail("the Docker tests start a private dockerd and need root", pytrace=False)
        if self._log is None or self._log.closed:
            self._log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [dockerd, "--data-root", str(self.root / "data"),
             "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.root / "dockerd.pid"), "-H", self.url,
             "--iptables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"dockerd exited ({self.proc.returncode}):\n{self.log_tail()}",
                            pytrace=False)
            if self.socket.exists() and self._ping():
                return self
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"dockerd did not answer within {timeout} s:\n{self.log_tail()}", pytrace=False)

    def _ping(self) -> bool:
        import socket

        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(str(self.socket))
                sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return b"OK" in sock.recv(4096)
        except OSError:
            return False

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.url, timeout=60)

    def log_tail(self) -> str:
        try:
            return (self.root / "dockerd.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, *, remove_containers: bool = True) -> None:
        """Remove every container (unless told not to: a test that starts the engine again),
        then SIGTERM dockerd and wait for it (and its containerd)."""
        if self.running and remove_containers:
            try:
                client = self.client()
                for container in client.containers.list(all=True):
                    container.remove(force=True)
                client.close()
            except Exception:  # noqa: BLE001 - stopping must go on whatever the engine says
                pass
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()

    def cleanup(self) -> None:
        self.stop()
        with open("/proc/mounts") as mounts:
            if str(self.root) in mounts.read():
                return  # never rm -rf through a mount that is still there
        shutil.rmtree(self.root, ignore_errors=True)


def fake_dms_rootfs(supervisorctl: str | None, *, log_exec: bool = False) -> bytes:
    """A tar of the stand-in's root file system. `supervisorctl`: the script, or None for none.
    `log_exec`: `cat` and `cp` log their argument lists and environment (`EXEC_LOGGER`)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for folder in ("bin", "usr", "usr/bin", "usr/local", "usr/local/bin", "etc", "etc/amavis",
                       "etc/amavis/conf.d", "tmp", "tmp/docker-mailserver", "var", "var/log"):
            add_dir(folder)
        add_file("bin/busybox", Path(BUSYBOX).read_bytes())
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        add_file("usr/local/bin/check-for-changes.sh", CHANGE_DETECTOR.encode())
        add_file("etc/amavis/conf.d/50-user", b"1;\n", 0o644)
        if supervisorctl is not None:
            add_file("usr/bin/supervisorctl", supervisorctl.encode())
        if log_exec:
            for applet in ("cat", "cp"):
                add_file(f"usr/local/bin/{applet}", EXEC_LOGGER.encode())
    return out.getvalue()


def import_fake_dms(client: Any, tag: str, supervisorctl: str | None = SUPERVISORCTL_OK, *,
                    log_exec: bool = False) -> str:
    """`docker import` the stand-in as `fake-dms:<tag>`; returns the image reference."""
    if not Path(BUSYBOX).exists():
        pytest.fail(f"{BUSYBOX} is missing: install busybox-static (`.ci/run` does)", pytrace=False)
    client.api.import_image_from_data(
        fake_dms_rootfs(supervisorctl, log_exec=log_exec), repository="fake-dms", tag=tag,
        changes=['CMD ["/bin/sh", "/usr/local/bin/check-for-changes.sh"]',
                 'ENV PATH=/usr/local/bin:/usr/bin:/bin'],
    )
    return f"fake-dms:{tag}"


def run_fake_dms(client: Any, image: str, config_dir: Path, *, name: str | None = None,
                 labels: dict[str, str] | None = None, environment: dict[str, str] | None = None,
                 command: list[str] | None = None, wait: bool = True,
                 restart_policy: dict[str, Any] | None = None) -> Any:
    """Start the stand-in with the config volume mounted where DMS has it."""
    container = client.containers.run(
        image, command, detach=True, network_mode="none", name=name,
        restart_policy=restart_policy or {},
        labels=dict([COMPOSE_LABEL]) if labels is None else labels,
        environment=environment or {},
        volumes={str(config_dir): {"bind": "/tmp/docker-mailserver", "mode": "rw"}},
    )
    if wait:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            code, _ = container.exec_run(["cat", "/tmp/fake-dms-ready"])
            if code == 0:
                return container
            time.sleep(0.05)
        pytest.fail(f"the fake DMS container did not start: {container.logs()!r}", pytrace=False)
    return container


@pytest.fixture(scope="module")
def docker_engine() -> Iterator[DockerEngine]:
    engine = DockerEngine().start()
    try:
        yield engine
    finally:
        engine.cleanup()


@pytest.fixture(scope="module")
def docker_client(docker_engine: DockerEngine) -> Iterator[Any]:
    client = docker_engine.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def fake_dms_images(docker_client: Any) -> dict[str, str]:
    """The stand-in in four flavours of supervisorctl: ok, missing (126), 127, failing."""
    return {
        "ok": import_fake_dms(docker_client, "ok"),
        "missing": import_fake_dms(docker_client, "no-supervisorctl", None),
        "127": import_fake_dms(docker_client, "supervisorctl-127", SUPERVISORCTL_127),
        "fails": import_fake_dms(docker_client, "supervisorctl-fails", SUPERVISORCTL_FAILS),
    }


@pytest.fixture
def containers(docker_client: Any) -> Iterator[list[Any]]:
    """Containers a test started (append them); removed after the test, whatever happened."""
    started: list[Any] = []
    yield started
    for container in started:
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone is fine
            pass

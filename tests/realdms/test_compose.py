"""examples/compose.yaml run for real: DMS (each image of the matrix) and the sidecar image built
from this repository's Dockerfile, started by docker-compose from the file users copy, then DMS restarted in
the middle of a change and its container recreated.

The example is used as shipped except for what this machine cannot do, each changed in
`example_for_this_machine()` with its reason: no registry (DMS is build.sh's local image of the
version under test, `dms-local:15.1.0` or `dms-local:16-edge`,
the sidecar is built from the Dockerfile on a locally made Python base), no network (`network_mode:
none`, so no published ports, and the three settings ../shared/dms-image/README.md names), and the
private engine's socket in place of /var/run/docker.sock. The folders are made by the commands
the file's own header tells users to run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.realdms import harness
from tests.realdms.harness import DmsVolume, RealDms, RealEngine, wait_until
from tests.support.util import REPO, sha512_hash
from tests.support.watch_process import save_atomically

pytestmark = pytest.mark.realdms

EXAMPLE = REPO / "examples" / "compose.yaml"
PROJECT = "realdmscompose"
ADMIN_PASSWORD = "compose-admin-pw"
SENDER = "tester@example.test"  # senders must be in a hosted domain: there is no DNS
DESIRED = f"""\
version: 1
hostname: {harness.HOSTNAME}
domains: [example.test]
accounts:
  admin@example.test: {{password_hash: "{sha512_hash(ADMIN_PASSWORD, "composesalt")}"}}
aliases:
  postmaster@example.test: admin@example.test
"""
ALLOWED = (
    # the tests run DMS without TLS (SSL_TYPE empty): DMS says so at every start
    r"!! INSECURE !! SSL configured with plain text access",
    # the first `up` on empty folders: DMS may look for accounts before the sidecar (started
    # right after it; depends_on orders starts only) has written them, and then waits for them
    r"WARN .*You need at least one mail account to start Dovecot",
)


class ExampleLayout(DmsVolume):
    """The host folders examples/compose.yaml mounts (./docker-data/dms/...), made by the
    commands in its header rather than by DmsVolume."""

    def __post_init__(self) -> None:
        pass

    @property
    def mail(self) -> Path:
        return self.root / "mail-data"

    @property
    def logs(self) -> Path:
        return self.root / "mail-logs"


# What users write for DMS v16 (the example's version; the matrix also runs it on v15.1.0).
EXAMPLE_IMAGES = ("ghcr.io/docker-mailserver/docker-mailserver:16",
                  "ghcr.io/docker-mailserver/docker-mailserver:latest")


def example_for_this_machine(engine: RealEngine, image: harness.DmsImage) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    mail = doc["services"]["mailserver"]
    assert mail["image"] in EXAMPLE_IMAGES, mail["image"]
    mail["image"] = image.image  # no registry: the version under test, built by build.sh
    mail.pop("ports")  # no network here: nothing can be published
    mail["network_mode"] = "none"
    mail["hostname"] = harness.HOSTNAME
    mail["extra_hosts"] = [f"{harness.HOSTNAME}:127.0.0.1"]
    mail["sysctls"] = harness.SYSCTLS
    # the example's own settings win; the rest are what `--network none` and the tests need
    mail["environment"] = {**harness.BASE_ENV, **mail["environment"]}
    # Debian's docker-compose 1.29 predates the compose spec's `bind.create_host_path` (Compose
    # v2 knows it); the header's commands have made the cron file, so it changes nothing here
    cron = [v for v in mail["volumes"]
            if isinstance(v, dict) and v["target"] == "/etc/cron.d/sa-learn"]
    assert cron and cron[0].pop("bind") == {"create_host_path": False}
    side = doc["services"]["reconciler"]
    assert side["image"] == harness.SIDECAR_IMAGE
    side["build"] = {"context": str(REPO), "network": "host",
                     "args": {"PYTHON_IMAGE": harness.PYTHON_BASE_IMAGE}}
    side["network_mode"] = "none"
    side.pop("expose")  # no network to expose on; /healthz is asked with `docker exec`
    sockets = [v for v in side["volumes"] if v == "/var/run/docker.sock:/var/run/docker.sock"]
    assert sockets, side["volumes"]
    side["volumes"] = [f"{engine.socket}:/var/run/docker.sock" if v in sockets else v
                       for v in side["volumes"]]
    return doc


def header_commands() -> list[str]:
    """The commands under "Before the first `docker compose up -d`:" in the example's header."""
    lines = EXAMPLE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Before the first"))
    out = []
    for line in lines[start + 1:]:
        if not line.startswith("#   "):
            break
        out.append(line[4:])
    assert out and any("install" in c for c in out), out
    return out


@dataclass
class ComposeProject:
    root: Path
    file: Path
    env: dict[str, str]
    client: Any
    layout: ExampleLayout

    def compose(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(["docker-compose", "-p", PROJECT, "-f", str(self.file), *args],
                              cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"docker-compose {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    def container(self, service: str) -> Any:
        found = self.client.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={PROJECT}", f"com.docker.compose.service={service}"]})
        assert len(found) == 1, [c.name for c in found]
        return found[0]

    def dms(self) -> RealDms:
        return RealDms(self.container("mailserver"), self.layout)

    def sidecar_records(self) -> list[dict[str, Any]]:
        text = self.container("reconciler").logs().decode("utf-8", "replace")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_sidecar(self, dms_state: str, after: int, timeout: float = 120.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((r for r in self.sidecar_records()[after:] if r.get("dms") == dms_state),
                        None)

        try:
            return wait_until(found, timeout, f"the sidecar to report dms={dms_state}")  # type: ignore[no-any-return]
        except AssertionError as exc:
            tail = "\n".join(json.dumps(r) for r in self.sidecar_records()[-30:])
            raise AssertionError(f"{exc}; sidecar log:\n{tail}") from None

    def edit(self, old: str, new: str) -> None:
        path = self.root / "gitops" / "mailserver.yaml"
        text = path.read_text()
        assert old in text
        save_atomically(path, text.replace(old, new, 1))

    def assert_no_problems(self, dms: RealDms, *, since_mark: bool = True) -> None:
        problems = dms.problems(since_mark=since_mark, allow=ALLOWED)
        assert problems == [], "DMS logged warnings or errors:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def project(realdms_root: Path, real_engine: RealEngine, real_client: Any,
            dms_image: harness.DmsImage,
            sidecar_image: str, realdms_timings: dict[str, float]) -> Iterator[ComposeProject]:
    root = realdms_root / "compose"
    root.mkdir()
    for command in header_commands():
        subprocess.run(["bash", "-ec", command], cwd=root, check=True)
    (root / "gitops").mkdir()
    (root / "gitops" / "mailserver.yaml").write_text(DESIRED)
    file = root / "compose.yaml"
    file.write_text(yaml.safe_dump(example_for_this_machine(real_engine, dms_image), sort_keys=False))
    env = {**os.environ, "DOCKER_HOST": real_engine.url}
    env.pop("DOCKER_CONTEXT", None)
    project = ComposeProject(root, file, env, real_client,
                             ExampleLayout(root / "docker-data" / "dms"))
    started = time.monotonic()
    try:
        project.compose("up", "-d", "--no-build")  # the image the sidecar fixture just built
        dms = project.dms()
        dms.wait_up()
        project.wait_sidecar("confirmed", 0)
        realdms_timings.setdefault(f"compose up -> sidecar confirmed ({dms_image.id})",
                                   time.monotonic() - started)
        yield project
    finally:
        subprocess.run(["docker-compose", "-p", PROJECT, "-f", str(file), "down", "-t", "20"],
                       cwd=root, env=env, capture_output=True, timeout=300)


def test_the_example_runs_dms_and_the_sidecar(project: ComposeProject) -> None:
    dms = project.dms()
    dms.wait_amavis()
    assert dms.has_applied("postfix-accounts.cf", "postfix-virtual.cf")
    dms.send("postmaster@example.test", "compose-alias", sender=SENDER)
    dms.wait_for_mail("admin@example.test", "compose-alias")
    assert dms.imap_login("admin@example.test", ADMIN_PASSWORD)
    code, out = project.container("reconciler").exec_run(
        ["python", "-c", "import urllib.request; print(urllib.request.urlopen("
         "'http://127.0.0.1:9000/healthz', timeout=4).read().decode())"])
    assert code == 0, out
    assert json.loads(out)["dms"]["state"] == "confirmed"
    project.assert_no_problems(dms, since_mark=False)


def test_dms_restarted_in_the_middle_of_a_change(project: ComposeProject) -> None:
    """The change written while DMS has not applied it yet (its change detector held with
    supervisorctl, so the moment is certain), then `docker restart`: the sidecar, waiting for
    DMS, ends in a confirmation from the restarted DMS. DMS's own path is what this is about, so
    one of DMS's generators is marked changed: the sidecar's fast apply then leaves the change to
    DMS, as it does for any DMS it was not proven against (tests/realdms/test_fast_apply.py)."""
    dms = project.dms()
    dms.sh("cp -a /usr/local/bin/helpers/accounts.sh /tmp/accounts.sh.orig && "
           "echo '# a changed generator' >> /usr/local/bin/helpers/accounts.sh")
    try:
        _restarted_mid_change(project, dms)
    finally:
        dms.sh("cp -a /tmp/accounts.sh.orig /usr/local/bin/helpers/accounts.sh")


def _restarted_mid_change(project: ComposeProject, dms: Any) -> None:
    dms.sh("supervisorctl stop changedetector")
    after = len(project.sidecar_records())
    project.edit("  postmaster@example.test: admin@example.test\n",
                 "  postmaster@example.test: admin@example.test\n"
                 "  restarted@example.test: admin@example.test\n")
    project.wait_sidecar("waiting", after, timeout=30)
    assert not dms.has_applied("postfix-virtual.cf")
    assert not any(r.get("dms") == "confirmed" for r in project.sidecar_records()[after:])
    ups = dms.logs().count("is up and running")
    dms.container.restart(timeout=20)
    wait_until(lambda: dms.logs().count("is up and running") > ups, 180, "DMS up again")
    project.wait_sidecar("confirmed", after)
    assert dms.has_applied("postfix-virtual.cf")
    dms.wait_amavis()
    dms.send("restarted@example.test", "after-restart", sender=SENDER)
    dms.wait_for_mail("admin@example.test", "after-restart")


def test_dms_container_recreated_is_found_again(project: ComposeProject) -> None:
    """`docker-compose up -d --force-recreate mailserver` (a new container id), with a change
    made while the old one is gone: the sidecar says it could not confirm, finds the new
    container by its compose label and confirms."""
    old = project.container("mailserver").id
    project.compose("stop", "-t", "20", "mailserver")
    after = len(project.sidecar_records())
    project.edit("  postmaster@example.test: admin@example.test\n",
                 "  postmaster@example.test: admin@example.test\n"
                 "  recreated@example.test: admin@example.test\n")
    record = project.wait_sidecar("unconfirmed", after, timeout=60)
    assert re.search(r"no running container|not running|could not", record["message"]), record
    back = len(project.sidecar_records())
    project.compose("up", "-d", "--no-build", "--force-recreate", "mailserver")
    dms = project.dms()
    assert dms.container.id != old
    dms.wait_up()
    project.wait_sidecar("confirmed", back)
    assert dms.has_applied("postfix-virtual.cf")
    dms.wait_amavis()
    dms.send("recreated@example.test", "after-recreate", sender=SENDER)
    dms.wait_for_mail("admin@example.test", "after-recreate")
    project.assert_no_problems(dms, since_mark=False)

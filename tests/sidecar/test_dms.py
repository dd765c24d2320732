"""dms.Dms against a real private Docker Engine and a stand-in DMS container: the container is
found, the confirmation is read from its checksum file, Amavis is reloaded, and every failure
(missing container, exit codes 126/127, a stopped container, a stopped engine, no socket) is a
clear report, never an exception for the caller."""

# ruff: noqa: F811 - the engine fixtures are imported from tests.dockerengine
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.watch import dms as dms_mod
from reconciler.watch.dms import Dms, DmsUnavailable
from tests.dockerengine import (  # noqa: F401 - pytest fixtures
    DockerEngine,
    containers,
    docker_client,
    docker_engine,
    fake_dms_images,
    import_fake_dms,
    run_fake_dms,
)
from tests.support.watch_process import wait_until

pytestmark = pytest.mark.docker


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "postfix-accounts.cf").write_text("admin@example.com|{SHA512-CRYPT}$6$x$y\n")
    return folder


def dms_for(engine: DockerEngine, **kwargs: Any) -> Dms:
    return Dms(environ={"DOCKER_HOST": engine.url}, **kwargs)


def exec_text(container: Any, *argv: str) -> str:
    code, output = container.exec_run(list(argv))
    assert code == 0, output
    return output.decode()


def test_finds_the_container_by_compose_label_and_by_name(
        docker_engine: DockerEngine, docker_client: Any, fake_dms_images: dict[str, str],
        config_dir: Path, containers: list[Any]) -> None:
    containers.append(other := run_fake_dms(docker_client, fake_dms_images["ok"], config_dir,
                                         labels={"com.docker.compose.service": "webmail"},
                                         wait=False))
    containers.append(container := run_fake_dms(docker_client, fake_dms_images["ok"], config_dir,
                                             name="my-mailserver"))
    assert dms_for(docker_engine).find().id == container.id
    assert dms_for(docker_engine, container="my-mailserver").find().id == container.id
    custom = dms_for(docker_engine, label="com.docker.compose.service=webmail")
    assert custom.find().id == other.id


def test_missing_stopped_and_ambiguous_containers_are_clear_reports(
        docker_engine: DockerEngine, docker_client: Any, fake_dms_images: dict[str, str],
        config_dir: Path, containers: list[Any]) -> None:
    with pytest.raises(DmsUnavailable, match="there is no container 'nosuch'"):
        dms_for(docker_engine, container="nosuch").find()
    with pytest.raises(DmsUnavailable, match="no running container has the label "
                                             "com.docker.compose.service=mailserver"):
        dms_for(docker_engine).find()
    unknown = {"postfix-accounts.cf": "0" * 128}
    report = dms_for(docker_engine).check_applied(unknown, lambda n: None)
    assert report.state == "unconfirmed" and "could not confirm" in report.message

    containers.append(first := run_fake_dms(docker_client, fake_dms_images["ok"], config_dir,
                                         name="dms-a"))
    containers.append(run_fake_dms(docker_client, fake_dms_images["ok"], config_dir, name="dms-b"))
    with pytest.raises(DmsUnavailable, match=r"2 running containers .*dms-a, dms-b.*--container"):
        dms_for(docker_engine).find()
    first.stop(timeout=0)
    with pytest.raises(DmsUnavailable, match="container 'dms-a' is exited, not running"):
        dms_for(docker_engine, container="dms-a").find()
    assert dms_for(docker_engine).find().name == "dms-b"  # the stopped one no longer counts


def test_confirmation_is_read_from_the_change_detectors_checksum_file(
        docker_engine: DockerEngine, docker_client: Any, fake_dms_images: dict[str, str],
        config_dir: Path, containers: list[Any]) -> None:
    containers.append(run_fake_dms(docker_client, fake_dms_images["ok"], config_dir,
                                environment={"FAKE_DMS_APPLY_SECONDS": "2"}))
    link = dms_for(docker_engine)
    accounts = config_dir / "postfix-accounts.cf"
    quotas = config_dir / "dovecot-quotas.cf"
    accounts.write_text("admin@example.com|{SHA512-CRYPT}$6$new$hash\n")
    quotas.write_text("admin@example.com:1G\n")
    expected = {name: hashlib.sha512((config_dir / name).read_bytes()).hexdigest()
                for name in ("postfix-accounts.cf", "dovecot-quotas.cf")}
    current = lambda name: dms_mod.file_sha512(str(config_dir / name))  # noqa: E731
    first = link.check_applied(expected, current)
    assert first.state == "waiting"  # DMS polls every second and then "applies" for 2 s
    started = time.monotonic()
    wait_until(lambda: link.check_applied(expected, current).state == "confirmed", 20,
               "the confirmation")
    assert time.monotonic() - started >= 1.0  # it waited for the detector, not just the write
    recorded, note = link.applied_checksums()
    assert recorded == expected and note == ""


def test_amavis_cf_is_installed_and_amavis_restarted(
        docker_engine: DockerEngine, docker_client: Any, fake_dms_images: dict[str, str],
        config_dir: Path, containers: list[Any]) -> None:
    containers.append(container := run_fake_dms(docker_client, fake_dms_images["ok"], config_dir))
    text = '$spam_quarantine_to = "admin\\@example.com";\n1;\n'
    (config_dir / "amavis.cf").write_text(text)
    report = dms_for(docker_engine).reload_amavis()
    assert report.ok and report.state == "ok", report.message
    assert exec_text(container, "cat", "/etc/amavis/conf.d/50-user") == text
    assert exec_text(container, "cat", "/var/log/supervisorctl.calls") == "restart amavis\n"


@pytest.mark.parametrize("dms_state", ["not yet handled", "handling", "handled"])
def test_amavis_restart_is_left_to_dms_only_while_dms_has_not_started_on_the_virtual_change(
        docker_engine: DockerEngine, docker_client: Any, fake_dms_images: dict[str, str],
        config_dir: Path, containers: list[Any], dms_state: str) -> None:
    """amavis.cf written with postfix-virtual.cf: DMS's change detector will `amavisd reload`,
    which reads the new 50-user, only if it has not started on that change when the copy is made.
    Handling it (its lock) or done with it (recorded): the sidecar restarts Amavis itself."""
    poll = {"not yet handled": "60", "handling": "1", "handled": "1"}[dms_state]
    containers.append(container := run_fake_dms(
        docker_client, fake_dms_images["ok"], config_dir,
        environment={"DMS_CONFIG_POLL": poll, "FAKE_DMS_APPLY_SECONDS": "10"
                     if dms_state == "handling" else "0"}))
    (config_dir / "postfix-virtual.cf").write_text("info@example.com admin@example.com\n")
    (config_dir / "amavis.cf").write_text("1;\n")
    sha = hashlib.sha512((config_dir / "postfix-virtual.cf").read_bytes()).hexdigest()
    link = dms_for(docker_engine)
    if dms_state == "handling":
        wait_until(lambda: (config_dir / dms_mod.LOCK_NAME).exists(), 10, "DMS applying")
    if dms_state == "handled":
        wait_until(lambda: link.check_applied({"postfix-virtual.cf": sha}, lambda _: None).state
                   == "confirmed", 10, "DMS's record")
    report = link.reload_amavis({"postfix-virtual.cf": sha})
    assert report.state == "ok", report.message
    assert exec_text(container, "cat", "/etc/amavis/conf.d/50-user") == "1;\n"
    code, calls = container.exec_run(["cat", "/var/log/supervisorctl.calls"])
    if dms_state == "not yet handled":
        assert code != 0 and "DMS's change detector reloads Amavis" in report.message
    else:
        assert calls == b"restart amavis\n" and "restarted Amavis" in report.message


@pytest.mark.parametrize("flavour,code,words", [
    ("missing", 126, "cannot be run"),
    ("127", 127, "was not found"),
    ("fails", 1, "ERROR (no such process)"),
])
def test_a_failing_supervisorctl_is_a_clear_report(
        docker_engine: DockerEngine, docker_client: Any, fake_dms_images: dict[str, str],
        config_dir: Path, containers: list[Any], flavour: str, code: int, words: str) -> None:
    containers.append(run_fake_dms(docker_client, fake_dms_images[flavour], config_dir))
    (config_dir / "amavis.cf").write_text("1;\n")
    report = dms_for(docker_engine).reload_amavis()
    assert report.state == "failed"
    assert f"exit {code}" in report.message and words in report.message
    assert "supervisorctl" in report.message


def test_amavis_disabled_in_dms_is_skipped(
        docker_engine: DockerEngine, docker_client: Any, fake_dms_images: dict[str, str],
        config_dir: Path, containers: list[Any]) -> None:
    containers.append(container := run_fake_dms(docker_client, fake_dms_images["ok"], config_dir,
                                             environment={"ENABLE_AMAVIS": "0"}))
    report = dms_for(docker_engine).reload_amavis()
    assert report.state == "skipped" and "ENABLE_AMAVIS=0" in report.message
    code, _ = container.exec_run(["cat", "/var/log/supervisorctl.calls"])
    assert code != 0  # supervisorctl never ran


def test_missing_checksum_file_means_waiting_not_confirmed(
        docker_engine: DockerEngine, docker_client: Any, fake_dms_images: dict[str, str],
        config_dir: Path, containers: list[Any]) -> None:
    # DMS before its start-up finished: no change detector, no checksum file yet
    containers.append(run_fake_dms(docker_client, fake_dms_images["ok"], config_dir,
                                command=["/bin/sleep", "600"], wait=False))
    recorded, note = dms_for(docker_engine).applied_checksums()
    assert recorded is None and "does not exist yet" in note
    report = dms_for(docker_engine).check_applied({"postfix-virtual.cf": "f" * 128}, lambda n: None)
    assert report.state == "waiting"


def test_no_socket_and_a_stopped_engine_are_clear_reports(tmp_path: Path) -> None:
    missing = Dms(environ={"DOCKER_HOST": f"unix://{tmp_path}/nothing.sock"})
    with pytest.raises(DmsUnavailable, match="no Docker socket at .*nothing.sock"):
        missing.find()
    assert "no Docker socket" in missing.reload_amavis().message

    engine = DockerEngine().start()
    try:
        link = Dms(environ={"DOCKER_HOST": engine.url})
        with pytest.raises(DmsUnavailable, match="no running container"):
            link.find()  # connected: the client is now cached
        engine.stop()
        with pytest.raises(DmsUnavailable, match="(cannot reach|no Docker socket)"):
            link.find()
        report = link.check_applied({"postfix-accounts.cf": "0" * 128}, lambda n: None)
        assert report.state == "unconfirmed"
        assert "could not confirm" in report.message
        assert link.reload_amavis().state == "unconfirmed"
    finally:
        engine.cleanup()


def test_engine_stopped_while_a_container_is_held(
        docker_client: Any, config_dir: Path) -> None:
    engine = DockerEngine().start()
    try:
        client = engine.client()
        image = import_fake_dms(client, "own")
        run_fake_dms(client, image, config_dir)
        client.close()
        link = Dms(environ={"DOCKER_HOST": engine.url})
        container = link.find()
        engine.stop()
        with pytest.raises(DmsUnavailable, match="lost the Docker engine"):
            link.run(container, ["cat", dms_mod.CHKSUM_FILE])
    finally:
        engine.cleanup()

"""The real watch process with a real private Docker Engine and a stand-in DMS container: it
confirms each write from DMS's checksum file, reloads Amavis when amavis.cf changed, holds changes
back while DMS is still applying and writes them together afterwards, and keeps applying (saying
it could not confirm) when the container is gone or the engine stopped."""

# ruff: noqa: F811 - the engine fixtures are imported from tests.dockerengine
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.dockerengine import (  # noqa: F401 - pytest fixtures
    DockerEngine,
    containers,
    docker_client,
    docker_engine,
    fake_dms_images,
    import_fake_dms,
    run_fake_dms,
)
from tests.support.util import Volume
from tests.support.watch_process import (
    ADMIN_HASH,
    WatchProcess,
    postmaster_target,
    save_atomically,
    wait_until,
)

pytestmark = pytest.mark.docker

def desired(target: str = "admin@example.com", *, quarantine: bool = True) -> str:
    text = textwrap.dedent(f"""\
        version: 1
        domains: [example.com]
        accounts:
          admin@example.com:
            password_hash: "{ADMIN_HASH}"
        aliases:
          postmaster@example.com: {target}
        """)
    if quarantine:
        text += "quarantine:\n  mailbox: admin@example.com\n"
    return text


def start_watcher(tmp_path: Path, volume: Volume, engine: DockerEngine, *more: str,
                  env: dict[str, str] | None = None) -> WatchProcess:
    path = tmp_path / "mailserver.yaml"
    return WatchProcess(["-f", str(path), *volume.args(), "--interval", "3600", *more],
                        cwd=tmp_path, env={"DOCKER_HOST": engine.url, **(env or {})})


def test_each_write_is_confirmed_and_amavis_is_reloaded(
        tmp_path: Path, volume: Volume, docker_engine: DockerEngine, docker_client: Any,
        fake_dms_images: dict[str, str], containers: list[Any]) -> None:
    containers.append(container := run_fake_dms(docker_client, fake_dms_images["ok"],
                                                 volume.config))
    (tmp_path / "mailserver.yaml").write_text(desired())
    with start_watcher(tmp_path, volume, docker_engine) as watcher:
        reload = watcher.wait_for_log(lambda r: r.get("service") == "amavis", what="the reload")
        assert reload["result"] == "ok", reload
        code, installed = container.exec_run(["cat", "/etc/amavis/conf.d/50-user"])
        assert code == 0 and installed.decode() == volume.read("amavis.cf")
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", what="the confirmation")
        assert watcher.metric("dms_reconciler_dms_confirmed") == 1
        reloads = watcher.metric("dms_reconciler_dms_reloads_total", service="amavis", result="ok")
        assert reloads == 1
        # written with postfix-virtual.cf: the restart is left to DMS's `amavisd reload` (which
        # this stand-in does not do) unless DMS had already started on the change
        calls_code, first_calls = container.exec_run(["cat", "/var/log/supervisorctl.calls"])
        assert calls_code != 0 or first_calls == b"restart amavis\n", first_calls

        mark = watcher.count()
        save_atomically(tmp_path / "mailserver.yaml", desired("new@elsewhere.net"))
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", after=mark,
                             what="the second confirmation")
        assert postmaster_target(volume) == "new@elsewhere.net"
        # amavis.cf did not change this time: no restart
        code, calls = container.exec_run(["cat", "/var/log/supervisorctl.calls"])
        assert calls == first_calls
        # what DMS recorded is exactly what was written
        code, chksum = container.exec_run(["cat", "/tmp/docker-mailserver-config-chksum"])
        assert code == 0
        import hashlib

        virtual = hashlib.sha512((volume.config / "postfix-virtual.cf").read_bytes()).hexdigest()
        assert f"{virtual}  /tmp/docker-mailserver/postfix-virtual.cf" in chksum.decode()
        assert watcher.terminate() == 0


def test_changes_during_dms_apply_are_coalesced_into_one_write(
        tmp_path: Path, volume: Volume, docker_engine: DockerEngine, docker_client: Any,
        fake_dms_images: dict[str, str], containers: list[Any]) -> None:
    containers.append(run_fake_dms(docker_client, fake_dms_images["ok"], volume.config,
                                   environment={"FAKE_DMS_APPLY_SECONDS": "4"}))
    (tmp_path / "mailserver.yaml").write_text(desired(quarantine=False))
    with start_watcher(tmp_path, volume, docker_engine) as watcher:
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", timeout=30,
                             what="the first confirmation")
        mark = watcher.count()
        save_atomically(tmp_path / "mailserver.yaml", desired("one@elsewhere.net", quarantine=False))
        wait_until(lambda: postmaster_target(volume) == "one@elsewhere.net", 10, "the first write")
        watcher.wait_for_log(lambda r: r.get("dms") == "waiting", after=mark, what="waiting")
        save_atomically(tmp_path / "mailserver.yaml", desired("two@elsewhere.net", quarantine=False))
        pending = watcher.wait_for_log(lambda r: "pending" in r, after=mark, what="pending")
        assert pending["pending"] == 1
        assert watcher.metric("dms_reconciler_pending_changes") == 1
        second = watcher.count()
        save_atomically(tmp_path / "mailserver.yaml", desired("three@elsewhere.net", quarantine=False))
        watcher.wait_for_log(lambda r: r.get("pending") == 1, after=second,
                             what="the second pending note")
        assert postmaster_target(volume) == "one@elsewhere.net"  # held back while DMS applies
        confirmed = watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", after=mark,
                                         timeout=30, what="the confirmation of the first write")
        # the "applied" line follows the write by the convergence plan: wait for the line
        wait_until(lambda: len([r for r in watcher.records()[mark:]
                                if r["message"] == "applied"]) >= 2, 10, "the coalesced write")
        assert postmaster_target(volume) == "three@elsewhere.net"
        records = watcher.records()[mark:]
        applies = [r for r in records if r["message"] == "applied"]
        assert len(applies) == 2, watcher.raw_log()  # one, then two+three together
        assert len([r for r in records if "pending" in r]) == 2  # one note per change
        assert records.index(applies[1]) > records.index(confirmed)
        assert watcher.metric("dms_reconciler_pending_changes") == 0
        assert watcher.terminate() == 0


def test_confirmation_timeout_is_reported_and_writing_resumes(
        tmp_path: Path, volume: Volume, docker_engine: DockerEngine, docker_client: Any,
        fake_dms_images: dict[str, str], containers: list[Any]) -> None:
    containers.append(run_fake_dms(docker_client, fake_dms_images["ok"], volume.config,
                                   environment={"FAKE_DMS_APPLY_SECONDS": "600"}))
    (tmp_path / "mailserver.yaml").write_text(desired(quarantine=False))
    with start_watcher(tmp_path, volume, docker_engine,
                       env={"DMS_RECONCILER_CONFIRM_TIMEOUT": "3"}) as watcher:
        record = watcher.wait_for_log(lambda r: r.get("dms") == "timed_out", timeout=20,
                                      what="the timeout")
        assert "did not confirm the change within 3 s" in record["message"]
        assert watcher.metric("dms_reconciler_dms_confirmation",
                              dms_reconciler_dms_confirmation="timed_out") == 1
        # DMS still holds its lock (stuck); the next write waits for it like any apply would
        assert watcher.alive()
        assert watcher.terminate() == 0


def test_container_gone_keeps_applying_and_says_it_could_not_confirm(
        tmp_path: Path, volume: Volume, docker_engine: DockerEngine, docker_client: Any,
        fake_dms_images: dict[str, str], containers: list[Any]) -> None:
    containers.append(container := run_fake_dms(docker_client, fake_dms_images["ok"],
                                                volume.config))
    (tmp_path / "mailserver.yaml").write_text(desired(quarantine=False))
    with start_watcher(tmp_path, volume, docker_engine) as watcher:
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", what="the confirmation")
        container.remove(force=True)
        mark = watcher.count()
        save_atomically(tmp_path / "mailserver.yaml", desired("after@elsewhere.net"))
        wait_until(lambda: postmaster_target(volume) == "after@elsewhere.net", 10, "the write")
        reload = watcher.wait_for_log(lambda r: r.get("service") == "amavis", after=mark,
                                      what="the reload report")
        assert reload["result"] == "unconfirmed" and "no running container" in reload["message"]
        record = watcher.wait_for_log(lambda r: r.get("dms") == "unconfirmed", after=mark,
                                      what="the report")
        assert record["level"] == "warning"
        assert "could not confirm" in record["message"]
        assert "no running container has the label com.docker.compose.service=mailserver" \
            in record["message"]
        assert watcher.metric("dms_reconciler_dms_confirmed") == 0
        wait_until(lambda: watcher.get("/readyz")[0] == 200, 5, "ready: the volume is right")
        assert watcher.terminate() == 0


def test_engine_stopped_keeps_applying_and_says_it_could_not_confirm(
        tmp_path: Path, volume: Volume, config_engine: DockerEngine) -> None:
    client = config_engine.client()
    run_fake_dms(client, import_fake_dms(client, "own"), volume.config, name="mailserver")
    client.close()
    (tmp_path / "mailserver.yaml").write_text(desired(quarantine=False))
    with start_watcher(tmp_path, volume, config_engine, "--container", "mailserver") as watcher:
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", what="the confirmation")
        config_engine.stop()
        mark = watcher.count()
        save_atomically(tmp_path / "mailserver.yaml", desired("after@elsewhere.net", quarantine=False))
        wait_until(lambda: postmaster_target(volume) == "after@elsewhere.net", 10, "the write")
        record = watcher.wait_for_log(lambda r: r.get("dms") == "unconfirmed", after=mark,
                                      what="the report")
        assert "could not confirm" in record["message"]
        assert "Docker" in record["message"]  # no socket / cannot reach the Docker engine
        assert watcher.alive()
        assert watcher.terminate() == 0


@pytest.fixture
def config_engine() -> Any:
    """An engine of its own, for a test that stops it."""
    engine = DockerEngine().start()
    try:
        yield engine
    finally:
        engine.cleanup()


def test_the_target_dms_is_logged_exported_and_warned_about_once(
        tmp_path: Path, volume: Volume, docker_engine: DockerEngine, docker_client: Any,
        fake_dms_images: dict[str, str], containers: list[Any]) -> None:
    """The DMS container's release and settings (its environment) are logged and exported; what
    they mean for mailserver.yaml (here: a quarantine without Amavis) is logged once, not at
    every reconcile; a recreated container with other settings is reported again."""
    containers.append(container := run_fake_dms(
        docker_client, fake_dms_images["ok"], volume.config,
        environment={"DMS_RELEASE": "v16.0.1", "ENABLE_AMAVIS": "0"}))
    (tmp_path / "mailserver.yaml").write_text(desired())
    with start_watcher(tmp_path, volume, docker_engine) as watcher:
        said = watcher.wait_for_log(lambda r: "dms_target" in r, what="the target's settings")
        assert said["dms_target"]["release"] == "v16.0.1"
        assert said["dms_target"]["settings"]["ENABLE_AMAVIS"] == "0"
        warned = watcher.wait_for_log(lambda r: r.get("dms_target_warning") is True,
                                      what="the target's warning")
        assert warned["message"].startswith("quarantine is declared but ENABLE_AMAVIS=0")
        assert watcher.metric("dms_reconciler_dms_info", found="true", release="v16.0.1",
                              enable_amavis="0", enable_quotas="1") == 1
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", what="the confirmation")
        mark = watcher.count()
        save_atomically(tmp_path / "mailserver.yaml", desired("new@elsewhere.net"))
        watcher.wait_for_log(lambda r: r.get("dms") == "confirmed", after=mark,
                             what="the second confirmation")
        later = watcher.records()[mark:]
        assert not any("dms_target" in r or r.get("dms_target_warning") for r in later), later
        # the container recreated with Amavis on: the new settings, and nothing to warn about
        container.remove(force=True)
        containers.append(run_fake_dms(docker_client, fake_dms_images["ok"], volume.config,
                                       environment={"DMS_RELEASE": "v16.0.1"}))
        mark = watcher.count()
        save_atomically(tmp_path / "mailserver.yaml", desired())
        again = watcher.wait_for_log(lambda r: "dms_target" in r, after=mark,
                                     what="the new container's settings")
        assert again["dms_target"]["settings"]["ENABLE_AMAVIS"] == "1"
        assert again["dms_target"]["defaulted"][0] == "ENABLE_AMAVIS"
        assert watcher.metric("dms_reconciler_dms_info", found="true", enable_amavis="1") == 1
        assert watcher.terminate() == 0

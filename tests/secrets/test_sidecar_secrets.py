"""The real sidecar never shows a password or a password hash: not on stdout or stderr, not in a
log line, not in /metrics, /healthz or /readyz, and not in any argument list or environment it
gives `docker exec`.

One watcher runs through everything that handles secrets, with DMS_RECONCILER_DEBUG=1 and
DMS_RECONCILER_LOG_LEVEL=DEBUG: password_file, password_env and given hashes, a rotation, a hand
edit of a hash (drift), a missing password file, broken YAML on a hash line, a plaintext put in
password_hash by mistake, a refused deletion, and DMS exec failures (exit 1 and 127) and an
unreachable DMS, against a real private engine whose stand-in logs every exec. A second test
injects a bug (an exception whose message holds secrets) to check the debug traceback.
"""

# ruff: noqa: F811 - the engine fixtures are imported from tests.dockerengine
from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.dockerengine import (  # noqa: F401 - pytest fixtures
    SUPERVISORCTL_127,
    SUPERVISORCTL_FAILS,
    DockerEngine,
    containers,
    docker_client,
    docker_engine,
    import_fake_dms,
    run_fake_dms,
)
from tests.support.util import REPO, Volume, sha512_hash
from tests.support.watch_process import WatchProcess, save_atomically, wait_until

pytestmark = pytest.mark.docker

JANE_PW = "Jane-Plain-Secret-4711"
JANE_PW2 = "Jane-Rotated-Secret-0815"
BOB_PW = "Bob-Env-Secret-1234"
CAROL_PW = "Carol-File-Secret-5678"
MISTAKE_PW = "Mistaken-Plaintext-In-Hash-9999"
ADMIN_HASH = sha512_hash("Admin-Hash-Secret-1357", "adminsalt")
HAND_HASH = sha512_hash("Hand-Edited-Secret-2468", "handsalt")
PLAINTEXTS = [JANE_PW, JANE_PW2, BOB_PW, CAROL_PW, MISTAKE_PW, "Admin-Hash-Secret-1357",
              "Hand-Edited-Secret-2468"]
DEBUG_ENV = {"DMS_RECONCILER_DEBUG": "1", "DMS_RECONCILER_LOG_LEVEL": "DEBUG"}


def desired(*, admin_hash: str = f'"{ADMIN_HASH}"', carol: bool = False, bob: bool = True,
            quarantine: bool = True, policy: str = "", target: str = "admin@example.com") -> str:
    text = textwrap.dedent(f"""\
        version: 1
        domains: [example.com]
        accounts:
          admin@example.com:
            password_hash: {admin_hash}
          jane@example.com:
            password_file: jane.pw
        """)
    if bob:
        text += "  bob@example.com:\n    password_env: BOB_PW\n"
    if carol:
        text += "  carol@example.com:\n    password_file: carol.pw\n"
    text += f"aliases:\n  postmaster@example.com: {target}\n"
    if quarantine:
        text += "quarantine:\n  mailbox: admin@example.com\n"
    return text + policy


def secrets_in(hashes: set[str]) -> list[str]:
    """Every plaintext, every hash, and each hash's salt and digest on their own."""
    out = list(PLAINTEXTS)
    for value in hashes:
        out.append(value)
        parts = value.split("$")
        out += [part for part in parts[2:] if len(part) >= 8]  # salt, digest
    return out


def hashes_on(volume: Volume) -> set[str]:
    text = volume.read("postfix-accounts.cf") or ""
    return {line.split("|")[1] for line in text.splitlines() if "|" in line}


class Outputs:
    """Everything the sidecar showed anyone, collected along the way."""

    def __init__(self, watcher: WatchProcess, volume: Volume) -> None:
        self.watcher = watcher
        self.volume = volume
        self.bodies: list[tuple[str, str]] = []
        self.hashes: set[str] = {ADMIN_HASH, HAND_HASH}

    def collect(self) -> None:
        for endpoint in ("/metrics", "/healthz", "/readyz"):
            self.bodies.append((endpoint, self.watcher.get(endpoint)[1]))
        self.hashes |= hashes_on(self.volume)


def exec_records(client: Any, since: int, containers: list[Any]) -> list[tuple[str, str]]:
    """What the engine says was run by `docker exec` (the exact argument lists, space-joined),
    and what the stand-ins logged: argument lists, environments, supervisorctl calls."""
    out = []
    events = client.events(since=since, until=int(time.time()) + 1, decode=True,
                           filters={"type": "container", "event": "exec_create"})
    for event in events:
        out.append(("engine exec_create", event["Action"]))
    for container in containers:
        for log in ("/var/log/exec-argv.log", "/var/log/exec-env.log",
                    "/var/log/supervisorctl.calls"):
            code, text = container.exec_run(["/bin/busybox", "cat", log])
            if code == 0:
                out.append((f"{container.short_id}:{log}", text.decode(errors="replace")))
    return out


def assert_no_secret(outputs: list[tuple[str, str]], secrets: list[str]) -> None:
    leaks = [(where, secret) for where, text in outputs for secret in secrets if secret in text]
    assert not leaks, f"secrets shown in: {sorted({where for where, _ in leaks})}"


def test_no_secret_in_any_output_of_the_sidecar(
        tmp_path: Path, volume: Volume, docker_engine: DockerEngine, docker_client: Any,
        containers: list[Any]) -> None:
    since = int(time.time()) - 1
    fails = import_fake_dms(docker_client, "secrets-fails", SUPERVISORCTL_FAILS, log_exec=True)
    missing = import_fake_dms(docker_client, "secrets-127", SUPERVISORCTL_127, log_exec=True)
    containers.append(first := run_fake_dms(docker_client, fails, volume.config))
    path = tmp_path / "mailserver.yaml"
    (tmp_path / "jane.pw").write_text(JANE_PW + "\n")
    path.write_text(desired(quarantine=False))
    env = {"DOCKER_HOST": docker_engine.url, "BOB_PW": BOB_PW, **DEBUG_ENV}
    with WatchProcess(["-f", str(path), *volume.args(), "--interval", "2"], cwd=tmp_path,
                      env=env) as watcher:
        out = Outputs(watcher, volume)

        def step(predicate: Any, what: str, timeout: float = 15) -> dict[str, Any]:
            record = watcher.wait_for_log(predicate, after=mark, timeout=timeout, what=what)
            out.collect()
            return record

        mark = 0
        step(lambda r: r.get("dms") == "confirmed", "the first confirmation")
        # amavis.cf alone (written with postfix-virtual.cf, the restart would be left to DMS's
        # own reload): the sidecar restarts Amavis, and supervisorctl fails
        mark = watcher.count()
        save_atomically(path, desired())
        reload = step(lambda r: r.get("service") == "amavis", "the failed Amavis restart")
        assert reload["result"] == "failed" and "exit 1" in reload["message"]

        mark = watcher.count()  # a rotated password file: a new hash
        (tmp_path / "jane.pw").write_text(JANE_PW2 + "\n")
        step(lambda r: r["message"] == "applied"
             and "postfix-accounts.cf:jane@example.com" in r["entries"], "the rotation")

        mark = watcher.count()  # a hand edit of a hash: drift, repaired at the next interval
        accounts = volume.read("postfix-accounts.cf") or ""
        jane = next(line for line in accounts.splitlines() if line.startswith("jane@"))
        volume.write("postfix-accounts.cf",
                     accounts.replace(jane, f"jane@example.com|{HAND_HASH}"))
        out.hashes.add(jane.split("|")[1])
        step(lambda r: r["message"] == "repaired drift", "the drift repair")

        mark = watcher.count()  # a password file that does not exist
        save_atomically(path, desired(carol=True))
        failed = step(lambda r: r["message"].startswith("reconcile failed"), "the missing file")
        assert "carol.pw" in failed["message"]
        mark = watcher.count()
        (tmp_path / "carol.pw").write_text(CAROL_PW + "\n")
        step(lambda r: r["message"] == "applied", "carol's account", timeout=20)

        for broken in (f'"{ADMIN_HASH}', f'"{MISTAKE_PW}"', f'"{ADMIN_HASH}|{MISTAKE_PW}"'):
            mark = watcher.count()  # broken YAML on the hash line; plaintext as a hash; a `|`
            save_atomically(path, desired(admin_hash=broken, carol=True))
            invalid = step(lambda r: r["level"] == "error" and "invalid" in r["message"],
                           "the invalid file")
            assert invalid["error_count"] >= 1

        mark = watcher.count()  # a deletion the policy refuses
        save_atomically(path, desired(bob=False, policy="policy:\n  max_deletions: 0\n"))
        step(lambda r: r["message"].startswith("refused"), "the refusal")

        mark = watcher.count()  # DMS gone: applied, could not confirm, Amavis restart owed
        first.remove(force=True)
        save_atomically(path, desired(carol=True, quarantine=False, target="jane@example.com"))
        step(lambda r: r.get("dms") == "unconfirmed", "the unconfirmed write")
        mark = watcher.count()  # a new DMS without supervisorctl's program: exit 127
        containers.append(second := run_fake_dms(docker_client, missing, volume.config))
        reload = step(lambda r: r.get("service") == "amavis", "the owed Amavis restart",
                      timeout=30)
        assert reload["result"] == "failed" and "127" in reload["message"], reload
        step(lambda r: r.get("dms") == "confirmed", "the confirmation", timeout=30)
        assert any(r["level"] == "debug" for r in watcher.records())  # DEBUG was on
        assert watcher.terminate() == 0
        out.hashes |= hashes_on(volume)

    records = exec_records(docker_client, since, [second])
    commands = [text for where, text in records if where == "engine exec_create"]
    assert "exec_create: cat /tmp/docker-mailserver-config-chksum" in commands
    assert any(c.startswith("exec_create: cp ") for c in commands)
    assert "exec_create: supervisorctl restart amavis" in commands
    assert any("exec-argv.log" in where and "[/tmp/docker-mailserver-config-chksum]" in text
               for where, text in records)
    secrets = secrets_in(out.hashes)
    assert len(out.hashes) >= 6  # admin, hand edit, jane twice, bob, carol
    assert_no_secret([("stdout", watcher.raw_stdout()), ("stderr (the log)", watcher.raw_log()),
                      *out.bodies, *records], secrets)


BUG = '''
"""Injected by tests/secrets/test_sidecar_secrets.py: a bug whose exception message holds secrets."""
import os

import reconciler.reconcile as reconcile

_real = reconcile.make_plan


def make_plan(desired, observed, decided, **kwargs):
    if os.path.exists(os.environ["INJECT_BUG_WHEN"]):
        stored = [entry.password_hash for entry in observed.accounts.entries.values()]
        secret = os.environ["BOB_PW"]
        try:
            raise KeyError(f"inner {secret} {stored}")
        except KeyError as inner:
            raise ValueError(f"injected bug: {secret} {stored}") from inner
    return _real(desired, observed, decided, **kwargs)


reconcile.make_plan = make_plan
'''


def test_debug_traceback_of_an_internal_error_holds_no_secret(tmp_path: Path,
                                                              volume: Volume) -> None:
    """DMS_RECONCILER_DEBUG=1 adds a traceback to an internal error, for a bug report: where it
    happened, never the exception messages (this one quotes a password and the stored hashes)."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(BUG)
    trigger = tmp_path / "bug-on"
    path = tmp_path / "mailserver.yaml"
    (tmp_path / "jane.pw").write_text(JANE_PW + "\n")
    path.write_text(desired())
    env = {"BOB_PW": BOB_PW, "INJECT_BUG_WHEN": str(trigger),
           "PYTHONPATH": f"{inject}:{REPO}", **DEBUG_ENV}
    with WatchProcess(["-f", str(path), *volume.args(), "--interval", "3600"], cwd=tmp_path,
                      env=env) as watcher:
        watcher.wait_for_log(lambda r: r["message"] == "applied", what="the first apply")
        hashes = hashes_on(volume) | {ADMIN_HASH}
        trigger.touch()
        mark = watcher.count()
        save_atomically(path, desired(quarantine=False))
        record = watcher.wait_for_log(lambda r: "internal error" in r["message"], after=mark,
                                      what="the internal error")
        assert record["error"] == "ValueError"
        trace = watcher.wait_for_log(lambda r: "Traceback" in r["message"], after=mark,
                                     what="the debug traceback")["message"]
        assert "make_plan" in trace and "ValueError" in trace and "KeyError" in trace
        code, body = watcher.get("/readyz")
        assert code == 503 and "internal error (ValueError)" in body
        outputs = [("stdout", watcher.raw_stdout()), ("log", watcher.raw_log())]
        outputs += [(e, watcher.get(e)[1]) for e in ("/metrics", "/healthz", "/readyz")]
        trigger.unlink()  # the bug is gone: the next try (1 s later) applies the change
        wait_until(lambda: "amavis.cf" not in {p.name for p in volume.config.iterdir()}
                   or "quarantine" not in (volume.read("amavis.cf") or ""), 10, "the retry")
        assert watcher.terminate() == 0
    assert_no_secret(outputs, secrets_in(hashes))

"""The Rspamd web UI password from a secret (`rspamd.controller.password_env|password_file`):
hashed as `rspamadm pw --type pbkdf2` does, kept while it still verifies the secret (no write
when nothing changed), rehashed when the secret changes, never printed; export gives the hash
back. The real controller accepting it is in tests/realdms/test_rspamd_dkim.py."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from reconciler.passwords import rspamd_pw
from tests.support.util import make_volume, run_cli, sha512_hash, write_desired

ADMIN = sha512_hash("admin-pw", salt="adminsalt")
HEAD = f"""\
version: 1
domains: [example.com]
accounts:
  admin@example.com: {{password_hash: "{ADMIN}"}}
"""
INC = "rspamd/override.d/worker-controller.inc"
# `rspamadm pw --type pbkdf2 -p secret1` in DMS v16's Rspamd 3.12.1
RSPAMADM_HASH = (
    "$1$caidz8w4sjpredmywhk8zuneskod4pn1$z7pe7psridmq5jokp5jjjmeqif5euk837wwnt7pbtbom3adf133y"
)


def test_the_hash_is_the_one_rspamadm_makes() -> None:
    salt = rspamd_pw.decode_base32("caidz8w4sjpredmywhk8zuneskod4pn1")
    assert salt is not None
    assert rspamd_pw.make("secret1", salt) == RSPAMADM_HASH
    assert rspamd_pw.verify("secret1", RSPAMADM_HASH)
    assert not rspamd_pw.verify("secret2", RSPAMADM_HASH)
    assert not rspamd_pw.verify("secret1", "$2$" + RSPAMADM_HASH[3:])  # catena: not ours
    long = "x" * 100  # over BLAKE2b's 64-byte key: hashed first, as Rspamd does
    assert rspamd_pw.verify(long, rspamd_pw.make(long))


def _setup(tmp_path: Path, controller: str) -> tuple[Path, list[str]]:
    volume = make_volume(tmp_path / "v")
    (volume.config / "postfix-accounts.cf").write_text(f"admin@example.com|{ADMIN}\n")
    text = HEAD + f"rspamd:\n  controller: {controller}\n"
    desired = write_desired(tmp_path / "mailserver.yaml", text)
    args = ["-f", str(desired), "--config-dir", str(volume.config), "--cron-file", str(volume.cron)]
    return volume.config, args


def _stored(config: Path) -> str:
    lines = (config / INC).read_text().splitlines()
    line = next(x for x in lines if x.startswith("password"))
    return line.split('"')[1]


def test_password_env_is_hashed_kept_while_unchanged_and_rehashed_when_changed(tmp_path):
    config, args = _setup(tmp_path, "{password_env: RSPAMD_WEB}")
    env = {"RSPAMD_WEB": "first-secret"}
    out = run_cli("apply", *args, env=env)
    assert out.returncode == 0, out.stderr
    first = _stored(config)
    assert rspamd_pw.verify("first-secret", first)
    assert "first-secret" not in out.stdout + out.stderr and first not in out.stdout + out.stderr
    mtime = (config / INC).stat().st_mtime_ns
    again = run_cli("apply", *args, env=env)
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout
    assert (config / INC).stat().st_mtime_ns == mtime and _stored(config) == first
    plan = run_cli("plan", "--format", "json", *args, env={"RSPAMD_WEB": "second"})
    data = json.loads(plan.stdout)
    change = next(c for c in data["changes"] if c["file"] == INC)
    assert change["actions"] == ["update"] and change["after"] == {"value": "(sensitive)"}
    assert "second" not in plan.stdout and first not in plan.stdout
    assert run_cli("apply", *args, env={"RSPAMD_WEB": "second"}).returncode == 0
    assert rspamd_pw.verify("second", _stored(config)) and _stored(config) != first


def test_password_file_and_a_missing_secret(tmp_path):
    config, args = _setup(tmp_path, "{password_file: web.txt}")
    missing = run_cli("plan", *args)
    assert missing.returncode != 0 and "rspamd.controller" in missing.stderr, missing.stderr
    assert not (config / INC).exists()
    (tmp_path / "web.txt").write_text("from-a-file\n")
    assert run_cli("apply", *args).returncode == 0
    assert rspamd_pw.verify("from-a-file", _stored(config))
    offline = run_cli("plan", "--offline", *args, env={})
    assert "No changes" in offline.stdout, offline.stdout


def test_offline_plan_without_the_secret_writes_a_placeholder_nobody_can_log_in_with(tmp_path):
    config, args = _setup(tmp_path, "{password_env: RSPAMD_WEB}")
    plan = run_cli("plan", "--offline", "--format", "json", *args)
    assert plan.returncode == 0, plan.stderr
    assert [c["key"] for c in json.loads(plan.stdout)["changes"] if c["file"] == INC] == [
        "password"
    ]
    assert not (config / INC).exists()


def test_two_sources_at_once_are_refused_at_their_line(tmp_path):
    config, args = _setup(tmp_path, '{password_env: A, password_hash: "x"}')
    out = run_cli("plan", *args)
    assert out.returncode != 0 and "mailserver.yaml:6:3: error: rspamd.controller: " in out.stderr
    assert "give exactly one of password_hash, password_env or password_file" in out.stderr
    assert "Traceback" not in out.stderr and not (config / INC).exists()


def test_export_gives_the_hash_back(tmp_path):
    config, args = _setup(tmp_path, "{password_env: RSPAMD_WEB}")
    assert run_cli("apply", *args, env={"RSPAMD_WEB": "s3cret"}).returncode == 0
    out = tmp_path / "exported.yaml"
    result = run_cli("export", "--config-dir", str(config), "--cron-file",
                     str(tmp_path / "v/cron/sa-learn"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(out.read_text())["rspamd"]["controller"] == {
        "password_hash": _stored(config)
    }

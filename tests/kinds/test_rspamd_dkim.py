"""DKIM signing by Rspamd (`dkim: {signer: rspamd}`): the files `setup config dkim` writes when
DMS runs Rspamd (rspamd/dkim/rsa-<bits>-<selector>-<domain>.{private,public,public.dns}.txt and
override.d/dkim_signing.conf), made once and never replaced, `dns` printing the record from them,
export adopting them, the OpenDKIM files left alone, the same refusals as OpenDKIM's path, and
the target warning when DMS's settings disagree. Signing on the real DMS is proven in
tests/realdms/test_rspamd_dkim.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from reconciler import dkimkeys, rspamdkeys
from reconciler.formats import rspamd_ucl
from reconciler.kinds.rspamd_dkim import read_domains
from reconciler.model import DesiredState, Dkim
from reconciler.planner import target
from tests.support.util import make_volume, run_cli, sha512_hash, write_desired

ADMIN = sha512_hash("admin-pw", salt="adminsalt")
HEAD = f"""\
version: 1
domains: [example.com, example.org]
accounts:
  admin@example.com: {{password_hash: "{ADMIN}"}}
"""
DKIM = """\
dkim:
  signer: rspamd
  example.com: {}
  example.org: {selector: s2024, key_size: 1024}
"""
KEY_COM = "rspamd/dkim/rsa-2048-mail-example.com"
KEY_ORG = "rspamd/dkim/rsa-1024-s2024-example.org"
CONF = "rspamd/override.d/dkim_signing.conf"


def _setup(tmp_path: Path, text: str = DKIM) -> tuple[Path, list[str]]:
    volume = make_volume(tmp_path / "v")
    (volume.config / "postfix-accounts.cf").write_text(f"admin@example.com|{ADMIN}\n")
    desired = write_desired(tmp_path / "mailserver.yaml", HEAD + text)
    args = ["-f", str(desired), "--config-dir", str(volume.config), "--cron-file", str(volume.cron)]
    return volume.config, args


def _tree(config: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(config)): p.read_bytes()
        for p in sorted(config.rglob("*"))
        if p.is_file() and p.name != "dms-reconciler.state.json"
    }


def test_apply_writes_what_setup_config_dkim_writes_for_rspamd(tmp_path):
    config, args = _setup(tmp_path)
    plan = run_cli("plan", *args)
    assert plan.returncode == 0, plan.stderr
    assert "example.com (mail)" in plan.stdout and "PRIVATE KEY" not in plan.stdout
    out = run_cli("apply", *args)
    assert out.returncode == 0, out.stderr
    for base, bits, selector in ((KEY_COM, 2048, "mail"), (KEY_ORG, 1024, "s2024")):
        private = config / f"{base}.private.txt"
        assert os.stat(private).st_mode & 0o777 == 0o600
        assert os.stat(config / f"{base}.public.txt").st_mode & 0o777 == 0o644
        size, public = dkimkeys.read(private.read_bytes())  # type: ignore[misc]
        assert size == bits and private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
        assert (config / f"{base}.public.dns.txt").read_text() == f"v=DKIM1; k=rsa; p={public}\n"
        assert (config / f"{base}.public.txt").read_text() == rspamdkeys.render_public(
            selector, public
        )
    conf = (config / CONF).read_text()
    for line in ("enabled = true;", "sign_authenticated = true;", "sign_local = false;",
                 'use_domain = "header";', "use_esld = true;", "allow_username_mismatch = true;",
                 "check_pubkey = true;"):
        assert line in conf.splitlines(), conf
    parsed = rspamd_ucl.parse(conf)
    assert read_domains(parsed.entries["domain"]) == {
        "example.com": (f"/tmp/docker-mailserver/{KEY_COM}.private.txt", "mail"),
        "example.org": (f"/tmp/docker-mailserver/{KEY_ORG}.private.txt", "s2024"),
    }
    assert not (config / "opendkim").exists()  # OpenDKIM's files: not written
    assert "No changes" in run_cli("plan", *args).stdout


def test_a_key_is_never_replaced_and_a_dms_made_file_is_adopted_as_it_is(tmp_path):
    config, args = _setup(tmp_path, "dkim: {signer: rspamd, example.com: {key_size: 4096}}\n")
    # what DMS's own `setup config dkim` left: its 2048-bit key and its dkim_signing.conf
    pair = dkimkeys.generate(2048)
    (config / "rspamd/dkim").mkdir(parents=True)
    (config / "rspamd/override.d").mkdir(parents=True)
    (config / f"{KEY_COM}.private.txt").write_bytes(pair.private_pem)
    os.chmod(config / f"{KEY_COM}.private.txt", 0o600)
    public = rspamdkeys.render_public("mail", pair.public_b64)
    (config / f"{KEY_COM}.public.txt").write_text(public)
    (config / CONF).write_text(DMS_CONF)
    before = _tree(config)
    plan = json.loads(run_cli("plan", "--format", "json", *args).stdout)
    assert any("has 2048 bits, not the 4096 declared" in w for w in plan["warnings"])
    assert run_cli("apply", *args).returncode == 0
    after = _tree(config)
    changed = {k for k in after if after[k] != before.get(k)}
    # only the missing record file is added; DMS's conf and key are as they were
    assert changed == {f"{KEY_COM}.public.dns.txt"}, changed
    assert after[f"{KEY_COM}.public.dns.txt"] == f"v=DKIM1; k=rsa; p={pair.public_b64}\n".encode()


DMS_CONF = f"""# documentation: https://rspamd.com/doc/modules/dkim_signing.html

enabled = true;

sign_authenticated = true;
sign_local = false;
try_fallback = false;

use_domain = "header";
use_redis = false; # don't change unless Redis also provides the DKIM keys
use_esld = true;
allow_username_mismatch = true;

check_pubkey = true; # you want to use this in the beginning

domain {{
    example.com {{
        path = "/tmp/docker-mailserver/{KEY_COM}.private.txt";
        selector = "mail";
    }}
}}

"""


def test_dns_prints_the_record_of_the_rspamd_key(tmp_path):
    config, args = _setup(tmp_path)
    missing = run_cli("dns", "--format", "json", *args)
    assert missing.returncode == 1 and "not made yet" in missing.stdout
    assert run_cli("apply", *args).returncode == 0
    shown = json.loads(run_cli("dns", "--format", "json", *args).stdout)
    records = {r["name"]: r["value"] for r in shown["records"] if r["kind"] == "dkim"}
    public = (config / f"{KEY_COM}.public.dns.txt").read_text().strip()
    assert records["mail._domainkey.example.com."] == public
    assert records["s2024._domainkey.example.org."].startswith("v=DKIM1; k=rsa; p=")


def test_export_adopts_the_rspamd_keys(tmp_path):
    config, args = _setup(tmp_path)
    assert run_cli("apply", *args).returncode == 0
    out = tmp_path / "exported.yaml"
    result = run_cli("export", "--config-dir", str(config), "--cron-file",
                     str(tmp_path / "v/cron/sa-learn"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(out.read_text())
    # example.org has no account on the volume: not a hosted domain there, as for OpenDKIM
    assert doc["dkim"] == {"signer": "rspamd", "example.com": {}}
    assert "DKIM for example.org left unmanaged: not a hosted domain" in result.stderr


def test_dropping_the_signer_removes_the_signing_config_and_keeps_the_keys(tmp_path):
    config, args = _setup(tmp_path)
    assert run_cli("apply", *args).returncode == 0
    write_desired(Path(args[1]), HEAD)
    # ten deletions in one file: past its deletion guard only with --allow-deletions
    refused = run_cli("apply", *args)
    assert refused.returncode == 1 and "--allow-deletions 10" in refused.stderr, refused.stderr
    out = run_cli("apply", *args, "--allow-deletions", "10")
    assert out.returncode == 0, out.stderr
    assert "key files in rspamd/dkim/ are kept" in out.stdout
    assert "10 destroyed" in out.stdout  # the nine settings and the domain block, once
    assert "domain" not in rspamd_ucl.parse((config / CONF).read_text()).entries
    assert (config / f"{KEY_COM}.private.txt").exists()


@pytest.mark.parametrize("where", ["rspamd/dkim", f"{KEY_COM}.private.txt"])
def test_a_symlink_is_refused_and_nothing_is_written(tmp_path, where):
    config, args = _setup(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (config / "rspamd").mkdir()
    if where == "rspamd/dkim":
        (config / where).symlink_to(outside)
    else:
        (config / "rspamd/dkim").mkdir()
        (config / where).symlink_to(outside / "key")
    before = _tree(config)
    out = run_cli("apply", *args)
    assert out.returncode != 0 and "symlink" in out.stderr and "Traceback" not in out.stderr
    assert _tree(config) == before and list(outside.iterdir()) == []


def test_rules_refuse_bad_selectors_and_a_second_writer_of_dkim_signing_conf(tmp_path):
    config, args = _setup(
        tmp_path,
        "dkim: {signer: rspamd, example.com: {selector: ../x}}\n"
        "rspamd: {modules: {disable: [dkim_signing]}}\n",
    )
    out = run_cli("plan", *args)
    assert out.returncode != 0
    assert "mailserver.yaml:5:" in out.stderr and "selector" in out.stderr, out.stderr
    assert "mailserver.yaml:6:" in out.stderr and "dkim_signing is switched on" in out.stderr
    write_desired(Path(args[1]), HEAD + "dkim: {signer: postfix}\n")
    out = run_cli("plan", *args)
    assert out.returncode != 0 and "mailserver.yaml:5:" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and _tree(config) == {
        "postfix-accounts.cf": f"admin@example.com|{ADMIN}\n".encode()
    }


def test_the_target_warns_when_dms_settings_disagree_with_the_signer():
    state = DesiredState(1, ("example.com",), (), dkim=(Dkim("example.com"),), dkim_signer="rspamd")
    opendkim_on = target.facts_from_env({"ENABLE_RSPAMD": "1", "DMS_RELEASE": "v16.0.1"}, "m")
    assert any("ENABLE_OPENDKIM=1" in w for w in target.warnings(opendkim_on, state))
    rspamd = target.facts_from_env(
        {"ENABLE_RSPAMD": "1", "ENABLE_OPENDKIM": "0", "DMS_RELEASE": "v16.0.1"}, "m"
    )
    assert not any("dkim" in w for w in target.warnings(rspamd, state))
    opendkim_state = DesiredState(1, ("example.com",), (), dkim=(Dkim("example.com"),))
    assert any("signer: rspamd" in w for w in target.warnings(rspamd, opendkim_state))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root (the sidecar runs as root)")
def test_new_key_files_take_the_owner_of_rspamd_dkim(tmp_path):
    """DMS makes rspamd/dkim/ `_rspamd`'s at start-up; a key apply adds there later must be
    readable by Rspamd (user _rspamd) without a restart."""
    config, args = _setup(tmp_path)
    (config / "rspamd/dkim").mkdir(parents=True)
    os.chown(config / "rspamd/dkim", 4242, 4343)
    assert run_cli("apply", *args).returncode == 0
    for suffix in (".private.txt", ".public.txt", ".public.dns.txt"):
        info = os.stat(config / f"{KEY_COM}{suffix}")
        assert (info.st_uid, info.st_gid) == (4242, 4343), suffix
    assert os.stat(config / CONF).st_uid == os.geteuid()  # not in rspamd/dkim/: ours


def test_a_new_rspamd_key_under_a_selector_opendkim_has_a_key_for_is_warned(tmp_path):
    """Switching the signer with the same selector: the TXT record in DNS is OpenDKIM's key, so
    mail Rspamd signs with its new key fails DKIM until the record is replaced: said in the plan.
    Another selector (example.org's s2024) gets no such warning."""
    config, args = _setup(tmp_path)
    pair = dkimkeys.generate(1024)
    keys = config / "opendkim" / "keys"
    for domain, selector in (("example.com", "mail"), ("example.org", "mail")):
        (keys / domain).mkdir(parents=True, exist_ok=True)
        (keys / domain / f"{selector}.private").write_bytes(pair.private_pem)
        os.chmod(keys / domain / f"{selector}.private", 0o600)
    plan = run_cli("plan", *args)
    assert plan.returncode == 0, plan.stderr
    said = plan.stdout + plan.stderr
    assert ("example.com: selector mail already has an OpenDKIM key "
            "(opendkim/keys/example.com/mail.private)") in said, said
    assert "mail._domainkey.example.com" in said
    assert "example.org: selector" not in said  # its selector is s2024: no record in the way

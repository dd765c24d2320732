"""masters, regexp_aliases, restrict, relay and dkim: the bytes each codec writes are what DMS's
`setup` CLI (or opendkim-genkey) writes, keys are made once and never replaced, relay passwords
never churn, `dns` shows the records, and the sidecar owes the reloads DMS would run.

The golden cases (tests/cases/setup-features-*) cover plan, apply and adoption as a whole; the
real-DMS proofs are in tests/realdms/test_setup_features.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler import dkimkeys
from reconciler.formats import access, masters, opendkim, regexp, relaymap, sasl
from reconciler.watch.confirm import services_to_reload
from tests.support.util import make_volume, run_cli, sha512_hash, write_desired

HASH = sha512_hash("master-pw", salt="mastersalt")
ADMIN = sha512_hash("admin-pw", salt="adminsalt")


def test_lines_are_byte_for_byte_what_the_setup_cli_writes() -> None:
    """dovecot-master add (`name|hash`), email restrict add (`echo -e "${USER} \\t\\t REJECT"`),
    relay add-domain (`@domain [host]:port`), exclude-domain (`@domain `: key and one space),
    add-auth (`@domain user:password`)."""
    header = "# Managed by dms-reconciler"
    assert masters.render([masters.MasterLine("boss", HASH)]).split("\n", 1)[1] == f"boss|{HASH}\n"
    assert access.render([access.AccessLine("a@example.com", "REJECT")]).endswith(
        "\na@example.com \t\t REJECT\n")
    rendered = relaymap.render([relaymap.RelayLine("@example.com", "[smtp.example.net]:587"),
                                relaymap.RelayLine("@example.org", "")])
    assert rendered.split("\n", 1)[1] == "@example.com [smtp.example.net]:587\n@example.org \n"
    assert sasl.render([sasl.SaslLine("@example.com", "user", "pa:ss word")]).endswith(
        "\n@example.com user:pa:ss word\n")
    for text in (rendered, access.render([])):
        assert text.startswith(header)
    # and they read back: the CLI's own lines, with its spacing
    assert access.parse("a@example.com \t\t REJECT\n").entries["a@example.com"].action == "REJECT"
    assert relaymap.parse("@example.org \n").entries["@example.org"].excluded
    assert relaymap.parse("@x.org  [h.example]:25\n").entries["@x.org"].host_port() == (
        "h.example", 25)
    parsed = sasl.parse("@example.com user:pa:ss\n").entries["@example.com"]
    assert (parsed.username, parsed.password) == ("user", "pa:ss")
    assert "pa:ss" not in repr(parsed)


def test_dkim_files_are_what_opendkim_genkey_writes(tmp_path: Path) -> None:
    """Run DMS's own tool (Debian's opendkim-tools, as in the DMS image) and compare: the record
    file is byte for byte what we render from the key, the key is PEM PKCS#8, both mode 0600."""
    genkey = shutil.which("opendkim-genkey") or "/usr/sbin/opendkim-genkey"
    assert Path(genkey).exists(), "opendkim-genkey is missing (.ci/run installs opendkim-tools)"
    for bits in (1024, 2048):
        out = tmp_path / str(bits)
        out.mkdir()
        subprocess.run([genkey, f"--bits={bits}", "--subdomains", "--domain=example.com",
                        "--selector=mail", f"--directory={out}"], check=True)
        private = (out / "mail.private").read_bytes()
        size, public = dkimkeys.read(private) or (0, "")
        assert size == bits
        assert (out / "mail.txt").read_text() == opendkim.render_txt("example.com", "mail", public)
        ours = dkimkeys.generate(bits)
        assert ours.private_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
        assert private.startswith(b"-----BEGIN PRIVATE KEY-----\n")
        assert dkimkeys.read(ours.private_pem) == (bits, ours.public_b64)
        assert opendkim.parse_txt(opendkim.render_txt("example.com", "mail", ours.public_b64)) \
            == opendkim.txt_value(ours.public_b64)
        assert "PRIVATE" not in repr(ours) and ours.public_b64[:12] in repr(ours)


def test_regexp_patterns_keep_their_delimiters_and_order() -> None:
    assert regexp.delimit("a/b") == "a\\/b"
    assert regexp.delimit("a\\/b") == "a\\/b"  # already escaped
    assert regexp.delimit("a\\\\/b") == "a\\\\\\/b"  # an escaped backslash, then a bare /
    text = "/b/ x@example.com\n/a\\/c/i y@example.com,z@example.com\nif /q/\n/r/ s@t.u\nendif\n"
    parsed = regexp.parse(text)
    assert list(parsed.entries) == ["/b/", "/a\\/c/i"]
    assert parsed.invalid == ("if /q/", "/r/ s@t.u", "endif")
    rendered = regexp.render(parsed.entries.values(), comments=parsed.comments,
                             invalid=parsed.invalid)
    assert rendered.split("\n", 1)[1] == text.replace("y@example.com,z", "y@example.com,z")


def desired(tmp_path: Path, extra: str) -> Path:
    path = write_desired(tmp_path / "mailserver.yaml", f"""
        version: 1
        hostname: mail.example.com
        domains: [example.org]
        accounts:
          admin@example.org:
            password_hash: "{ADMIN}"
        """)
    path.write_text(path.read_text() + extra)
    return path


def test_an_existing_dkim_key_is_never_replaced(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    keys = volume.config / "opendkim" / "keys" / "example.org"
    keys.mkdir(parents=True)
    old = dkimkeys.generate(1024)
    (keys / "mail.private").write_bytes(old.private_pem)
    path = desired(tmp_path, "dkim:\n  example.org: {key_size: 2048}\n")
    plan = run_cli("plan", "-f", str(path), *volume.args())
    assert plan.returncode == 0, plan.stderr
    assert "has 1024 bits, not the 2048 declared: it is kept" in plan.stdout
    assert "+ DKIM key example.org (mail): DNS record file" in plan.stdout
    assert run_cli("apply", "-f", str(path), *volume.args()).returncode == 0
    assert (keys / "mail.private").read_bytes() == old.private_pem
    assert (keys / "mail.txt").read_text() == opendkim.render_txt("example.org", "mail",
                                                                  old.public_b64)
    # the domain removed from the file: its table lines go (the only ones managed: more than
    # the default deletion guard allows without --allow-deletions), its key stays
    path.write_text(path.read_text().split("dkim:")[0])
    refused = run_cli("apply", "-f", str(path), *volume.args())
    assert refused.returncode == 1 and "entry(ies) of opendkim/KeyTable" in refused.stderr
    result = run_cli("apply", "-f", str(path), *volume.args(), "--allow-deletions", "1")
    assert result.returncode == 0, result.stderr
    assert "key files of example.org are kept" in result.stdout
    assert (keys / "mail.private").read_bytes() == old.private_pem
    assert opendkim.parse((volume.config / "opendkim" / "KeyTable").read_text()).entries == {}


def test_dns_shows_the_published_record_and_suggestions(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    path = desired(tmp_path, "dkim:\n  example.org: {selector: s1, key_size: 1024}\n")
    missing = run_cli("dns", "-f", str(path), *volume.args())
    assert missing.returncode == 1 and "not made yet: run `dms-reconciler apply`" in missing.stdout
    assert run_cli("apply", "-f", str(path), *volume.args()).returncode == 0
    result = run_cli("dns", "-f", str(path), *volume.args(), "--format", "json")
    assert result.returncode == 0, result.stderr
    records = {r["kind"]: r for r in json.loads(result.stdout)["records"]}
    private = (volume.config / "opendkim/keys/example.org/s1.private").read_bytes()
    size, public = dkimkeys.read(private) or (0, "")
    assert records["dkim"]["name"] == "s1._domainkey.example.org."
    assert records["dkim"]["value"] == opendkim.txt_value(public) and not records["dkim"][
        "suggestion"]
    assert records["mx"]["value"] == "10 mail.example.com."
    assert records["spf"]["value"] == "v=spf1 mx ~all"
    assert records["dmarc"]["name"] == "_dmarc.example.org."
    text = run_cli("dns", "-f", str(path), *volume.args()).stdout
    assert "PRIVATE" not in text and private.decode().splitlines()[1] not in text
    assert "s1._domainkey.example.org.\tIN\tTXT\t" in text


def test_relay_passwords_never_churn_and_are_never_shown(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    path = desired(tmp_path, """relay:
  example.org: {host: smtp.example.net, port: 587, username: u, password_env: RELAY_PW}
""")
    env = {"RELAY_PW": "first-Relay-Secret"}
    assert run_cli("apply", "-f", str(path), *volume.args(), env=env).returncode == 0
    sasl_file = volume.config / "postfix-sasl-password.cf"
    assert sasl_file.stat().st_mode & 0o777 == 0o600
    before = volume.snapshot()
    again = run_cli("apply", "-f", str(path), *volume.args(), env=env)
    assert again.stdout.startswith("No changes") and volume.snapshot() == before
    changed = run_cli("plan", "-f", str(path), *volume.args(), env={"RELAY_PW": "second-Secret"})
    assert "~ relay credentials @example.org: u:(sensitive)" in changed.stdout
    assert "second-Secret" not in changed.stdout and "first-Relay" not in changed.stdout
    offline = run_cli("plan", "-f", str(path), *volume.args(), "--offline")
    assert offline.returncode == 0 and "relay:example.org" in offline.stdout
    missing = run_cli("plan", "-f", str(path), *volume.args())
    assert missing.returncode == 1 and "RELAY_PW is not set" in missing.stderr
    bad = run_cli("plan", "-f", str(path), *volume.args(), env={"RELAY_PW": " padded "})
    assert bad.returncode == 1 and "whitespace" in bad.stderr and "padded" not in bad.stderr


def test_against_ref_renders_setup_secrets_from_their_sources(tmp_path: Path) -> None:
    """CI has no secrets: the base version's master and relay secrets become placeholders of
    their source, so an unchanged source is no change and a changed one is."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "master.txt").write_text("m-secret\n")
    path = write_desired(repo / "mailserver.yaml", f"""
        version: 1
        domains: [example.org]
        accounts:
          admin@example.org: {{password_hash: "{ADMIN}"}}
        masters:
          boss: {{password_file: master.txt}}
        relay:
          example.org: {{host: smtp.example.net, username: u, password_env: RELAY_PW}}
        """)
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    same = run_cli("plan", "-f", str(path), "--against-ref", "HEAD")
    assert same.returncode == 0 and "No changes." in same.stdout, same.stdout + same.stderr
    path.write_text(path.read_text().replace("RELAY_PW", "OTHER_PW"))
    moved = run_cli("plan", "-f", str(path), "--against-ref", "HEAD")
    assert "~ relay credentials @example.org: u:(sensitive, resolved at apply)" in moved.stdout


@pytest.mark.parametrize(("written", "owed"), [
    ((access.SEND,), {"postfix"}),
    ((access.RECEIVE, "postfix-accounts.cf"), {"postfix"}),
    ((opendkim.KEY_TABLE,), {"opendkim"}),
    (("opendkim/keys/example.org/mail.private",), {"opendkim"}),
    ((regexp.FILENAME, relaymap.FILENAME, sasl.FILENAME, masters.FILENAME), set()),
])
def test_the_sidecar_owes_the_reloads_dms_does_not_run(written: tuple[str, ...],
                                                       owed: set[str]) -> None:
    """Regexp, relay, SASL and masters files are DMS-watched; access files and opendkim/ are
    read at start-up only."""
    assert services_to_reload(written) == owed


def test_export_adopts_what_the_setup_cli_wrote(tmp_path: Path) -> None:
    """The golden case's volume, as DMS's setup CLI writes it: export -> a file whose plan is
    empty; the relay credentials (a plaintext password) stay unmanaged, with a warning."""
    case = Path(__file__).resolve().parent.parent / "cases" / "setup-features-adopt-cli-volume" / "before"
    volume = make_volume(tmp_path / "dms")
    shutil.copytree(case / "config", volume.config, dirs_exist_ok=True)
    out = tmp_path / "exported.yaml"
    result = run_cli("export", *volume.args(), "-o", str(out), "--no-adopt")
    assert result.returncode == 0, result.stderr
    assert "relay credentials are left unmanaged" in result.stderr
    text = out.read_text()
    for expected in ("masters:", "boss:", "regexp_aliases:", "^(sales|info)@example\\.org$",
                     "flags: i", "restrict:", "relay:", "exclude: true", "port: 587",
                     "dkim:", "key_size: 1024"):
        assert expected in text, expected
    assert "relay-secret-one" not in text
    plan = run_cli("plan", "-f", str(out), *volume.args(), "--format", "json")
    assert plan.returncode == 0, plan.stderr
    data = json.loads(plan.stdout)
    assert data["changes"] == []
    assert {(u["file"], u["key"]) for u in data["unmanaged"]} == {
        ("postfix-send-access.cf", "partner@example.org"),
        ("postfix-relaymap.cf", "bob@example.com"),
        ("postfix-sasl-password.cf", "@example.com")}


def test_a_saved_plan_is_stale_when_a_relay_or_master_secret_changes(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    path = desired(tmp_path, """masters:
  boss: {password_env: MASTER_PW}
relay:
  example.org: {host: smtp.example.net, username: u, password_env: RELAY_PW}
""")
    env = {"RELAY_PW": "relay-1", "MASTER_PW": "master-1"}
    assert run_cli("apply", "-f", str(path), *volume.args(), env=env).returncode == 0
    saved = tmp_path / "plan.saved"
    for name, value in (("RELAY_PW", "relay-2"), ("MASTER_PW", "master-2")):
        changed = {**env, name: value}
        made = run_cli("plan", "-f", str(path), *volume.args(), "--out", str(saved), env=changed)
        assert made.returncode == 0, made.stderr
        assert value not in saved.read_text()
        stale = run_cli("apply", str(saved), env=env)
        assert stale.returncode == 1 and "changed since the plan was made" in stale.stderr
        assert run_cli("apply", str(saved), env=changed).returncode == 0
        env = changed

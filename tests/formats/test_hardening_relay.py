"""Issue 20, relay hardening: relay hosts checked strictly (a host could write a second line into
postfix-relaymap.cf), every codec refusing to render a value that would not read back as the same
entry (the last line of defence for every file), relay user names without invisible characters,
the plan naming where relay credentials go, and postfix-sasl-password.cf kept private.

Postfix's own `postmap -q` proves what the written relay map means to Postfix.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.formats import (
    access,
    accounts,
    aliases,
    amavis,
    cron,
    masters,
    opendkim,
    quotas,
    regexp,
    relaymap,
    sasl,
    virtual,
)
from reconciler.formats._lines import RenderRefused
from reconciler.kinds.relay import check_relay_host, check_relay_username
from reconciler.load.desired import schema
from tests.support.util import PYTHONPATH, REPO, make_volume, run_cli, sha512_hash, write_desired

ADMIN = sha512_hash("admin-pw", salt="adminsalt")
INJECTION = "fe80::1%x]:25\\n@victim.example [attacker.example"  # as typed in YAML's "..."


def desired(tmp_path: Path, relay: str) -> Path:
    """mailserver.yaml with one account and `relay` (its entries, one a line) under `relay:`."""
    path = write_desired(tmp_path / "mailserver.yaml", f"""
        version: 1
        domains: [example.com, example.org]
        accounts:
          admin@example.com:
            password_hash: "{ADMIN}"
        relay:
        """)
    entries = textwrap.dedent(relay).strip("\n").splitlines()
    path.write_text(path.read_text() + "".join(f"  {line}\n" for line in entries))
    return path


# --- item 1: relay hosts ------------------------------------------------------------------------

HOSTS_OK = ["smtp.example.net", "relay-1.mail.example.org", "localhost", "192.0.2.25",
            "2001:db8::25", "::ffff:192.0.2.1", "fe80::1%eth0", "fe80::1%3", "fe80::1%br-lan_0.1"]
HOSTS_BAD = [
    "fe80::1%x]:25\n@victim.example [attacker.example", "fe80::1%x y", "fe80::1%", "fe80::1%x\ty",
    "fe80::1%eth0\n", "fe80::1%x\0", "fe80::1%x:25", "fe80::1%x/y", "fe80::1%é", "[2001:db8::1]",
    "[smtp.example.net]", "smtp.example.net:587", "smtp.example.net\n@evil.example [x]",
    "smtp.example.net\r", "smtp example.net", "smtp.example.net.", "-smtp.example.net",
    "1.2.3.04", "1.2.3.256", "SMTP.example.net", "a" * 64 + ".example", "smtp.example.net\x85",
    "smtp.exa\u200bmple.net", "%eth0", "1.2.3.4%eth0",
]


def test_relay_host_injection_is_refused_by_validate_at_its_line(tmp_path: Path) -> None:
    path = desired(tmp_path, f"""
        example.com: {{host: "{INJECTION}", port: 25}}
        example.org: {{host: "fe80::1%x y"}}
        """)
    result = run_cli("validate", "-f", str(path))
    assert result.returncode == 1, result.stdout
    out = result.stdout + result.stderr
    assert "Traceback" not in out
    assert (f"{path}:7:23: error: relay.example.com.host: relay host "
            "'fe80::1%x]:25\\n@victim.example [attacker.example' has the zone id") in out
    assert f"{path}:8:23: error: relay.example.org.host: relay host 'fe80::1%x y' has the zone id" in out
    assert "\n@victim" not in out  # the line break is shown escaped, never printed raw


@pytest.mark.parametrize("host", HOSTS_OK)
def test_valid_relay_hosts_pass_schema_and_rules(host: str) -> None:
    assert check_relay_host(host) is None
    jsonschema.validate(host, _host_schema())


@pytest.mark.parametrize("host", HOSTS_BAD)
def test_bad_relay_hosts_fail_the_rules_and_the_schema(host: str) -> None:
    assert check_relay_host(host), host
    # Python's `$` matches before a final "\n": the rules, not the schema, catch that one
    if not host.endswith("\n"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(host, _host_schema())


@settings(max_examples=400, deadline=None)
@given(host=st.text(alphabet="abcxyz019.-:%_ABF[]\n é", min_size=1, max_size=24))
def test_schema_accepts_every_host_the_rules_accept(host: str) -> None:
    """The editor's schema and the validator agree: nothing the rules let through is flagged,
    and (but for a final line break, see above) nothing the schema refuses gets through."""
    if check_relay_host(host) is None:
        jsonschema.validate(host, _host_schema())
    elif not host.endswith("\n"):
        try:
            jsonschema.validate(host, _host_schema())
        except jsonschema.ValidationError:
            return
        # the schema's IPv6 form is loose (`ipaddress` decides): only such a host may pass it
        assert ":" in host, host


def test_the_package_schema_is_the_published_one() -> None:
    """schema/mailserver.schema.json is the one file; the package's copy is a symlink to it."""
    packaged = REPO / "reconciler" / "mailserver.schema.json"
    assert packaged.read_bytes() == (REPO / "schema" / "mailserver.schema.json").read_bytes()


def _host_schema() -> dict[str, Any]:
    host = schema()["$defs"]["relay"]["properties"]["host"]
    return {k: v for k, v in host.items() if k not in ("description", "examples")}


# --- item 2: every codec refuses what would not read back ---------------------------------------

def _entry(name: str) -> tuple[Any, Any]:
    """(codec, a valid entry) for each line-per-entry codec."""
    return {
        "accounts": (accounts, accounts.AccountLine("a@example.com", ADMIN)),
        "masters": (masters, masters.MasterLine("boss", ADMIN)),
        "quotas": (quotas, quotas.QuotaLine("a@example.com", "5G")),
        "virtual": (virtual, virtual.VirtualLine("a@example.com", ("b@example.com", "c@x.org"))),
        "aliases": (aliases, aliases.LocalAlias("devnull", "/dev/null")),
        "access": (access, access.AccessLine("a@example.com", "REJECT")),
        "relaymap": (relaymap, relaymap.RelayLine("@example.com", "[smtp.example.net]:587")),
        "sasl": (sasl, sasl.SaslLine("@example.com", "user", "pass-Word")),
        "regexp": (regexp, regexp.RegexpLine("^a(.*)@example\\.com$", "", ("b@example.com",))),
        "opendkim": (opendkim, opendkim.key_table_line("example.com", "mail")),
        "cron": (cron, cron.CronLine(cron.job_line("@daily", "spam", "example.com", "a", ".Junk"))),
    }[name]


CODECS = ["accounts", "masters", "quotas", "virtual", "aliases", "access", "relaymap", "sasl",
          "regexp", "opendkim", "cron"]
BREAKERS = ["\n", "\r", "\0", "\r\n", "\n@evil.example [attacker.example]:25", "\n#", "\n  x"]
SEPARATORS = ["|", ":", ",", " ", "\t", "#", "/", "\\", "\x0b", "\x0c", "\x1c", "\x85", "\u2028",
              "@", "*", '"', "%", "]", "["]


def _render(codec: Any, entries: list[Any]) -> str:
    if codec is cron:
        return cron.render(entries)
    return str(codec.render(entries))


def _text_fields(entry: Any) -> list[str]:
    return [f.name for f in fields(entry) if f.name not in ("shadowed", "delimiter", "extra")]


@pytest.mark.parametrize("name", CODECS)
def test_every_codec_renders_its_valid_entries(name: str) -> None:
    codec, entry = _entry(name)
    text = _render(codec, [entry])
    assert list(codec.parse(text).entries.values()) == [entry]


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("breaker", BREAKERS)
def test_every_codec_refuses_a_line_break_cr_or_nul_in_any_field(name: str, breaker: str) -> None:
    codec, entry = _entry(name)
    for field in _text_fields(entry):
        for where in ("end", "middle"):
            value = getattr(entry, field)
            if isinstance(value, tuple):
                value = value[0]
            hostile_value = value + breaker if where == "end" else value[:1] + breaker + value[1:]
            hostile = _replace_field(entry, field, hostile_value)
            if (name, field, where, breaker) == ("quotas", "size", "end", "\r"):
                # a size read with a CRLF ending is written LF only, on purpose: nothing to refuse
                assert "\r" not in _render(codec, [hostile])
                continue
            with pytest.raises(RenderRefused) as refused:
                _render(codec, [entry, hostile] if name != "cron" else [hostile])
            message = str(refused.value)
            assert message.startswith("internal refusal: ")
            assert "nothing was written" in message
            assert "pass-Word" not in message and ADMIN not in message  # never a secret
            assert "\n" not in message and "\0" not in message and "\r" not in message


def _replace_field(entry: Any, field: str, value: str) -> Any:
    current = getattr(entry, field)
    if isinstance(current, tuple):
        return replace(entry, **{field: (value, *current[1:])})
    return replace(entry, **{field: value})


@pytest.mark.parametrize("name", CODECS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_codec_either_refuses_or_reads_back_exactly(name: str, data: Any) -> None:
    """Property: whatever text goes into whatever field, render either refuses or writes a file
    whose parse gives back exactly the entries (never one more, never another value)."""
    codec, entry = _entry(name)
    field = data.draw(st.sampled_from(_text_fields(entry)))
    piece = data.draw(st.lists(st.one_of(st.sampled_from(BREAKERS + SEPARATORS),
                                         st.text(max_size=4)), max_size=5).map("".join))
    current = getattr(entry, field)
    base = current[0] if isinstance(current, tuple) else current
    cut = data.draw(st.integers(0, len(base)))
    hostile = _replace_field(entry, field, base[:cut] + piece + base[cut:])
    try:
        text = _render(codec, [hostile])
    except RenderRefused:
        assert piece, "refused a valid entry"
        return
    if name == "quotas":  # by design: a size read with a CRLF ending is written without its CRs
        hostile = replace(hostile, size=hostile.size.rstrip("\r"))
    value = getattr(hostile, field)
    written = value[0] if isinstance(value, tuple) else value
    assert not any(c in written for c in "\n\r\0"), "a line break, CR or NUL was written"
    assert list(codec.parse(text).entries.values()) == [hostile]


def test_amavis_refuses_a_mailbox_that_breaks_the_perl_line() -> None:
    good = amavis.with_block(None, {"spam": "q@example.com"})
    assert amavis.parse(amavis.render(good)).block == {"spam": "q@example.com"}
    for mailbox in ('q@example.com";\nsystem("id");\n"', "q@example.com\n", 'q"@example.com',
                    "q\\@example.com", f"q@example.com\n{amavis.END}"):
        with pytest.raises(RenderRefused, match="amavis.cf: the entry '\\$spam_quarantine_to'"):
            amavis.render(amavis.with_block(None, {"spam": mailbox}))


def test_volume_lines_with_nul_or_cr_are_kept_as_they_are_never_read_as_entries() -> None:
    """What a line with a NUL or a CR inside means depends on the reader (Postfix stops at the
    NUL and reads the CR as a blank; DMS deletes CRs): kept verbatim, never managed."""
    text = "a@example.com b@example.com\n@x.org y\0z\nc@example.com d\re\n"
    parsed = virtual.parse(text)
    assert list(parsed.entries) == ["a@example.com"]
    assert parsed.invalid == ("@x.org y\0z", "c@example.com d\re")
    assert [p.line for p in parsed.problems] == [2, 3]
    again = virtual.render(parsed.entries.values(), invalid=parsed.invalid)
    assert "@x.org y\0z\n" in again and "c@example.com d\re\n" in again
    kept = regexp.parse("/a\0/ b@example.com\n/^c$/ d@example.com\n")
    assert list(kept.entries) == ["/^c$/"] and kept.invalid == ("/a\0/ b@example.com",)


# --- item 2, end to end: the relay injection, even past validation ------------------------------

BYPASS = (
    "import sys, reconciler.kinds.relay as rules\n"
    "rules.check_relay_host = lambda host: None\n"  # validation bypassed: the codec must hold
    "from reconciler.cli.main import main\n"
    "sys.argv[0] = 'dms-reconciler'\n"
    "main()\n"
)


def test_relay_injection_bypassing_validation_writes_nothing(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    (volume.config / "postfix-relaymap.cf").write_text("@example.org [old.example.net]:25\n")
    path = desired(tmp_path, f'example.com: {{host: "{INJECTION}", port: 25}}')
    before = volume.snapshot()
    assert run_cli("validate", "-f", str(path)).returncode == 1
    result = subprocess.run(
        [sys.executable, "-c", BYPASS, "apply", "-f", str(path), *volume.args()],
        capture_output=True, text=True, env=_env(), timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Traceback" not in out
    assert ("internal refusal: postfix-relaymap.cf: the entry '@example.com' would not read back "
            "as written (a value holds a line break); nothing was written") in out
    assert volume.snapshot() == before  # no file, no state file, no temp file, no folder
    assert sorted(p.name for p in volume.config.iterdir()) == ["postfix-relaymap.cf"]


def _env() -> dict[str, str]:
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
    env["PYTHONPATH"] = PYTHONPATH
    env["NO_COLOR"] = "1"
    return env


# --- item 2: Postfix reads exactly the relay map we meant ---------------------------------------

def _postmap(config: Path, table: Path, key: str) -> str | None:
    """`postmap -q KEY texthash:TABLE` with a private, empty main.cf: Postfix's own reading."""
    result = subprocess.run(["postmap", "-c", str(config), "-q", key, f"texthash:{table}"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode in (0, 1), result.stderr
    assert "warning" not in result.stderr, result.stderr
    return result.stdout.rstrip("\n") if result.returncode == 0 else None


def test_postmap_reads_exactly_the_declared_relays(tmp_path: Path) -> None:
    postmap = shutil.which("postmap") or shutil.which("postmap", path="/usr/sbin:/usr/bin")
    assert postmap, "Postfix's postmap is needed (CI installs postfix)"
    volume = make_volume(tmp_path / "dms")
    path = write_desired(tmp_path / "mailserver.yaml", f"""
        version: 1
        domains: [example.com, example.org, example.net, example.dev]
        accounts:
          admin@example.com:
            password_hash: "{ADMIN}"
        relay:
          example.com: {{host: smtp.relay.example, port: 587}}
          example.org: {{host: "fe80::1%eth0"}}
          example.net: {{host: "2001:db8::25", port: 2525}}
          example.dev: {{exclude: true}}
        """)
    applied = run_cli("apply", "-f", str(path), *volume.args())
    assert applied.returncode == 0, applied.stderr
    postfix_dir = tmp_path / "postfix"
    postfix_dir.mkdir()
    (postfix_dir / "main.cf").write_text("")
    table = volume.config / "postfix-relaymap.cf"
    lines = [line for line in table.read_text().splitlines() if not line.startswith("#")]
    expected = {"@example.com": "[smtp.relay.example]:587", "@example.org": "[fe80::1%eth0]:25",
                "@example.net": "[2001:db8::25]:2525"}
    assert sorted(lines) == sorted([f"{k} {v}" for k, v in expected.items()] + ["@example.dev "])
    # What DMS gives Postfix: the lines with a relay, copied by this very sed of
    # `_multiple_relayhosts` (helpers/relay.sh); the opt-out line only stops the RELAY_HOST default
    relayhost_map = tmp_path / "relayhost_map"
    copied = subprocess.run(["sed", "-n", "-r", r"/^\s*[^#[:space:]]\S*\s+\S/p", str(table)],
                            capture_output=True, text=True, check=True, timeout=30)
    relayhost_map.write_text(copied.stdout)
    for key, value in expected.items():
        assert _postmap(postfix_dir, relayhost_map, key) == value
    for stray in ("@victim.example", "[attacker.example]:25", "@example.dev", "example.com"):
        assert _postmap(postfix_dir, relayhost_map, stray) is None
    # Postfix's whole reading of it (`postmap -s` lists every key and value): exactly ours
    dump = subprocess.run(["postmap", "-c", str(postfix_dir), "-s", f"texthash:{relayhost_map}"],
                          capture_output=True, text=True, timeout=30)
    assert dump.returncode == 0 and not dump.stderr, dump.stderr
    assert dict(line.split(None, 1) for line in dump.stdout.splitlines()) == expected


# --- item 3: relay user names -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["relay-user", "apikey", "relay@example.com", "josé", "用户"])
def test_ordinary_relay_user_names_are_accepted(name: str) -> None:
    assert check_relay_username(name) is None


@pytest.mark.parametrize(("name", "shown"), [
    ("admin\u202egnp.exe", "U+202E"),  # right-to-left override: shows as "adminexe.png"
    ("ad\u200bmin", "U+200B"),  # zero-width space
    ("ad\u2066min", "U+2066"),  # bidi isolate
    ("ad\u00admin", "U+00AD"),  # soft hyphen
    ("ad\x1b[2Jmin", "U+001B"),  # terminal escape
    ("ad\x7fmin", "U+007F"),
    ("ad\ufeffmin", "U+FEFF"),
])
def test_invisible_characters_in_a_relay_user_name_are_refused(name: str, shown: str) -> None:
    problem = check_relay_username(name)
    assert problem and shown in problem and "control, bidi or invisible" in problem


def test_a_relay_user_name_with_a_bidi_override_is_refused_at_its_line(tmp_path: Path) -> None:
    path = desired(tmp_path, """
        example.com: {host: smtp.example.net, username: "admin\\u202Egnp.exe", password_env: PW}
        """)
    before = path.read_bytes()
    result = run_cli("validate", "-f", str(path))
    assert result.returncode == 1
    assert (f"{path}:7:51: error: relay.example.com.username: the relay user name has control, "
            "bidi or invisible characters (U+202E)") in result.stdout + result.stderr
    assert "\u202e" not in result.stdout + result.stderr
    assert path.read_bytes() == before


# --- item 4: the plan says whose credentials go to which host -----------------------------------

def _relay_plan(tmp_path: Path, volume: Any, relay: str, fmt: str) -> str:
    path = desired(tmp_path, relay)
    result = run_cli("plan", "-f", str(path), *volume.args(), "--format", fmt,
                     env={"RELAY_PW": "relay-Secret-1", "OTHER": "other-Secret-2"})
    assert result.returncode == 0, result.stderr
    assert "relay-Secret-1" not in result.stdout and "other-Secret-2" not in result.stdout
    return result.stdout


def _details(plan_json: str) -> dict[str, list[str]]:
    plan = json.loads(plan_json)
    said = {f"{c['kind']} {c['key']}": [d for d in c["details"] if d.startswith("credentials of")]
            for c in plan["changes"] if c["kind"] in ("relay", "relay_auth")}
    return {change: lines for change, lines in said.items() if lines}


def test_the_plan_names_the_secret_and_the_host_it_is_sent_to(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    (tmp_path / "pw").write_text("file-Secret-3\n")
    relay = """
        example.com: {host: smtp.relay.example, port: 587, username: u, password_env: RELAY_PW}
        example.org: {username: v, password_file: pw}
        """
    line_com = ("credentials of password_env RELAY_PW (user u) sent to host "
                "[smtp.relay.example]:587")
    line_org = ("credentials of password_file pw (user v) sent to DMS's default relay host "
                "(RELAY_HOST), if one is set")
    text = _relay_plan(tmp_path, volume, relay, "text")
    assert f"  + relay credentials @example.com: u:(sensitive)\n      {line_com}\n" in text
    assert f"  + relay credentials @example.org: v:(sensitive)\n      {line_org}\n" in text
    markdown = _relay_plan(tmp_path, volume, relay, "markdown")
    assert f"#     {line_com}" in markdown and f"#     {line_org}" in markdown
    assert _details(_relay_plan(tmp_path, volume, relay, "json")) == {
        "relay_auth @example.com": [line_com], "relay_auth @example.org": [line_org]}
    assert "file-Secret-3" not in text + markdown
    applied = run_cli("apply", "-f", str(tmp_path / "mailserver.yaml"), *volume.args(),
                      env={"RELAY_PW": "relay-Secret-1"})
    assert applied.returncode == 0, applied.stderr

    # unchanged: nothing to say
    assert _details(_relay_plan(tmp_path, volume, relay, "json")) == {}
    # only the host moves: said on the host's change, the same secret now goes elsewhere
    moved = relay.replace("smtp.relay.example, port: 587", "attacker.example")
    assert _details(_relay_plan(tmp_path, volume, moved, "json")) == {"relay @example.com": [
        "credentials of password_env RELAY_PW (user u) sent to host [attacker.example]:25"]}
    # only the source changes (another variable, same host): said on the credentials' change
    other = relay.replace("password_env: RELAY_PW", "password_env: OTHER")
    assert _details(_relay_plan(tmp_path, volume, other, "json")) == {"relay_auth @example.com": [
        "credentials of password_env OTHER (user u) sent to host [smtp.relay.example]:587"]}
    # credentials for a domain whose relay line the file does not declare: that line's host
    (volume.config / "postfix-relaymap.cf").write_text(
        (volume.config / "postfix-relaymap.cf").read_text() + "@example.org [mx.other.example]:2525\n")
    renamed = relay.replace("username: v", "username: w")
    assert _details(_relay_plan(tmp_path, volume, renamed, "json")) == {"relay_auth @example.org": [
        "credentials of password_file pw (user w) sent to host [mx.other.example]:2525"]}


# --- item 5: postfix-sasl-password.cf is kept private -------------------------------------------

def test_a_world_readable_sasl_file_is_rewritten_owner_only_with_a_warning(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    sasl_file = volume.config / "postfix-sasl-password.cf"
    sasl_file.write_text("@example.org hand:made-Secret-9\n")  # as `setup relay add-auth` does
    sasl_file.chmod(0o644)
    relay = "example.com: {host: smtp.relay.example, username: u, password_env: RELAY_PW}"
    text = _relay_plan(tmp_path, volume, relay, "text")
    warning = ("postfix-sasl-password.cf holds relay passwords in plain text and users other than "
               "its owner can read it (DMS's `setup relay add-auth` creates it so): apply rewrites "
               "it owner-only, mode 0600 (DMS reads it as root)")
    assert f"Warning: {warning}" in text
    assert warning in json.loads(_relay_plan(tmp_path, volume, relay, "json"))["warnings"]
    assert "users other than its owner can read it" in _relay_plan(tmp_path, volume, relay,
                                                                   "markdown")
    applied = run_cli("apply", "-f", str(tmp_path / "mailserver.yaml"), *volume.args(),
                      env={"RELAY_PW": "relay-Secret-1"})
    assert applied.returncode == 0, applied.stderr
    assert sasl_file.stat().st_mode & 0o777 == 0o600
    assert "@example.org hand:made-Secret-9" in sasl_file.read_text()  # unmanaged entry kept
    assert "can read it" not in _relay_plan(tmp_path, volume, relay, "text")  # private now

    sasl_file.chmod(0o640)  # loosened by hand while nothing changes: the plan says what to do
    quiet = _relay_plan(tmp_path, volume, relay, "text")
    assert quiet.endswith("No changes. The config volume matches mailserver.yaml.\n")
    assert ("users other than its owner can read it (DMS's `setup relay add-auth` creates it so): "
            "make it owner-only with `chmod 600 postfix-sasl-password.cf`") in quiet

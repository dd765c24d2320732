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

from reconciler.desired import schema
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
from reconciler.setup_rules import check_relay_host, check_relay_username
from tests.util import REPO, make_volume, run_cli, sha512_hash, write_desired

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

"""Issue 20, export and regexp hardening: export round-trips (apply -> export -> plan is empty,
with no false warning), adopts what DMS's setup CLI writes, leaves what it cannot express
unmanaged instead of failing, caps its warnings; regexp patterns mean in Postfix (real
`postmap -q`) what they declare.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.util import REPO, Volume, make_volume, run_cli, sha512_hash

ADMIN = sha512_hash("admin-pw", salt="adminSalt0001")
CAROL = sha512_hash("carol-pw", salt="carolSalt0002")
CASES = Path(__file__).parent / "cases"


def export(volume: Volume, out: Path, *extra: str):
    return run_cli("export", *volume.args(), "-o", str(out), "--force", *extra)


def plan_json(path: Path, volume: Volume) -> dict:
    result = run_cli("plan", "-f", str(path), *volume.args(), "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def assert_round_trip(volume: Volume, tmp_path: Path) -> None:
    """export twice (the second one is a re-export of an adopted volume): each says nothing about
    ownership, records it, and its file plans no change, not even a deletion."""
    for run in ("first", "again"):
        out = tmp_path / f"exported-{run}.yaml"
        done = export(volume, out)
        assert done.returncode == 0, done.stderr
        assert "ownership was not recorded" not in done.stderr, done.stderr
        assert "takes the mail" not in done.stderr, done.stderr
        assert "now manages these entries" in done.stdout
        text = run_cli("plan", "-f", str(out), *volume.args())
        assert text.returncode == 0, text.stderr
        assert "No changes. The config volume matches" in text.stdout, text.stdout
        assert plan_json(out, volume)["changes"] == []


# --- item 5: a catch-all to an account of its own domain, as DMS's setup makes it ------------


def test_export_adopts_a_catch_all_to_an_account_of_its_own_domain(tmp_path: Path) -> None:
    """`setup email add carol@example.net` + `setup alias add @example.net carol@example.net`:
    carol's mail goes to carol either way, so the planner wants no self-alias for her; export
    adopts the catch-all and does not warn that it takes carol's mail."""
    volume = make_volume(tmp_path / "dms")
    volume.write("postfix-accounts.cf", f"carol@example.net|{CAROL}\n")
    volume.write("postfix-virtual.cf", "@example.net carol@example.net\n")
    out = tmp_path / "mailserver.yaml"
    done = export(volume, out)
    assert done.returncode == 0, done.stderr
    assert "takes the mail" not in done.stderr and "left unmanaged" not in done.stderr
    assert "catch_all:\n  example.net: carol@example.net" in out.read_text()
    data = plan_json(out, volume)
    assert data["changes"] == [] and data["unmanaged"] == []


def test_export_still_refuses_a_catch_all_that_takes_another_accounts_mail(
    tmp_path: Path,
) -> None:
    """The trap stays a trap: dave has no self-alias, so the catch-all to carol takes his mail;
    adopting it would add dave's self-alias (a routing change)."""
    volume = make_volume(tmp_path / "dms")
    volume.write("postfix-accounts.cf",
                 f"carol@example.net|{CAROL}\ndave@example.net|{CAROL}\n")
    volume.write("postfix-virtual.cf", "@example.net carol@example.net\n")
    out = tmp_path / "mailserver.yaml"
    done = export(volume, out)
    assert done.returncode == 0, done.stderr
    assert "takes the mail of account(s) dave@example.net" in done.stderr
    assert "carol@example.net (no" not in done.stderr and "carol@example.net," not in done.stderr
    assert plan_json(out, volume)["changes"] == []


# --- item 6: apply -> export -> plan is empty, again and again --------------------------------


def test_the_bundled_example_round_trips(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    shutil.copytree(REPO / "examples" / "volume", volume.root, dirs_exist_ok=True)
    applied = run_cli("apply", "-f", str(REPO / "examples" / "mailserver.yaml"), *volume.args(),
                      env={"BOB_PASSWORD": "example-only"})
    assert applied.returncode == 0, applied.stderr
    assert_round_trip(volume, tmp_path)


def test_a_volume_with_every_kind_round_trips(tmp_path: Path) -> None:
    """masters, regexp aliases, restrictions, relay (with credentials, which export cannot
    write: they become unmanaged, kept, never deleted), DKIM, plus a catch-all."""
    case = CASES / "setup-features-empty-volume"
    shutil.copytree(case / "secrets", tmp_path / "secrets")
    desired = (case / "mailserver.yaml").read_text().replace(
        "\naliases:\n", "\ncatch_all:\n  example.org: jane@example.org\naliases:\n", 1)
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired)
    volume = make_volume(tmp_path / "dms")
    applied = run_cli("apply", "-f", str(path), *volume.args())
    assert applied.returncode == 0, applied.stderr
    sasl = volume.read("postfix-sasl-password.cf")
    assert_round_trip(volume, tmp_path)
    assert volume.read("postfix-sasl-password.cf") == sasl  # kept
    owned = json.loads(volume.read("dms-reconciler.state.json") or "{}")["owned"]
    assert "postfix-sasl-password.cf" not in owned  # no longer ours: never deleted by a plan
    for name in ("dovecot-masters.cf", "postfix-regexp.cf", "postfix-send-access.cf",
                 "postfix-relaymap.cf", "opendkim/KeyTable"):
        assert owned.get(name), name

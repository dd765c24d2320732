"""Hostile or damaged files of our own in the volume (issue 20): the state file, the record of
verified password files and a saved plan, nested deep enough to break json's recursive parser or
shaped unlike anything we write. Each is refused by name or read as lost; nothing is deleted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler import state
from reconciler.passwords import sources as passwords
from reconciler.reconcile import Target, apply_once, plan_once
from tests.support.util import Volume, make_volume, run_cli, sha512_hash, write_desired
from tests.support.watch_process import ADMIN_HASH, WatchProcess, wait_until

STATE = "dms-reconciler.state.json"
VERIFIED = "dms-reconciler.verified.json"
DEEP = 100_000  # json's parser recurses once a level: this is far past Python's limit


def deep(opening: str) -> str:
    """A JSON document nested DEEP levels (well-formed: only its depth is wrong)."""
    return '{"a": ' * DEEP + "1" + "}" * DEEP if opening == "{" else "[" * DEEP + "]" * DEEP


def desired_text(accounts: str = "", aliases: str = "") -> str:
    return f"""\
version: 1
domains: [example.com]
accounts:
  admin@example.com:
    password_hash: "{ADMIN_HASH}"
{accounts}aliases:
  info@example.com: admin@example.com
{aliases}"""


# A state file claiming the hand-made alias: trusted, it would delete it (the guard is that
# an unreadable one is never trusted at all).
CLAIMING = {"format": 1, "owned": {"postfix-virtual.cf": ["hand@example.com"]}}
DAMAGED_STATES = {
    "deep-array": '{"format": 1, "owned": {"postfix-virtual.cf": ["hand@example.com"]}, "x": '
                  + deep("[") + "}",
    "deep-object": deep("{"),
    "deep-only-array": "[" * DEEP,  # not even closed: still a RecursionError before the fix
    "deep-keys": json.dumps(CLAIMING)[:-1] + ', "owns_cron": ' + deep("[") + "}",
    "keys-not-strings": json.dumps({**CLAIMING, "owned": {"postfix-virtual.cf": [["hand@x"]]}}),
    "owned-a-list": json.dumps({**CLAIMING, "owned": [["postfix-virtual.cf", "hand@x"]]}),
    "format-true": json.dumps({**CLAIMING, "format": True}),
}


def hand_made_volume(root: Path) -> Volume:
    volume = make_volume(root)
    volume.write("postfix-virtual.cf", "hand@example.com admin@example.com\n")
    return volume


@pytest.mark.parametrize("shape", sorted(DAMAGED_STATES))
def test_a_damaged_state_file_is_a_lost_state_file(tmp_path: Path, shape: str) -> None:
    """plan and apply through a state file that cannot be trusted: the same plan and exit
    status as without one, a warning naming the file, nothing deleted, a good file written."""
    path = write_desired(tmp_path / "mailserver.yaml", desired_text())
    lost = hand_made_volume(tmp_path / "lost")
    damaged = hand_made_volume(tmp_path / "damaged")
    damaged.write(STATE, DAMAGED_STATES[shape])

    plans = {}
    for name, volume in (("lost", lost), ("damaged", damaged)):
        result = run_cli("plan", "-f", str(path), *volume.args(), "--format", "json",
                         "--detailed-exitcode")
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        plans[name] = json.loads(result.stdout)
    assert plans["damaged"]["changes"] == plans["lost"]["changes"]
    assert plans["damaged"]["unmanaged"] == plans["lost"]["unmanaged"] == [
        {"file": "postfix-virtual.cf", "kind": "alias", "key": "hand@example.com"}]
    warning = next(w for w in plans["damaged"]["warnings"] if STATE in w)
    assert "unreadable" in warning and "nothing is deleted" in warning
    if shape.startswith("deep"):
        assert "nested deeper than 64 levels" in warning

    text = run_cli("plan", "-f", str(path), *damaged.args())
    assert text.returncode == 0 and f"Warning: {STATE} is unreadable" in text.stdout

    applied = run_cli("apply", "-f", str(path), *damaged.args())
    assert applied.returncode == 0, applied.stderr
    assert f"{STATE} is unreadable" in applied.stdout
    assert "hand@example.com admin@example.com" in (damaged.read("postfix-virtual.cf") or "")
    ownership, problem = state.parse(damaged.read(STATE) or "")
    assert problem is None
    assert ownership.owned("postfix-virtual.cf") == {"info@example.com"}
    again = run_cli("plan", "-f", str(path), *damaged.args(), "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "unreadable" not in again.stdout + again.stderr


def test_a_deep_verified_record_only_costs_a_verification(
        tmp_path: Path, volume: Volume, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "RACY_NS", 0)  # files settle at once (the real window: 2 s)
    secret = tmp_path / "secret"
    secret.write_text("jane-password\n")
    jane = f"  jane@example.com:\n    password_file: {secret}\n"
    path = write_desired(tmp_path / "mailserver.yaml", desired_text(jane))
    target = Target(str(path), volume.value)
    apply_once(target)
    record = volume.file(VERIFIED)
    assert len(json.loads(record.read_text())["facts"]) == 1
    for damaged in (deep("["), deep("{"), '{"format": 1, "facts": ' + deep("[") + "}"):
        record.write_text(damaged)
        planned = plan_once(target)  # the record is read as empty: jane is verified again
        assert not planned.plan.has_changes
        assert apply_once(target).result.written == ()
    path.write_text(desired_text(jane, "  sales@example.com: admin@example.com\n"))
    apply_once(target)  # a real change: the record is written again, whole
    assert len(json.loads(record.read_text())["facts"]) == 1


def saved_plan(tmp_path: Path) -> tuple[Path, Volume, dict]:  # type: ignore[type-arg]
    volume = make_volume(tmp_path / "dms")
    path = write_desired(tmp_path / "mailserver.yaml", desired_text())
    out = tmp_path / "plan.json"
    made = run_cli("plan", "-f", str(path), *volume.args(), "--out", str(out))
    assert made.returncode == 0, made.stderr
    return out, volume, json.loads(out.read_text())


def _nul_target(saved: dict) -> dict:  # type: ignore[type-arg]
    saved["target"]["config_dir"] += "\0x"
    return saved


def _surrogate_target(saved: dict) -> dict:  # type: ignore[type-arg]
    saved["target"]["desired_path"] = "\ud800"
    return saved


def _files_not_mappings(saved: dict) -> dict:  # type: ignore[type-arg]
    saved["plan"]["files"] = [1, "x"]
    return saved


@pytest.mark.parametrize("damage", [
    pytest.param(lambda saved: deep("["), id="deep-array"),
    pytest.param(lambda saved: deep("{"), id="deep-object"),
    pytest.param(lambda saved: json.dumps(saved)[:-1] + ', "x": ' + deep("[") + "}",
                 id="deep-inside-a-good-plan"),
    pytest.param(lambda saved: json.dumps(_files_not_mappings(saved)), id="files-not-mappings"),
    pytest.param(lambda saved: json.dumps(_nul_target(saved)), id="nul-in-a-path"),
    pytest.param(lambda saved: json.dumps(_surrogate_target(saved)), id="surrogate-in-a-path"),
])
def test_apply_refuses_a_damaged_saved_plan_by_name(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    out, volume, saved = saved_plan(tmp_path)
    out.write_text(damage(saved))
    before = volume.snapshot()
    result = run_cli("apply", str(out))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert str(out) in result.stderr
    assert ("not a saved plan" in result.stderr or "damaged saved plan" in result.stderr), \
        result.stderr
    assert volume.snapshot() == before


def test_the_sidecar_converges_through_a_deep_state_file(tmp_path: Path) -> None:
    """The sidecar meets the deep file at its first apply and again after it was written: each
    time it applies, keeps the hand-made entry and rewrites a good record."""
    volume = hand_made_volume(tmp_path / "dms")
    volume.write(STATE, DAMAGED_STATES["deep-array"])
    path = tmp_path / "desired" / "mailserver.yaml"
    path.parent.mkdir()
    path.write_text(desired_text())
    watcher = WatchProcess(["-f", str(path), *volume.args(), "--interval", "1"], cwd=tmp_path)
    with watcher:
        watcher.wait_for_log(lambda r: r["message"] == "applied", what="the first apply")
        unreadable = f"{STATE} is unreadable (its JSON is nested deeper than 64 levels)"
        assert any(r["level"] == "warning" and r["message"].startswith(unreadable)
                   for r in watcher.records())
        assert state.parse(volume.read(STATE) or "")[1] is None
        assert "hand@example.com admin@example.com" in (volume.read("postfix-virtual.cf") or "")

        mark = watcher.count()
        volume.write(STATE, deep("{"))  # damaged again while it runs: the timer repairs it
        wait_until(lambda: state.parse(volume.read(STATE) or "")[1] is None, 15,
                   "the state file rewritten")
        watcher.wait_for_log(lambda r: r["message"].startswith(unreadable), after=mark,
                             what="the warning")
        owned = state.parse(volume.read(STATE) or "")[0].owned("postfix-virtual.cf")
        assert owned == {"info@example.com"}
        assert "hand@example.com admin@example.com" in (volume.read("postfix-virtual.cf") or "")
        assert watcher.terminate() == 0
    assert not any(r["level"] == "error" for r in watcher.records()), watcher.raw_log()



# --- a tampered state file may not delete hand-made entries of any kind ---------------------------

MASTER_HASH = sha512_hash("master-pw", salt="mastersalt")
# file -> (a hand-made line, the key the state file claims): what DMS's setup CLI writes
HAND_MADE = {
    "dovecot-masters.cf": (f"boss|{MASTER_HASH}\n", "boss"),
    "postfix-regexp.cf": ("/^test[0-9]+@example\\.com$/ admin@example.com\n",
                          "/^test[0-9]+@example\\.com$/"),
    "postfix-send-access.cf": ("jane@example.com \t\t REJECT\n", "jane@example.com"),
    "postfix-receive-access.cf": ("jane@example.com \t\t REJECT\n", "jane@example.com"),
    "postfix-relaymap.cf": ("@example.com [smtp.relay.example.net]:587\n", "@example.com"),
    "postfix-sasl-password.cf": ("@example.com relay-user:relay-secret\n", "@example.com"),
    "opendkim/KeyTable": ("mail._domainkey.example.com "
                          "example.com:mail:/etc/opendkim/keys/example.com/mail.private\n",
                          "mail._domainkey.example.com"),
    "opendkim/SigningTable": ("*@example.com mail._domainkey.example.com\n", "*@example.com"),
    "rspamd/override.d/actions.conf": ("reject = 20;\n", "reject"),
}


def tampered(root: Path, name: str) -> Volume:
    """A volume whose `name` holds one hand-made entry, and a state file claiming we wrote it."""
    volume = make_volume(root)
    line, key = HAND_MADE[name]
    (volume.config / name).parent.mkdir(parents=True, exist_ok=True)
    volume.write(name, line)
    claim = {"format": 1, "plan_key": "", "owns_cron": False, "owned": {name: [key]}}
    volume.write(STATE, json.dumps(claim))
    return volume


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_a_state_file_claiming_a_hand_made_entry_deletes_nothing(tmp_path: Path,
                                                                  name: str) -> None:
    """Accounts have always been guarded so (a plan deleting more than half of what the state
    file says we manage is refused); every other kind of entry now is too."""
    path = write_desired(tmp_path / "mailserver.yaml", desired_text())
    volume = tampered(tmp_path / "dms", name)
    before = volume.snapshot()

    result = run_cli("plan", "-f", str(path), *volume.args(), "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["deletions"]["over_limit"] is True
    assert data["deletions"]["files"] == [{
        "file": name, "deletions": 1, "limit": 0,
        "limit_source": f"half of the entries of {name} this tool manages"}]
    text = run_cli("plan", "-f", str(path), *volume.args())
    assert (f"Refused at apply: 1 deletion(s) in {name} exceed the limit of 0 "
            f"(half of the entries of {name} this tool manages); apply needs "
            "--allow-deletions 1") in text.stdout
    markdown = run_cli("plan", "-f", str(path), *volume.args(), "--format", "markdown")
    assert "Apply will refuse this plan" in markdown.stdout and name in markdown.stdout

    refused = run_cli("apply", "-f", str(path), *volume.args())
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert f"deletes 1 entry(ies) of {name}, more than 0" in refused.stderr, refused.stderr
    assert "--allow-deletions 1" in refused.stderr
    assert volume.snapshot() == before

    # as for accounts: a reviewed deletion goes through with --allow-deletions
    allowed = run_cli("apply", "-f", str(path), *volume.args(), "--allow-deletions", "1")
    assert allowed.returncode == 0, allowed.stderr
    assert HAND_MADE[name][0] not in (volume.read(name) or "")


def test_the_sidecar_refuses_the_deletion_a_tampered_state_file_asks_for(tmp_path: Path) -> None:
    volume = tampered(tmp_path / "dms", "postfix-relaymap.cf")
    path = tmp_path / "desired" / "mailserver.yaml"
    path.parent.mkdir()
    path.write_text(desired_text())
    with WatchProcess(["-f", str(path), *volume.args(), "--interval", "3600"],
                      cwd=tmp_path) as watcher:
        record = watcher.wait_for_log(lambda r: r["message"].startswith("refused:"),
                                      what="the refusal")
        assert "postfix-relaymap.cf" in record["message"]
        assert volume.read("postfix-relaymap.cf") == HAND_MADE["postfix-relaymap.cf"][0]
        assert watcher.terminate() == 0

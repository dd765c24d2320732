"""User-owned passwords (`update_password: on_create`): the initial password is set when the
account is created, and afterwards whatever hash its user gave it is kept: never reverted by
plan, apply or the sidecar's drift repair, and its secret is not even needed any more.

The real DMS proof (`setup email update`, IMAP) is tests/realdms/test_user_owned.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.passwords.sources import Secret, verify
from tests.support.ci_util import make_repo
from tests.support.util import Volume, make_volume, run_cli, sha512_hash

INITIAL = "initial-Owned-Secret-1a"
USERS_OWN = "users-own-Secret-2b"
USERS_HASH = sha512_hash(USERS_OWN, salt="usersalt")
ENV = {"JANE_INITIAL": INITIAL, "BOB_PASSWORD": "bob-Managed-Secret-3c"}
DESIRED = """\
version: 1
domains: [example.com]
accounts:
  jane@example.com:
    password_env: JANE_INITIAL
    update_password: on_create
  bob@example.com:
    password_env: BOB_PASSWORD
"""


@pytest.fixture
def desired(tmp_path: Path) -> Path:
    path = tmp_path / "mailserver.yaml"
    path.write_text(DESIRED)
    return path


@pytest.fixture
def volume(tmp_path: Path) -> Volume:
    return make_volume(tmp_path / "dms")


def hashes(volume: Volume) -> dict[str, str]:
    text = volume.read("postfix-accounts.cf") or ""
    return dict(line.split("|", 1) for line in text.splitlines() if "|" in line)


def user_changes_password(volume: Volume, address: str, new_hash: str) -> None:
    """What `setup email update` (and doveadm pw + sed, or a webmail plugin) does."""
    path = volume.file("postfix-accounts.cf")
    lines = [f"{address}|{new_hash}" if line.startswith(address + "|") else line
             for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")


def test_created_with_the_initial_password_and_the_plan_says_so(desired: Path,
                                                                  volume: Volume) -> None:
    plan = run_cli("plan", "-f", str(desired), *volume.args(), env=ENV)
    assert plan.returncode == 0, plan.stderr
    assert ("initial password only (update_password: on_create) for jane@example.com: set now, "
            "then owned by the user") in " ".join(plan.stdout.split()), plan.stdout
    assert run_cli("apply", "-f", str(desired), *volume.args(), env=ENV).returncode == 0
    assert verify(Secret(INITIAL), hashes(volume)["jane@example.com"])
    again = run_cli("plan", "-f", str(desired), *volume.args(), env=ENV)
    assert "No changes." in again.stdout and "initial password only" not in again.stdout


def test_a_password_its_user_changed_is_never_reverted(desired: Path, volume: Volume) -> None:
    assert run_cli("apply", "-f", str(desired), *volume.args(), env=ENV).returncode == 0
    user_changes_password(volume, "jane@example.com", USERS_HASH)
    user_changes_password(volume, "bob@example.com", sha512_hash("bob-changed", salt="bobsalt"))
    before = volume.snapshot()
    plan = run_cli("plan", "-f", str(desired), *volume.args(), "--format", "json", env=ENV)
    changed = {c["key"] for c in json.loads(plan.stdout)["changes"]}
    assert changed == {"bob@example.com"}  # the managed password is repaired, jane's is hers
    applied = run_cli("apply", "-f", str(desired), *volume.args(), env=ENV)
    assert applied.returncode == 0, applied.stderr
    assert hashes(volume)["jane@example.com"] == USERS_HASH
    assert verify(Secret(ENV["BOB_PASSWORD"]), hashes(volume)["bob@example.com"])
    assert before != volume.snapshot()  # bob's line was written; jane's stayed as she set it


def test_the_initial_secret_is_not_needed_once_the_account_exists(desired: Path,
                                                                  volume: Volume) -> None:
    assert run_cli("apply", "-f", str(desired), *volume.args(), env=ENV).returncode == 0
    user_changes_password(volume, "jane@example.com", USERS_HASH)
    before = volume.snapshot()
    env = {"BOB_PASSWORD": ENV["BOB_PASSWORD"]}  # JANE_INITIAL is gone from the environment
    plan = run_cli("plan", "-f", str(desired), *volume.args(), "--detailed-exitcode", env=env)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    applied = run_cli("apply", "-f", str(desired), *volume.args(), env=env)
    assert applied.returncode == 0, applied.stderr
    assert volume.snapshot() == before  # nothing written, not even touched


def test_an_account_removed_by_hand_is_made_again_with_the_initial_password(
        desired: Path, volume: Volume) -> None:
    assert run_cli("apply", "-f", str(desired), *volume.args(), env=ENV).returncode == 0
    path = volume.file("postfix-accounts.cf")
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if not line.startswith("jane@")))
    assert run_cli("apply", "-f", str(desired), *volume.args(), env=ENV).returncode == 0
    assert verify(Secret(INITIAL), hashes(volume)["jane@example.com"])


def test_the_sidecar_leaves_a_user_owned_password_alone(desired: Path, volume: Volume,
                                                        tmp_path: Path) -> None:
    from tests.support.watch_process import WatchProcess, wait_until

    with WatchProcess(["-f", str(desired), *volume.args(), "--interval", "1"], cwd=tmp_path,
                      env=ENV) as watcher:
        watcher.wait_for_log(lambda r: r["message"] == "applied", what="the first apply")
        total = "dms_reconciler_reconciles_total"
        user_changes_password(volume, "jane@example.com", USERS_HASH)
        before, counted = volume.snapshot(), watcher.metric(total)
        changed = watcher.metric(total, result="changed")
        # two timer resyncs after the change: drift repair has looked at it (twice)
        wait_until(lambda: watcher.metric(total) >= counted + 2, 20, "two resyncs")
        assert watcher.metric(total, result="changed") == changed
        assert volume.snapshot() == before
        assert hashes(volume)["jane@example.com"] == USERS_HASH


def test_ci_plan_shows_turning_ownership_back_as_a_change(tmp_path: Path) -> None:
    """Dropping `update_password: on_create` makes apply reset the user's password: the pull
    request's plan shows it; adding it shows nothing (nothing is written)."""
    repo = make_repo(tmp_path / "repo")
    repo.commit(DESIRED.replace("    update_password: on_create\n", ""), "managed")
    repo.write(DESIRED)
    to_owned = repo.plan_json("--against-ref", "main")
    assert to_owned["summary"]["has_changes"] is False, to_owned["changes"]
    repo.commit(DESIRED, "user-owned")
    repo.write(DESIRED.replace("    update_password: on_create\n", ""))
    back = repo.plan_json("--against-ref", "main")
    (change,) = back["changes"]
    assert change["key"] == "jane@example.com"
    assert ("password source: env:JANE_INITIAL (user-owned) -> env:JANE_INITIAL"
            in " ".join(change["details"])), change


def test_update_password_takes_always_or_on_create(tmp_path: Path) -> None:
    path = tmp_path / "mailserver.yaml"
    path.write_text(DESIRED.replace("on_create", "once"))
    done = run_cli("validate", "-f", str(path))
    assert done.returncode == 1
    assert ("mailserver.yaml:6:22: error: accounts.jane@example.com.update_password: 'once' is "
            "not allowed here; use one of: always, on_create") in done.stdout, done.stdout
    path.write_text(DESIRED.replace("on_create", "always"))
    assert run_cli("validate", "-f", str(path)).returncode == 0

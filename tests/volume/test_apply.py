"""apply through the real CLI: deletion limits, saved plans, file modes and owners.

Every command runs as a user would run it (`python -m reconciler`, tests.support.util.run_cli). "Nothing
was written" is checked with a snapshot of every file: bytes, mtime and inode.
"""

from __future__ import annotations

import json
import os
import stat
import textwrap
from pathlib import Path

import pytest

from reconciler.errors import Refused
from reconciler.load.desired import load_desired
from reconciler.model import DesiredState
from reconciler.planner.make import make_plan
from reconciler.volume.executor import check_safety
from reconciler.volume.observe import observe
from tests.support.util import Volume, run_cli, sha512_hash, write_desired

DOMAINS = "domains: [example.com, example.org]"


def hashes(n: int) -> list[str]:
    return [sha512_hash(f"password-{i}", salt=f"salt{i:04d}") for i in range(n)]


def accounts_yaml(names: list[str], extra: str = "") -> str:
    """A mailserver.yaml with one password_hash account per name (user@example.com)."""
    hs = hashes(10)
    lines = ["version: 1", DOMAINS, "accounts:"]
    for name in names:
        lines += [f"  {name}@example.com:", f'    password_hash: "{hs[int(name[-1])]}"']
    return "\n".join(lines) + "\n" + extra


def apply_ok(desired: Path, volume: Volume, *args: str, env: dict[str, str] | None = None) -> str:
    result = run_cli("apply", "-f", str(desired), *volume.args(), *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def managed(tmp_path: Path, volume: Volume) -> tuple[Path, Volume]:
    """A volume where this tool already manages u0..u5@example.com."""
    desired = write_desired(tmp_path / "mailserver.yaml",
                            accounts_yaml([f"u{i}" for i in range(6)]))
    apply_ok(desired, volume)
    return desired, volume


# --- deletion limits --------------------------------------------------------------------------

def test_default_limit_refuses_deleting_more_than_half_the_managed_accounts(managed, tmp_path):
    desired, volume = managed
    write_desired(desired, accounts_yaml(["u0", "u1"]))  # deletes 4 of 6; the limit is 3
    before = volume.snapshot()

    plan = run_cli("plan", "-f", str(desired), *volume.args(), "--format", "json")
    data = json.loads(plan.stdout)
    assert data["deletions"] == {"accounts": 4, "limit": 3, "over_limit": True,
                                 "limit_source": "half of the accounts this tool manages"}
    text = run_cli("plan", "-f", str(desired), *volume.args())
    assert "Refused at apply: 4 account deletion(s) exceed the limit of 3" in text.stdout

    refused = run_cli("apply", "-f", str(desired), *volume.args())
    assert refused.returncode == 1
    assert "deletes 4 account(s), more than 3" in refused.stderr
    assert "--allow-deletions 4" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert volume.snapshot() == before

    too_few = run_cli("apply", "-f", str(desired), *volume.args(), "--allow-deletions", "3")
    assert too_few.returncode == 1 and volume.snapshot() == before

    apply_ok(desired, volume, "--allow-deletions", "4")
    assert set(_accounts(volume)) == {"u0@example.com", "u1@example.com"}


def test_deleting_exactly_half_is_allowed_by_default(managed):
    desired, volume = managed
    write_desired(desired, accounts_yaml(["u0", "u1", "u2"]))
    apply_ok(desired, volume)
    assert set(_accounts(volume)) == {"u0@example.com", "u1@example.com", "u2@example.com"}


def test_policy_max_deletions_is_the_limit(managed):
    desired, volume = managed
    write_desired(desired, accounts_yaml(["u0", "u1", "u2", "u3", "u4"],
                                         "policy:\n  max_deletions: 0\n"))
    before = volume.snapshot()
    refused = run_cli("apply", "-f", str(desired), *volume.args())
    assert refused.returncode == 1
    assert "more than 0 (policy.max_deletions)" in refused.stderr
    assert volume.snapshot() == before
    apply_ok(desired, volume, "--allow-deletions", "1")
    assert "u5@example.com" not in _accounts(volume)


def test_unmanaged_accounts_do_not_count_towards_the_default_limit(tmp_path, volume):
    # Nothing is managed yet (a volume made by setup), so --prune may delete none by default.
    hs = hashes(3)
    volume.write("postfix-accounts.cf", f"u0@example.com|{hs[0]}\nlegacy@example.com|{hs[1]}\n")
    desired = write_desired(tmp_path / "mailserver.yaml", accounts_yaml(["u0"]))
    before = volume.snapshot()
    refused = run_cli("apply", "-f", str(desired), *volume.args(), "--prune")
    assert refused.returncode == 1 and "more than 0" in refused.stderr
    assert volume.snapshot() == before
    apply_ok(desired, volume, "--prune", "--allow-deletions", "1")
    assert _accounts(volume) == ["u0@example.com"]


# --- never zero accounts ----------------------------------------------------------------------

def test_a_desired_state_without_accounts_is_refused_and_nothing_is_written(managed):
    desired, volume = managed
    desired.write_text(f"version: 1\n{DOMAINS}\naccounts: {{}}\n")
    before = volume.snapshot()
    result = run_cli("apply", "-f", str(desired), *volume.args(), "--allow-deletions", "100")
    assert result.returncode == 1
    assert "account" in result.stderr and "Traceback" not in result.stderr
    assert volume.snapshot() == before


def test_the_executor_guard_refuses_a_plan_that_leaves_no_account(managed):
    # The loader never yields a state without accounts; the guard behind it must hold anyway.
    desired, volume = managed
    state = load_desired(str(desired)).state
    empty = DesiredState(state.version, state.domains, ())
    observed = observe(volume.value)
    plan = make_plan(empty, observed, {}, prune=True)
    with pytest.raises(Refused, match="without accounts"):
        check_safety(plan, allow_deletions=100)


# --- saved plans ------------------------------------------------------------------------------

@pytest.fixture
def with_secrets(tmp_path: Path, volume: Volume) -> tuple[Path, Volume, dict[str, str]]:
    """A managed volume whose accounts use password_file and password_env (so it has a plan key)."""
    (tmp_path / "jane.txt").write_text("jane-secret-1\n")
    desired = write_desired(tmp_path / "mailserver.yaml", f"""
        version: 1
        {DOMAINS}
        accounts:
          jane@example.org:
            password_file: jane.txt
          bob@example.org:
            password_env: BOB_PASSWORD
        """)
    env = {"BOB_PASSWORD": "bob-secret-1"}
    apply_ok(desired, volume, env=env)
    desired.write_text(desired.read_text() + "aliases:\n  team@example.org: [jane@example.org]\n")
    return desired, volume, env


def test_apply_of_a_saved_plan_applies_exactly_it(with_secrets, tmp_path):
    desired, volume, env = with_secrets
    saved = tmp_path / "reviewed.plan"
    plan = run_cli("plan", "-f", str(desired), *volume.args(), "--out", str(saved), env=env)
    assert plan.returncode == 0 and saved.exists()
    assert stat.S_IMODE(saved.stat().st_mode) & 0o077 == 0
    reviewed = json.loads(saved.read_text())["plan"]["changes"]
    assert [(c["file"], c["key"], c["actions"]) for c in reviewed] == [
        ("postfix-virtual.cf", "team@example.org", ["create"])]

    # apply PLAN needs neither -f nor the volume options: the plan knows where it came from
    applied = run_cli("apply", str(saved), env=env, cwd=str(tmp_path))
    assert applied.returncode == 0, applied.stderr
    assert "Entries: 1 added, 0 changed, 0 destroyed" in applied.stdout
    virtual = volume.read("postfix-virtual.cf").splitlines()
    assert virtual[1:] == ["team@example.org jane@example.org"]
    again = run_cli("plan", "-f", str(desired), *volume.args(), "--detailed-exitcode", env=env)
    assert again.returncode == 0, again.stdout


def test_a_plan_saved_with_relative_paths_applies_from_anywhere(tmp_path):
    # The defaults are relative (./mailserver.yaml, docker-data/dms/config): the common case.
    root = tmp_path / "srv"
    (root / "docker-data/dms/config").mkdir(parents=True)
    (root / "docker-data/dms/cron").mkdir(parents=True)
    (root / "jane.txt").write_text("jane-secret-1\n")
    text = accounts_yaml(["u0"], "aliases:\n  team@example.com: [u0@example.com]\n")
    jane = "  jane@example.org:\n    password_file: jane.txt\n"
    write_desired(root / "mailserver.yaml", text.replace("accounts:\n", "accounts:\n" + jane))
    plan = run_cli("plan", "--out", "reviewed.plan", cwd=str(root))
    assert plan.returncode == 0, plan.stderr
    applied = run_cli("apply", str(root / "reviewed.plan"), cwd=str(tmp_path))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "Entries: 3 added" in applied.stdout
    again = run_cli("plan", "--detailed-exitcode", cwd=str(root))
    assert again.returncode == 0, again.stdout


@pytest.mark.parametrize("what", ["volume", "desired", "password_file", "password_env"])
def test_apply_of_a_saved_plan_refuses_when_anything_changed_since(with_secrets, tmp_path, what):
    desired, volume, env = with_secrets
    saved = tmp_path / "reviewed.plan"
    assert run_cli("plan", "-f", str(desired), *volume.args(), "--out", str(saved),
                   env=env).returncode == 0
    if what == "volume":  # `setup alias add` appends with >>
        with open(volume.file("postfix-virtual.cf"), "a") as handle:
            handle.write("info@example.org jane@example.org\n")
    elif what == "desired":
        desired.write_text(desired.read_text().replace("[jane@example.org]",
                                                       "[jane@example.org, bob@example.org]"))
    elif what == "password_file":
        (tmp_path / "jane.txt").write_text("jane-secret-2\n")
    else:
        env = {"BOB_PASSWORD": "bob-secret-2"}
    before = volume.snapshot()

    refused = run_cli("apply", str(saved), env=env)
    assert refused.returncode == 1
    assert "make a new plan" in refused.stderr and "Traceback" not in refused.stderr
    expected = {"volume": "the config volume changed since the plan was made",
                "desired": "changed since the plan was made",
                "password_file": "a password from password_file or password_env changed",
                "password_env": "a password from password_file or password_env changed"}[what]
    assert expected in refused.stderr
    assert volume.snapshot() == before


def test_a_saved_plan_refuses_when_a_deletion_exceeds_the_limit(managed, tmp_path):
    desired, volume = managed
    write_desired(desired, accounts_yaml(["u0"]))
    saved = tmp_path / "p.plan"
    assert run_cli("plan", "-f", str(desired), *volume.args(), "--out", str(saved)).returncode == 0
    before = volume.snapshot()
    refused = run_cli("apply", str(saved))
    assert refused.returncode == 1 and "more than 3" in refused.stderr
    assert volume.snapshot() == before
    applied = run_cli("apply", str(saved), "--allow-deletions", "5")
    assert applied.returncode == 0, applied.stderr
    assert _accounts(volume) == ["u0@example.com"]


# --- modes and owners ---------------------------------------------------------------------------

def test_rewrites_keep_mode_and_owner_and_new_files_are_private(tmp_path, volume):
    hs = hashes(3)
    volume.write("postfix-accounts.cf", f"u0@example.com|{hs[0]}\n")
    volume.write("postfix-virtual.cf", "a@example.com u0@example.com\n")
    volume.cron.write_text("# hand-made\n")
    os.chmod(volume.file("postfix-accounts.cf"), 0o600)
    os.chmod(volume.file("postfix-virtual.cf"), 0o664)
    os.chmod(volume.cron, 0o640)
    if os.geteuid() == 0:
        os.chown(volume.file("postfix-accounts.cf"), 5000, 5000)
        os.chown(volume.file("postfix-virtual.cf"), 5000, 1234)
    old = {name: volume.file(name).stat() for name in
           ("postfix-accounts.cf", "postfix-virtual.cf", "cron")}
    extra = textwrap.dedent("""
        aliases:
          a@example.com: [u0@example.com, u1@example.com]
        quarantine:
          mailbox: u0@example.com
        sa_learn:
          - schedule: "@daily"
            learn: spam
            folder: .Junk
        """)
    desired = write_desired(tmp_path / "mailserver.yaml", accounts_yaml(["u0", "u1"], extra))
    apply_ok(desired, volume)

    for name, st in old.items():
        now = volume.file(name).stat()
        assert stat.S_IMODE(now.st_mode) == stat.S_IMODE(st.st_mode), name
        assert (now.st_uid, now.st_gid) == (st.st_uid, st.st_gid), name
    # config files are replaced atomically (a new inode); the cron file, a single-file bind
    # mount, is rewritten in place (the same inode)
    assert volume.file("postfix-accounts.cf").stat().st_ino != old["postfix-accounts.cf"].st_ino
    assert volume.cron.stat().st_ino == old["cron"].st_ino
    # files created now: nothing holding hashes (or the plan key) is readable by others
    assert stat.S_IMODE(volume.file("dms-reconciler.state.json").stat().st_mode) == 0o600
    for name in ("amavis.cf",):
        assert volume.file(name).exists()
    assert not [p for p in volume.config.iterdir() if p.name.startswith(".")]  # no temp files
    assert not (volume.config / "check-for-changes.sh.lock").exists()


def test_a_new_accounts_file_is_not_world_readable(tmp_path, volume):
    desired = write_desired(tmp_path / "mailserver.yaml", accounts_yaml(["u0"]))
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        apply_ok(desired, volume)
    finally:
        os.umask(old_umask)
    mode = stat.S_IMODE(volume.file("postfix-accounts.cf").stat().st_mode)
    assert mode & 0o007 == 0, oct(mode)


def _accounts(volume: Volume) -> list[str]:
    text = volume.read("postfix-accounts.cf") or ""
    return [line.split("|")[0] for line in text.splitlines() if "|" in line]


# --- self-routes (issue 22) -------------------------------------------------------------------

CATCH_ALL_DOMAIN = "catch_all: {example.com: a0@example.com}\n"


def test_self_routes_are_put_in_place_before_postfix_virtual(tmp_path, volume):
    """DMS's change detector hashes postfix-virtual.cf, then postfix-regexp.cf, before it waits
    for our lock, and installs only what changed in that snapshot: writing postfix-regexp.cf
    first, DMS never runs the new postfix-virtual.cf (here: the old self-aliases gone and a new
    catch-all) without the self-routes."""
    names = [f"a{i}" for i in range(3)]
    desired = write_desired(tmp_path / "mailserver.yaml", accounts_yaml(names, CATCH_ALL_DOMAIN))
    lines = [f"{n}@example.com|{h}" for n, h in zip(names, hashes(3), strict=True)]
    volume.write("postfix-accounts.cf", "\n".join(lines) + "\n")
    volume.write("postfix-virtual.cf", "a1@example.com a1@example.com\n")
    volume.write("dms-reconciler.state.json", json.dumps(
        {"format": 1, "owns_cron": False, "owned": {"postfix-virtual.cf": ["a1@example.com"]}}))
    done = run_cli("apply", "-f", str(desired), *volume.args(), "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    written = json.loads(done.stdout)["applied"]["files_written"]
    assert written.index("postfix-regexp.cf") < written.index("postfix-virtual.cf"), written
    assert "a1@example.com a1" not in volume.read("postfix-virtual.cf")
    assert r"/^a2@example\.com$/ a2@example.com" in volume.read("postfix-regexp.cf")


def test_removing_a_catch_all_is_not_refused_for_its_self_routes(tmp_path, volume):
    """Self-routes follow the accounts and catch-alls: the deletion guard of postfix-regexp.cf
    (mass deletions of declared patterns) neither counts them nor refuses their deletion."""
    names = [f"a{i}" for i in range(6)]
    desired = write_desired(tmp_path / "mailserver.yaml", accounts_yaml(names, CATCH_ALL_DOMAIN))
    apply_ok(desired, volume)
    assert volume.read("postfix-regexp.cf").count("\n") == 1 + 2 * 5  # header, a1..a5
    desired.write_text(accounts_yaml(names))
    apply_ok(desired, volume)
    assert "example" not in volume.read("postfix-regexp.cf")

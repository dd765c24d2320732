"""`plan --against-ref` and `--against-dir`: what a pull request does, without the live volume.

Each test builds a real git repository with mailserver.yaml versions and runs the real CLI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.formats import cron
from tests.support.ci_util import Repo, actions, git, make_repo
from tests.support.util import make_volume, run_cli, sha512_hash

# Known secrets: none of them, nor any hash, may ever appear in what plan prints.
PLAIN = {
    "bob": "bob-plaintext-Secret-1",
    "kim_old": "kim-old-plaintext-Secret-2",
    "kim_new": "kim-new-plaintext-Secret-3",
}
HASH = {
    "admin": sha512_hash("admin-pass", salt="adminsalt"),
    "dave": sha512_hash("dave-pass", salt="davesalt"),
    "gina_old": sha512_hash("gina-pass-1", salt="ginasalt1"),
    "gina_new": sha512_hash("gina-pass-2", salt="ginasalt2"),
    "hank": sha512_hash("hank-pass", salt="hanksalt"),
    "erin": sha512_hash("erin-pass", salt="erinsalt"),
}
FORBIDDEN = [*PLAIN.values(), *HASH.values(), *(h.split("$")[-1] for h in HASH.values()),
             "$6$", "{SHA512-CRYPT}", "DMS-RECONCILER-UNRESOLVED"]

BASE = f"""
version: 1
domains: [example.com, example.org]
accounts:
  admin@example.com: {{password_hash: "{HASH['admin']}", quota: 5G}}
  bob@example.org: {{password_env: BOB_PASSWORD}}
  carol@example.org: {{password_file: /nonexistent/dms-test/carol}}
  dave@example.org: {{password_hash: "{HASH['dave']}", quota: 1G}}
  erin@example.org: {{password_env: ERIN_PASSWORD}}
  gina@example.org: {{password_hash: "{HASH['gina_old']}"}}
  hank@example.org: {{password_hash: "{HASH['hank']}"}}
  jane@example.org: {{password_file: secrets/jane.txt}}
  kim@example.org: {{password_file: secrets/kim-old.txt}}
aliases:
  postmaster@example.com: admin@example.com
  sales@example.com: admin@example.com
  team@example.org: [jane@example.org, bob@example.org]
devnull: [noreply@example.com]
sa_learn:
  - {{schedule: "0 2 * * *", learn: spam, folder: .Junk, accounts: [admin@example.com]}}
"""

HEAD = f"""
version: 1
domains: [example.com, example.org]
accounts:
  admin@example.com: {{password_hash: "{HASH['admin']}", quota: 10G}}
  bob@example.org: {{password_env: BOB_PASSWORD}}
  carol@example.org: {{password_file: /nonexistent/dms-test/carol}}
  erin@example.org: {{password_hash: "{HASH['erin']}"}}
  frank@example.org: {{password_env: FRANK_PASSWORD}}
  gina@example.org: {{password_hash: "{HASH['gina_new']}"}}
  hank@example.org: {{password_file: secrets/hank.txt}}
  jane@example.org: {{password_file: secrets/jane-new.txt}}
  kim@example.org: {{password_file: secrets/kim-new.txt}}
aliases:
  postmaster@example.com: admin@example.com
  orders@example.com: admin@example.com
  team@example.org: [jane@example.org, bob@example.org, carol@example.org]
devnull: [noreply@example.com]
sa_learn:
  - {{schedule: "0 3 * * *", learn: spam, folder: .Junk, accounts: [admin@example.com]}}
"""

def sa_learn_line(hour: int) -> str:
    return cron.job_line(f"0 {hour} * * *", "spam", "example.com", "admin", ".Junk")


EXPECTED = {
    ("update", "quota", "admin@example.com"),
    ("delete", "account", "dave@example.org"),
    ("delete", "quota", "dave@example.org"),
    ("update", "account", "erin@example.org"),  # env -> hash
    ("create", "account", "frank@example.org"),
    ("update", "account", "gina@example.org"),  # hash value changed
    ("update", "account", "hank@example.org"),  # hash -> file
    ("update", "account", "jane@example.org"),  # file path changed, new file unreadable
    ("update", "account", "kim@example.org"),  # file path changed, new file readable
    ("create", "alias", "orders@example.com"),  # the renamed alias ...
    ("delete", "alias", "sales@example.com"),  # ... is a create and a delete
    ("update", "alias", "team@example.org"),
    ("create", "sa_learn", sa_learn_line(3)),
    ("delete", "sa_learn", sa_learn_line(2)),
}
ENV = {"BOB_PASSWORD": PLAIN["bob"]}  # bob's secret is readable; carol's, erin's ... are not


def _two_commits(root: Path) -> Repo:
    """Two commits: BASE on main, HEAD on a branch; secrets beside the file, not in git."""
    repo = make_repo(root)
    repo.commit(BASE, "base")
    git(repo.root, "checkout", "-q", "-b", "change")
    repo.commit(HEAD, "the change")
    secrets = repo.root / "secrets"
    secrets.mkdir()
    (secrets / "kim-old.txt").write_text(PLAIN["kim_old"] + "\n")
    (secrets / "kim-new.txt").write_text(PLAIN["kim_new"] + "\n")
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """Shared by the tests that only read it (each plan run costs about a second)."""
    return _two_commits(tmp_path_factory.mktemp("ci") / "repo")


@pytest.fixture
def own_repo(tmp_path: Path) -> Repo:
    """For tests that change the repository."""
    return _two_commits(tmp_path / "repo")


@pytest.fixture(scope="module")
def main_plan(repo: Repo) -> dict:
    return repo.plan_json("--against-ref", "main", env=ENV)


def assert_no_secret(text: str) -> None:
    for secret in FORBIDDEN:
        assert secret not in text


def by_key(plan: dict, kind: str, key: str) -> dict:
    return next(c for c in plan["changes"] if c["kind"] == kind and c["key"] == key)


def test_plan_between_two_commits_lists_exactly_what_the_change_does(repo: Repo,
                                                                     main_plan: dict) -> None:
    plan = main_plan
    assert actions(plan) == EXPECTED
    assert plan["summary"] == {"add": 3, "change": 7, "destroy": 4, "unmanaged": 0,
                               "has_changes": True}
    assert plan["baseline"]["kind"] == "git" and plan["baseline"]["found"] is True
    assert plan["baseline"]["commit"] == git(repo.root, "rev-parse", "main")
    assert plan["unmanaged"] == []  # the rendered base holds only what mailserver.yaml declared


def test_unchanged_password_sources_are_not_changes(main_plan: dict) -> None:
    plan = main_plan
    touched = {c["key"] for c in plan["changes"] if c["kind"] == "account"}
    # a readable env secret (bob), an unreadable file (carol) and an unchanged hash (admin)
    assert not touched & {"admin@example.com", "bob@example.org", "carol@example.org"}
    assert "carol@example.org" not in plan["unresolved_secrets"]


def test_password_source_changes_show_as_changes_and_say_what_changed(main_plan: dict) -> None:
    plan = main_plan
    jane = by_key(plan, "account", "jane@example.org")
    assert jane["after"] == {"password": "(sensitive, resolved at apply)"}
    assert jane["details"] == [("password source: file:secrets/jane.txt -> file:secrets/"
                                "jane-new.txt (the secret is read and hashed at apply)")]
    kim = by_key(plan, "account", "kim@example.org")
    assert kim["after"] == {"password": "(sensitive)"}  # readable: a new hash at apply
    assert "file:secrets/kim-old.txt -> file:secrets/kim-new.txt" in kim["details"][0]
    assert by_key(plan, "account", "erin@example.org")["details"][0].startswith(
        "password source: env:ERIN_PASSWORD -> hash")
    assert by_key(plan, "account", "hank@example.org")["details"][0].startswith(
        "password source: hash -> file:secrets/hank.txt")
    assert "password_hash changed" in by_key(plan, "account", "gina@example.org")["details"][0]
    assert sorted(plan["unresolved_secrets"]) == ["frank@example.org", "hank@example.org",
                                                  "jane@example.org"]
    frank = by_key(plan, "account", "frank@example.org")
    assert frank["after"] == {"password": "(sensitive, resolved at apply)"}


def test_same_version_is_no_change_and_exit_0(repo: Repo) -> None:
    """Every source kind (hash, readable env, unreadable env/file) compared with itself."""
    done = repo.plan("--against-ref", "HEAD", "--detailed-exitcode", env=ENV)
    assert done.returncode == 0, done.stderr
    assert "No changes. The config volume matches mailserver.yaml." in done.stdout
    assert repo.plan("--against-ref", "change", "--format", "json",
                     env=ENV).stdout.count('"has_changes": false') == 1


def test_detailed_exitcode_and_text_form(repo: Repo) -> None:
    done = repo.plan("--against-ref", "main", "--detailed-exitcode", env=ENV)
    assert done.returncode == 2, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Planned against mailserver.yaml at main (")
    assert lines[-1] == "Plan: 3 to add, 7 to change, 4 to destroy."
    removed = "  - alias sales@example.com -> admin@example.com  # removed from mailserver.yaml"
    assert removed in lines
    assert "  + alias orders@example.com -> admin@example.com" in lines
    # paths are where apply would write, not the throw-away volume's
    assert "# docker-data/dms/cron/sa-learn (sa-learn cron file)" in lines
    assert "dms-reconciler-base-" not in done.stdout + done.stderr


@pytest.mark.parametrize("fmt", ["text", "json", "markdown"])
def test_no_secret_or_hash_in_any_form(repo: Repo, fmt: str) -> None:
    done = repo.plan("--against-ref", "main", "--format", fmt, env=ENV)
    assert done.returncode == 0, done.stderr
    assert_no_secret(done.stdout + done.stderr)


def test_file_missing_at_ref_is_an_empty_base(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo.root / "README").write_text("first\n")
    git(repo.root, "add", "README")
    git(repo.root, "commit", "-q", "-m", "no mailserver.yaml yet")
    repo.commit(HEAD, "add mailserver.yaml")
    plan = repo.plan_json("--against-ref", "HEAD~1", env=ENV)
    assert plan["baseline"]["found"] is False
    assert {c["actions"][0] for c in plan["changes"]} == {"create"}
    assert ("create", "account", "bob@example.org") in actions(plan)
    # bob's env secret is readable, so the new account gets a hash at apply
    assert by_key(plan, "account", "bob@example.org")["after"] == {"password": "(sensitive)"}
    text = repo.plan("--against-ref", "HEAD~1", env=ENV).stdout
    assert "does not exist yet: everything is new" in text


def test_file_in_a_subfolder_run_from_elsewhere(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", rel="ops/mail/mailserver.yaml")
    repo.commit(BASE, "base")
    repo.write(BASE.replace("sales@example.com", "orders@example.com"))  # uncommitted edit
    done = run_cli("plan", "-f", str(repo.file), "--against-ref", "HEAD", "--format", "json",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["baseline"]["path"] == "ops/mail/mailserver.yaml"
    assert actions(plan) == {("create", "alias", "orders@example.com"),
                             ("delete", "alias", "sales@example.com")}


def test_bad_ref_is_a_clear_error(repo: Repo) -> None:
    for ref in ("no-such-branch", "-x", "main~99"):
        done = repo.plan("--against-ref", ref, env=ENV)
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith("dms-reconciler: error: --against-ref ")
        assert done.stdout == ""


def test_file_invalid_at_ref_is_a_clear_error(own_repo: Repo) -> None:
    repo = own_repo
    git(repo.root, "checkout", "-q", "main")
    repo.commit(BASE.replace("quota: 5G", "quota: lots"), "break it")
    git(repo.root, "checkout", "-q", "change")
    done = repo.plan("--against-ref", "main", env=ENV)
    assert done.returncode == 1
    assert "main:mailserver.yaml:4:" in done.stderr  # names the ref, the line and the column
    assert "main:mailserver.yaml is not valid, so there is no base to plan against" in done.stderr
    assert "Traceback" not in done.stderr


def test_invalid_working_file_fails_before_git(own_repo: Repo) -> None:
    repo = own_repo
    repo.write(HEAD + "bogus: 1\n")
    done = repo.plan("--against-ref", "main", env=ENV)
    assert done.returncode == 1
    assert "unknown key 'bogus'" in done.stderr
    assert "Traceback" not in done.stderr


def test_outside_a_git_repository(tmp_path: Path) -> None:
    (tmp_path / "mailserver.yaml").write_text(HEAD.lstrip("\n"))
    done = run_cli("plan", "-f", str(tmp_path / "mailserver.yaml"), "--against-ref", "main",
                   env={"GIT_CEILING_DIRECTORIES": str(tmp_path.parent)})
    assert done.returncode == 1
    assert "is not inside a git repository" in done.stderr


@pytest.mark.parametrize("extra, message", [
    (["--out", "p.json"], "--out cannot be used with --against-ref"),
    (["--config-dir", "x"], "--config-dir cannot be used with --against-ref"),
    (["--no-offline"], "--no-offline cannot be used with --against-ref"),
    (["--against-dir", "."], "give --against-ref or --against-dir, not both"),
])
def test_option_clashes_are_usage_errors(repo: Repo, extra: list[str], message: str) -> None:
    done = repo.plan("--against-ref", "main", *extra, env=ENV)
    assert done.returncode == 1
    assert message in done.stderr
    assert not (repo.root / "p.json").exists()


def test_against_ref_writes_nothing_in_the_repository(repo: Repo) -> None:
    before = git(repo.root, "status", "--porcelain", "--ignored")
    repo.plan("--against-ref", "main", env=ENV)
    assert git(repo.root, "status", "--porcelain", "--ignored") == before
    assert not (repo.root / "docker-data").exists()


# --- --against-dir ---------------------------------------------------------------------------

SMALL = f"""
version: 1
domains: [example.com]
accounts:
  admin@example.com: {{password_hash: "{HASH['admin']}"}}
  bob@example.com: {{password_env: BOB_PASSWORD}}
sa_learn:
  - {{schedule: "0 2 * * *", learn: spam, folder: .Junk}}
"""
CRON_LINE = cron.job_line("0 2 * * *", "spam", "*", "*", ".Junk")


def _copy_of_volume(root: Path, with_cron: bool) -> Path:
    volume = make_volume(root / "dms")
    volume.write("postfix-accounts.cf", f"admin@example.com|{HASH['admin']}\n"
                                        f"bob@example.com|{HASH['dave']}\n")
    volume.write("postfix-virtual.cf", "old@example.com admin@example.com\n")
    if with_cron:
        volume.write("cron", CRON_LINE + "\n")
    return volume.config


@pytest.mark.parametrize("with_cron", [True, False])
def test_against_dir_finds_the_cron_file_beside_config(tmp_path: Path, with_cron: bool) -> None:
    config = _copy_of_volume(tmp_path, with_cron)
    desired = tmp_path / "mailserver.yaml"
    desired.write_text(SMALL.lstrip("\n"))
    before = {p: p.read_bytes() for p in (tmp_path / "dms").rglob("*") if p.is_file()}
    done = run_cli("plan", "-f", str(desired), "--against-dir", str(config), "--format", "json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["baseline"] == {"kind": "dir", "config_dir": str(config),
                                "cron_file": str(tmp_path / "dms" / "cron" / "sa-learn"),
                                "cron_found": with_cron}
    cron_changes = {(c["actions"][0], c["key"]) for c in plan["changes"] if c["kind"] == "sa_learn"}
    assert cron_changes == (set() if with_cron else {("create", CRON_LINE)})
    # bob's secret cannot be read: offline by default, so no failure and no change claimed
    assert plan["unresolved_secrets"] == ["bob@example.com"]
    assert [u["key"] for u in plan["unmanaged"]] == ["old@example.com"]
    assert len(plan["volume"]["fingerprint"]) == 7  # a real copy: fingerprinted like a volume
    after = {p: p.read_bytes() for p in (tmp_path / "dms").rglob("*") if p.is_file()}
    assert after == before  # nothing written to the copy


def test_against_dir_explicit_cron_file_and_no_offline(tmp_path: Path) -> None:
    config = _copy_of_volume(tmp_path, with_cron=False)
    desired = tmp_path / "mailserver.yaml"
    desired.write_text(SMALL.lstrip("\n"))
    cron = tmp_path / "elsewhere-sa-learn"
    cron.write_text(CRON_LINE + "\n")
    done = run_cli("plan", "-f", str(desired), "--against-dir", str(config), "--cron-file",
                   str(cron), "--format", "json")
    plan = json.loads(done.stdout)
    assert plan["baseline"]["cron_file"] == str(cron)
    assert not [c for c in plan["changes"] if c["kind"] == "sa_learn"]
    strict = run_cli("plan", "-f", str(desired), "--against-dir", str(config), "--no-offline")
    assert strict.returncode == 1
    assert "BOB_PASSWORD is not set" in strict.stderr
    missing = run_cli("plan", "-f", str(desired), "--against-dir", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def test_git_ref_is_not_run_through_a_shell(repo: Repo) -> None:
    marker = repo.root / "pwned"
    done = repo.plan("--against-ref", f"main;touch {marker}", env=ENV)
    assert done.returncode == 1
    assert not marker.exists()
    assert not os.path.exists("pwned")

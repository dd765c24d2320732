"""The questionable cases, decided (README "Decisions"): each refusal or warning, pinned."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.util import make_volume, run_cli, sha512_hash, write_desired

ADMIN = sha512_hash("admin-pw", salt="adminSalt0001")
JANE = sha512_hash("jane-pw", salt="janeSalt00002")
ONE_ACCOUNT = f"""
    version: 1
    domains: [example.com]
    accounts:
      admin@example.com: {{password_hash: "{ADMIN}"}}
"""
BASE = ONE_ACCOUNT + """\
    aliases:
      info@example.com: admin@example.com
    """


def _plan(desired: Path, volume, *extra: str) -> dict:
    done = run_cli("plan", "-f", str(desired), *volume.args(), "--format", "json", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_duplicate_hand_written_lines_dropped_by_a_rewrite_are_minus_lines(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    volume.write("postfix-virtual.cf", "info@example.com admin@example.com\n"
                                       "old@example.com admin@example.com\n"
                                       "old@example.com elsewhere@example.net\n")
    volume.write("postfix-accounts.cf", f"admin@example.com|{ADMIN}\n"
                                        f"admin@example.com|{JANE}\n")
    desired = write_desired(tmp_path / "mailserver.yaml", BASE)
    plan = _plan(desired, volume)
    assert plan["changes"] == []  # nothing to change: the files are not rewritten, duplicates stay
    assert any("duplicate" in w for w in plan["warnings"])

    changed = write_desired(tmp_path / "changed.yaml",
                            BASE.rstrip(" ") + "      new@example.com: admin@example.com\n")
    plan = _plan(changed, volume)
    dropped = [c for c in plan["changes"] if "duplicate line" in c["reason"]]
    assert [(c["file"], c["key"], c["actions"]) for c in dropped] == [
        ("postfix-virtual.cf", "old@example.com", ["delete"])]
    assert dropped[0]["before"] == {"targets": ["elsewhere@example.net"]}
    assert dropped[0]["reason"].startswith("duplicate line 3 (DMS uses only line 2)")
    text = run_cli("plan", "-f", str(changed), *volume.args()).stdout
    assert "  - alias old@example.com -> elsewhere@example.net  # duplicate line 3" in text

    # an account line repeated is dropped by a rewrite too, and is no account deletion
    volume.write("postfix-accounts.cf", f"admin@example.com|{ADMIN}\n"
                                        f"admin@example.com|{JANE}\n"
                                        f"legacy@example.com|{JANE}\n")
    plan = _plan(desired, volume, "--prune")
    reasons = [c["reason"] for c in plan["changes"] if c["file"] == "postfix-accounts.cf"]
    assert reasons[0].startswith("not in mailserver.yaml and prune is on")
    assert reasons[1].startswith("duplicate line 2") and len(reasons) == 2
    assert plan["deletions"]["accounts"] == 1


def test_a_state_file_from_a_newer_format_is_refused_not_overwritten(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    newer = json.dumps({"format": 2, "owned": {"postfix-accounts.cf": ["admin@example.com"]}})
    volume.write("dms-reconciler.state.json", newer)
    desired = write_desired(tmp_path / "mailserver.yaml", BASE)
    before = volume.snapshot()
    for command in ("plan", "apply"):
        done = run_cli(command, "-f", str(desired), *volume.args())
        assert done.returncode == 1, done.stdout
        assert "written by a newer dms-reconciler (state format 2" in done.stderr
        assert "Traceback" not in done.stderr
    assert volume.snapshot() == before
    volume.write("dms-reconciler.state.json", "{not json")  # damaged: still only a warning
    assert run_cli("apply", "-f", str(desired), *volume.args()).returncode == 0


def test_secrets_dir_confines_password_files(tmp_path: Path) -> None:
    """--secrets-dir (DMS_RECONCILER_SECRETS_DIR): a password_file must resolve, after every
    symlink, to a file inside the folder; Kubernetes' `..data` symlinks inside it are fine."""
    volume = make_volume(tmp_path / "dms")
    secrets = tmp_path / "secrets"
    (secrets / "..2024_01_01").mkdir(parents=True)
    (secrets / "..2024_01_01" / "jane").write_text("jane-Secret-1\n")
    (secrets / "..data").symlink_to("..2024_01_01")
    (secrets / "jane").symlink_to("..data/jane")
    (tmp_path / "outside.txt").write_text("outside-Secret-1\n")
    (secrets / "escape").symlink_to(tmp_path / "outside.txt")

    def plan(path: str, *args: str, env: dict[str, str] | None = None):
        desired = write_desired(tmp_path / "mailserver.yaml", BASE)
        text = desired.read_text().replace(
            "aliases:", f"  jane@example.com: {{password_file: '{path}'}}\naliases:")
        desired.write_text(text)
        return run_cli("plan", "-f", str(desired), *volume.args(), *args, env=env)

    assert plan(str(secrets / "jane"), "--secrets-dir", str(secrets)).returncode == 0
    for path in (str(tmp_path / "outside.txt"), str(secrets / "escape"),
                 str(secrets / ".." / "outside.txt")):
        refused = plan(path, "--secrets-dir", str(secrets))
        assert refused.returncode == 1, path
        assert "outside the allowed folder" in refused.stderr and "Secret-1" not in refused.stderr
        by_env = plan(path, env={"DMS_RECONCILER_SECRETS_DIR": str(secrets)})
        assert by_env.returncode == 1 and "outside the allowed folder" in by_env.stderr
    assert plan(str(tmp_path / "outside.txt")).returncode == 0  # without the option: anywhere

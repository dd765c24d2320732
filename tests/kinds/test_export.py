"""export through the real CLI: a volume made by DMS's `setup` CLI becomes a mailserver.yaml that
validates and whose plan against that same volume is empty but for the sa-learn
lines' current form.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import yaml

from reconciler.formats import cron
from tests.support.util import Volume, run_cli, sha512_hash

ADMIN = sha512_hash("admin-pw", salt="adminSalt0001")
JANE = sha512_hash("jane-pw", salt="janeSalt00002")
JANE2 = sha512_hash("jane-pw-2", salt="janeSalt00003")
PAL = sha512_hash("pal-pw", salt="palSalt000004")
AL = sha512_hash("al-pw", salt="alSalt0000005")
DB = "--dbpath /var/mail-state/lib-amavis/.spamassassin > /dev/null"


def build_like_setup_cli(volume: Volume) -> None:
    """The volume DMS and its `setup` CLI leave behind, step by step (reference §1, §2, §8).

    DMS's start-up creates an empty dovecot-quotas.cf; `setup email add` and `setup alias add`
    append with `>>`; a second `setup alias add` for the same alias appends `,target` to its line
    with sed; `setup email update` and `setup quota set` edit lines with `sed -i`. The devnull
    recipe and the sa-learn cron file are written by hand, as the DMS FAQ says.
    """
    volume.write("dovecot-quotas.cf", "")
    accounts = volume.file("postfix-accounts.cf")
    virtual = volume.file("postfix-virtual.cf")

    def append(path: Path, line: str) -> None:
        with open(path, "a") as handle:
            handle.write(line + "\n")

    append(accounts, f"admin@example.com|{ADMIN}")            # setup email add admin@...
    append(accounts, f"jane@example.org|{JANE}")              # setup email add jane@...
    append(accounts, f"pal@example.org|{PAL}")                # setup email add pal@...
    append(accounts, f"al@example.org|{AL}")                  # setup email add al@...
    accounts.write_text(accounts.read_text().replace(JANE, JANE2))  # setup email update jane@...
    append(virtual, "postmaster@example.com admin@example.com")     # setup alias add
    append(virtual, "team@example.org jane@example.org")            # setup alias add
    virtual.write_text(virtual.read_text().replace(                 # setup alias add team@ again
        "team@example.org jane@example.org",
        "team@example.org jane@example.org,partner@elsewhere.net"))
    append(virtual, "noreply@example.com devnull")                  # FAQ: devnull recipe
    volume.write("postfix-aliases.cf", "devnull: /dev/null\n")
    quotas = volume.file("dovecot-quotas.cf")
    append(quotas, "admin@example.com:5G")                          # setup quota set
    append(quotas, "pal@example.org:1G")                            # setup quota set
    append(quotas, "al@example.org:2G")                             # al gets pal's 1G in DMS
    volume.cron.write_text(                                         # FAQ: sa-learn cron
        f"0 2 * * * root sa-learn --spam /var/mail/example.com/admin/.Junk {DB}\n"
        f"30 3 * * * root sa-learn --ham /var/mail/example.org/*/cur {DB}\n")


def export(volume: Volume, out: Path):
    return run_cli("export", *volume.args(), "-o", str(out))


def test_export_of_a_setup_cli_volume_validates_and_plans_no_change(tmp_path, volume):
    build_like_setup_cli(volume)
    before = volume.snapshot()
    out = tmp_path / "mailserver.yaml"

    result = export(volume, out)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds password hashes
    # The FAQ's sa-learn lines are read back as our jobs; the only change is their new form,
    # which learns into the database Amavis reads (the export says so). That plan is not empty,
    # so export records no ownership: the first apply does, and says why.
    assert volume.snapshot() == before  # bytes, mtime, inode
    assert "the sa-learn cron lines are in the DMS FAQ's old form" in result.stderr
    assert "ownership was not recorded" in result.stderr

    assert run_cli("validate", "-f", str(out)).returncode == 0
    plan = run_cli("plan", "-f", str(out), *volume.args(), "--format", "json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    changes = json.loads(plan.stdout)["changes"]
    assert [(c["file"], c["actions"]) for c in changes] == [("cron", ["update"])] * 2
    assert all("lib-amavis" in c["before"]["line"] and "/var/lib/amavis/" in c["after"]["line"]
               for c in changes)
    assert "the plan rewrites its lines to /var/lib/amavis/.spamassassin" in result.stderr

    doc = yaml.safe_load(out.read_text())
    assert doc["domains"] == ["example.com", "example.org"]
    assert doc["accounts"]["jane@example.org"] == {"password_hash": JANE2}  # the updated hash
    assert doc["accounts"]["admin@example.com"]["quota"] == "5G"
    assert doc["aliases"]["team@example.org"] == ["jane@example.org", "partner@elsewhere.net"]
    assert doc["devnull"] == ["noreply@example.com"]
    assert {job["learn"] for job in doc["sa_learn"]} == {"spam", "ham"}
    # al's 2G is not what DMS applies (its grep finds pal's line first): not adopted, said so
    assert "quota" not in doc["accounts"]["al@example.org"]
    assert "al@example.org" in result.stderr and "left unmanaged" in result.stderr


def test_export_hands_over_ownership(tmp_path, volume):
    """export, remove an account from the file, apply: the account is deleted (its mail kept),
    as it would be after a first apply; the rest is unchanged."""
    build_like_setup_cli(volume)
    volume.cron.write_text(  # already in the current form: the export's plan is empty
        cron.job_line("0 2 * * *", "spam", "example.com", "admin", ".Junk") + "\n"
        + cron.job_line("30 3 * * *", "ham", "example.org", "*", "cur") + "\n")
    out = tmp_path / "mailserver.yaml"
    done = export(volume, out)
    assert done.returncode == 0 and "now manages these entries" in done.stdout
    owned = yaml.safe_load(volume.read("dms-reconciler.state.json"))["owned"]
    assert "jane@example.org" in owned["postfix-accounts.cf"]
    doc = yaml.safe_load(out.read_text())
    del doc["accounts"]["pal@example.org"]
    out.write_text(yaml.safe_dump(doc))
    plan = run_cli("plan", "-f", str(out), *volume.args())
    assert "  - account pal@example.org" in plan.stdout, plan.stdout
    assert "Plan: 0 to add, 0 to change, 2 to destroy." in plan.stdout  # the account and quota
    assert run_cli("apply", "-f", str(out), *volume.args()).returncode == 0
    assert "pal@example.org|" not in volume.read("postfix-accounts.cf")


def test_export_no_adopt_leaves_ownership_to_the_first_apply(tmp_path, volume):
    build_like_setup_cli(volume)
    out = tmp_path / "mailserver.yaml"
    before = volume.snapshot()
    done = run_cli("export", *volume.args(), "-o", str(out), "--no-adopt")
    assert done.returncode == 0 and "stay unmanaged until the first apply" in done.stdout
    assert volume.snapshot() == before  # --no-adopt only reads the volume
    applied = run_cli("apply", "-f", str(out), *volume.args())
    assert applied.returncode == 0, applied.stderr
    after = volume.snapshot()
    assert set(after) - set(before) == {"config/dms-reconciler.state.json"}
    # the FAQ's sa-learn lines get their new form; nothing else is touched
    assert "/var/lib/amavis/.spamassassin" in after["cron/sa-learn"][0].decode()
    assert {k: v for k, v in after.items() if k in before and k != "cron/sa-learn"} == {
        k: v for k, v in before.items() if k != "cron/sa-learn"}  # bytes, mtime, inode
    owned = yaml.safe_load(volume.read("dms-reconciler.state.json"))["owned"]
    assert "admin@example.com" in owned["postfix-accounts.cf"]


def test_export_refuses_to_overwrite_and_a_volume_without_accounts(tmp_path, volume):
    out = tmp_path / "mailserver.yaml"
    out.write_text("keep me\n")
    build_like_setup_cli(volume)
    refused = export(volume, out)
    assert refused.returncode == 1 and "exists" in refused.stderr
    assert out.read_text() == "keep me\n"

    empty = Volume(tmp_path / "empty")
    empty.config.mkdir(parents=True)
    result = export(empty, tmp_path / "other.yaml")
    assert result.returncode == 1 and "no account" in result.stderr
    assert not (tmp_path / "other.yaml").exists()
    assert "Traceback" not in result.stderr


def test_the_exported_schema_reference_names_the_real_schema_file(tmp_path, volume):
    """One URL everywhere: the schema's `$id`, which is schema/mailserver.schema.json of this
    repository as served from its main branch; the repository is the one users are told to use
    for pre-commit and CI."""
    import json
    import re

    from tests.support.util import REPO

    build_like_setup_cli(volume)
    out = tmp_path / "mailserver.yaml"
    assert export(volume, out).returncode == 0
    first = out.read_text().splitlines()[0]
    schema_id = json.loads((REPO / "schema" / "mailserver.schema.json").read_text())["$id"]
    assert first == f"# yaml-language-server: $schema={schema_id}"
    match = re.fullmatch(r"https://raw\.githubusercontent\.com/([^/]+/[^/]+)/main/(.+)", schema_id)
    assert match and (REPO / match.group(2)).is_file()
    repo_url = f"https://github.com/{match.group(1)}"
    assert f"repo: {repo_url}" in (REPO / "docs" / "ci.md").read_text()
    assert f"DMS_RECONCILER_REPO: {repo_url}" in (
        REPO / "examples" / "ci" / "github-actions.yml").read_text()
    readme = (REPO / "README.md").read_text()
    assert f"$schema={schema_id}" in readme

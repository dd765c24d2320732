"""No command output holds a password or a password hash (product.md §4), with known values.

One realistic run through the real CLI: validate, plan in every format and saved, apply, apply of a
saved plan, export, and the error paths a user meets (refused deletions, a stale saved plan, a
missing secret). Every stdout and stderr, and the saved plan file, is searched for every plaintext,
every hash and every hash's digest part, including the hashes apply made itself.
"""

from __future__ import annotations

import hashlib
import json

from tests.util import run_cli, sha512_hash, write_desired

JANE_SECRET = "Jane-Plain-Secret-1"
BOB_SECRET = "Bob-Plain-Secret-1"
BOB_NEW_SECRET = "Bob-Plain-Secret-2"
MASTER_SECRET = "Master-Plain-Secret-3"
RELAY_SECRET = "Relay-Plain-Secret-4"
ADMIN = sha512_hash("admin-pw", salt="adminSalt0001")
BOB_OLD = sha512_hash("bob-old", salt="bobSalt000002")
LEGACY = sha512_hash("legacy-pw", salt="legacySalt003")
JUNK = sha512_hash("junk-pw", salt="junkSalt00004")


def forbidden(*hashes: str) -> list[str]:
    """The plaintexts, each hash, and each hash without its `{SCHEME}$6$salt$` prefix."""
    out = [JANE_SECRET, BOB_SECRET, BOB_NEW_SECRET, "admin-pw", "bob-old", "legacy-pw",
           MASTER_SECRET, RELAY_SECRET]
    for h in hashes:
        out += [h, h.rsplit("$", 1)[1]]
    return out


def test_no_output_of_any_command_holds_a_password_or_hash(tmp_path, volume):
    (tmp_path / "jane.txt").write_text(JANE_SECRET + "\n")
    (tmp_path / "boss.txt").write_text(MASTER_SECRET + "\n")
    desired = write_desired(tmp_path / "mailserver.yaml", f"""
        version: 1
        domains: [example.com, example.org]
        accounts:
          admin@example.com:
            password_hash: "{ADMIN}"
          jane@example.org:
            password_file: jane.txt
          bob@example.org:
            password_env: BOB_PASSWORD
        aliases:
          team@example.org: [jane@example.org, bob@example.org]
        masters:
          boss:
            password_file: boss.txt
        relay:
          example.com:
            host: smtp.relay.example.net
            username: relay-user
            password_env: RELAY_PASSWORD
        dkim:
          example.com:
            key_size: 1024
        """)
    volume.write("postfix-accounts.cf", (
        f"admin@example.com|{ADMIN}\nbob@example.org|{BOB_OLD}\nlegacy@example.com|{LEGACY}\n"
        f"  junk@example.com|{JUNK}\nempty@example.com|\n"))
    env = {"BOB_PASSWORD": BOB_SECRET, "RELAY_PASSWORD": RELAY_SECRET}
    outputs: dict[str, str] = {}

    def run(name: str, *args: str, expect: int = 0, env_: dict[str, str] | None = None) -> None:
        result = run_cli(*args, env=env if env_ is None else env_, cwd=str(tmp_path))
        assert result.returncode == expect, (name, result.stdout, result.stderr)
        outputs[name] = result.stdout + result.stderr

    common = ["-f", str(desired), *volume.args()]
    run("validate", "validate", "-f", str(desired))
    run("validate json", "validate", "-f", str(desired), "--format", "json")
    for fmt in ("text", "json", "markdown"):
        run(f"plan {fmt}", "plan", *common, "--format", fmt)
        run(f"plan {fmt} prune", "plan", *common, "--format", fmt, "--prune")
    run("plan missing secret", "plan", *common, expect=1, env_={})
    run("plan offline", "plan", *common, "--offline", env_={})
    run("plan out", "plan", *common, "--out", str(tmp_path / "saved.plan"))
    outputs["saved plan file"] = (tmp_path / "saved.plan").read_text()
    run("apply saved", "apply", str(tmp_path / "saved.plan"))
    run("apply again json", "apply", *common, "--format", "json")

    # hashes apply made for jane and bob: they must not show up in any later output either
    made = [line.split("|")[1] for line in volume.read("postfix-accounts.cf").splitlines()
            if line.startswith(("jane@", "bob@"))]
    assert len(made) == 2 and BOB_OLD not in made

    env["BOB_PASSWORD"] = BOB_NEW_SECRET
    run("plan changed secret", "plan", *common, "--out", str(tmp_path / "stale.plan"))
    (tmp_path / "jane.txt").write_text("another\n")
    run("apply stale plan", "apply", str(tmp_path / "stale.plan"), expect=1)
    outputs["stale plan file"] = (tmp_path / "stale.plan").read_text()
    run("apply prune refused", "apply", *common, "--prune", expect=1)
    run("apply", "apply", *common)
    run("export", "export", *volume.args(), "-o", str(tmp_path / "exported.yaml"))
    run("export exists", "export", *volume.args(), "-o", str(tmp_path / "exported.yaml"), expect=1)

    made += [line.split("|")[1] for line in volume.read("postfix-accounts.cf").splitlines()
             if line.startswith(("jane@", "bob@"))]
    made += [line.split("|")[1] for line in volume.read("dovecot-masters.cf").splitlines()
             if line.startswith("boss|")]
    private = volume.config / "opendkim" / "keys" / "example.com" / "mail.private"
    key_lines = [line for line in private.read_text().splitlines() if "-----" not in line]
    sasl_file = (volume.config / "postfix-sasl-password.cf").read_bytes()
    assert RELAY_SECRET.encode() in sasl_file and len(key_lines) > 5
    assert len(set(made)) == 5  # both secrets changed, so both got a second new hash; + boss

    assert "(sensitive)" in outputs["plan text"] and "(sensitive)" in outputs["plan markdown"]
    assert json.loads(outputs["plan json"])["summary"]["has_changes"]
    words = forbidden(ADMIN, BOB_OLD, LEGACY, JUNK, *made) + key_lines
    words += [hashlib.sha256(sasl_file).hexdigest(), "PRIVATE KEY"]
    leaks = [(name, word) for name, text in outputs.items() for word in words if word in text]
    assert leaks == []

"""No command output holds a password or a password hash (product.md §4), with known values.

One realistic run through the real CLI: validate, plan in every format and saved, apply, apply of a
saved plan, export, and the error paths a user meets (refused deletions, a stale saved plan, a
missing secret). Every stdout and stderr, and the saved plan file, is searched for every plaintext,
every hash and every hash's digest part, including the hashes apply made itself.
"""

from __future__ import annotations

import hashlib
import json

from tests.support.util import run_cli, sha512_hash, write_desired

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


# --- secrets typed into the wrong place ---------------------------------------------------------

BCRYPT = "$2y$05$" + "abcdefghijklmnopqrstuu" + "0123456789abcdefghijklmnopqrstu"
ARGON = "$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g"
MISPLACED = f"""
    version: 1
    domains: [example.com, example.org]
    accounts:
      admin@example.com: {{password_hash: "{ADMIN}"}}
      jane@example.org: "{JUNK}"
      bob@example.org: "{BOB_SECRET}"
      "{LEGACY}": {{password_env: X}}
      carol@example.org: {{password_hash: "{JANE_SECRET}"}}
    aliases:
      team@example.org: "{BOB_OLD.removeprefix('{SHA512-CRYPT}')}"
      ops@example.org: ["{BCRYPT}", "{ARGON}"]
      "{ADMIN}": admin@example.com
    devnull: ["{BOB_OLD}"]
    """


def _leaks(text: str) -> list[str]:
    words = forbidden(ADMIN, BOB_OLD, LEGACY, JUNK) + [BCRYPT, ARGON, BCRYPT[7:], ARGON[-20:]]
    return [word[:12] for word in words if word in text]


def test_a_secret_typed_in_the_wrong_place_is_never_echoed(tmp_path, volume):
    """Hashes (every shape Dovecot reads) and plaintexts as a bare account value, an alias
    target, a key, a devnull address and a password_hash without scheme: the file is invalid, and
    every error in every format names the place without the value."""
    desired = write_desired(tmp_path / "mailserver.yaml", MISPLACED)
    outputs = {}
    for name, args in {
        "validate": ["validate"], "validate json": ["validate", "--format", "json"],
        "plan": ["plan", *volume.args()],
        "plan json": ["plan", *volume.args(), "--format", "json"],
        "plan markdown": ["plan", *volume.args(), "--format", "markdown"],
        "apply": ["apply", *volume.args()],
    }.items():
        result = run_cli(*args, "-f", str(desired))
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        outputs[name] = result.stdout + result.stderr
    report = json.loads(outputs["validate json"])
    sections = {e["path"].split(".")[0].split("[")[0] for e in report["errors"]}
    assert sections >= {"accounts", "aliases", "devnull"}
    assert "(sensitive)" in outputs["validate"]
    leaks = {name: _leaks(text) for name, text in outputs.items()}
    assert all(not found for found in leaks.values()), leaks


def test_a_hash_as_password_file_path_is_redacted_in_plans_and_errors(tmp_path, volume):
    """A valid file whose password_file names a hash (pasted where the path goes): plan in every
    form, the saved plan and apply's missing-file error show `(sensitive)` instead."""
    desired = write_desired(tmp_path / "mailserver.yaml", f"""
        version: 1
        domains: [example.com]
        accounts:
          admin@example.com: {{password_hash: "{ADMIN}"}}
          jane@example.com: {{password_file: "{JUNK}"}}
        """)
    outputs = {}
    for fmt in ("text", "json", "markdown"):
        result = run_cli("plan", "-f", str(desired), *volume.args(), "--format", fmt, "--offline")
        assert result.returncode == 0, result.stderr
        outputs[f"plan {fmt}"] = result.stdout + result.stderr
    result = run_cli("apply", "-f", str(desired), *volume.args())
    assert result.returncode == 1
    outputs["apply"] = result.stdout + result.stderr
    assert "(sensitive)" in outputs["apply"]
    leaks = {name: _leaks(text) for name, text in outputs.items()}
    assert all(not found for found in leaks.values()), leaks


def test_the_sidecar_never_logs_a_misplaced_secret(tmp_path, volume):
    """The watcher logs an invalid file's errors (JSON lines): none holds a value from it."""
    from tests.support.watch_process import WatchProcess

    folder = tmp_path / "desired"
    folder.mkdir()
    desired = write_desired(folder / "mailserver.yaml", MISPLACED)
    with WatchProcess(["-f", str(desired), *volume.args(), "--interval", "1"],
                      cwd=tmp_path) as watcher:
        record = watcher.wait_for_log(lambda r: r.get("error_count", 0) > 3, timeout=30,
                                      what="the invalid file's errors in the log")
        assert any("(sensitive)" in line for line in record["errors"])
        assert watcher.terminate() == 0
        assert _leaks(watcher.raw_log() + watcher.raw_stdout()) == []


def test_redact_knows_every_hash_shape_and_keeps_the_hints_readable():
    from reconciler.errors import redact, redact_data

    for value in (ADMIN, ADMIN.removeprefix("{SHA512-CRYPT}"), BCRYPT, ARGON,
                  "{SSHA}c2VjcmV0c2FsdA==", "{PBKDF2}$1$abcdefgh$12345678",
                  "$5$rounds=5000$salt$abcdefghijkl"):
        assert redact(f"target '{value}' has no '@'") == "target '(sensitive)' has no '@'"
        assert redact_data({value: [value]}) == {"(sensitive)": ["(sensitive)"]}
    for hint in ("like {SHA512-CRYPT}$6$...; create one", "use {SHA512-CRYPT} (what doveadm",
                 "password_hash uses {PLAIN}, which", "$schema=../schema/mailserver.schema.json"):
        assert redact(hint) == hint
    assert redact("it was hunter2", known={"hunter2"}) == "it was (sensitive)"

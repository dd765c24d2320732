"""The sidecar keeps what it verified in memory: an unchanged plaintext secret is verified once per
process, not on every resync, and a changed one is verified (and re-hashed) again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler import passwords
from reconciler.reconcile import Target
from reconciler.watch import Watcher, WatchOptions
from tests.util import Volume, sha512_hash


@pytest.fixture
def verified(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many secrets each call of the real verify_many checked."""
    calls: list[int] = []
    real = passwords.verify_many

    def counting(pairs):  # type: ignore[no-untyped-def]
        calls.append(len(pairs))
        return real(pairs)

    monkeypatch.setattr(passwords, "verify_many", counting)
    return calls


def test_unchanged_secrets_are_not_verified_again(tmp_path: Path, volume: Volume,
                                                  verified: list[int]) -> None:
    volume.write("postfix-accounts.cf",
                 f"jane@example.com|{sha512_hash('jane-pw', 'janesalt')}\n"
                 f"bob@example.com|{sha512_hash('bob-pw', 'bobsalt')}\n")
    path = tmp_path / "mailserver.yaml"
    path.write_text("version: 1\ndomains: [example.com]\naccounts:\n"
                    "  jane@example.com: {password_env: JANE}\n"
                    "  bob@example.com: {password_env: BOB}\n")
    environ = {"JANE": "jane-pw", "BOB": "bob-pw"}
    target = Target(str(path), str(volume.config), str(volume.cron), environ=environ)
    watcher = Watcher(target, WatchOptions(interval=3600))
    accounts_before = volume.read("postfix-accounts.cf")

    watcher.reconcile("startup")
    assert sum(verified) == 2  # both hashes on the volume checked once
    assert volume.read("postfix-accounts.cf") == accounts_before  # kept: nothing re-hashed

    verified.clear()
    for _ in range(3):
        watcher.reconcile("interval")
    assert sum(verified) == 0

    environ["BOB"] = "bob-new-pw"  # a rotated secret: verified (fails) and hashed anew
    verified.clear()
    watcher.reconcile("interval")
    assert sum(verified) == 1
    bob_line = next(line for line in (volume.read("postfix-accounts.cf") or "").splitlines()
                    if line.startswith("bob@"))
    assert passwords.verify(passwords.Secret("bob-new-pw"), bob_line.split("|", 1)[1])

    verified.clear()
    watcher.reconcile("interval")
    assert sum(verified) == 0  # the hash it just made is known to match
    assert watcher.status.last_result == "unchanged"
    # memory only: the volume holds the DMS files and the ownership record, nothing else
    assert sorted(os.listdir(volume.config)) == ["dms-reconciler.state.json", "postfix-accounts.cf"]

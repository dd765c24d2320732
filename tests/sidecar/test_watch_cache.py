"""The sidecar keeps what it verified in memory: an unchanged plaintext secret is verified once per
process, not on every resync, and a changed one is verified (and re-hashed) again. It also parses
what it wrote right after writing, so the next change plans without parsing first, and keeps only
the last parse of each file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler import reconcile
from reconciler.formats import virtual
from reconciler.passwords import sources as passwords
from reconciler.reconcile import Target
from reconciler.volume import observe
from reconciler.watch.loop import Watcher, WatchOptions
from tests.support import fullproof
from tests.support.util import Volume, sha512_hash


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
    target = Target(str(path), volume.value, environ=environ)
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


def _desired_with_alias(path: Path, target: str) -> None:
    path.write_text("version: 1\ndomains: [example.com]\naccounts:\n"
                    "  jane@example.com: {password_env: JANE}\n"
                    f"aliases:\n  team@example.com: [jane@example.com, {target}]\n")


def test_a_change_plans_from_a_volume_parsed_right_after_the_last_write(
        tmp_path: Path, volume: Volume, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []

    def counting(text: str):  # type: ignore[no-untyped-def]
        parsed.append(text)
        return virtual.parse(text)

    monkeypatch.setitem(observe._CODECS, virtual.FILENAME, counting)
    # as in production: the suite's extra plan after every write would parse it too
    monkeypatch.setattr(reconcile, "proves_convergence", fullproof.production_proof(reconcile))
    path = tmp_path / "mailserver.yaml"
    _desired_with_alias(path, "first@elsewhere.net")
    target = Target(str(path), volume.value, environ={"JANE": "pw"})
    watcher = Watcher(target, WatchOptions(interval=3600))
    watcher.reconcile("startup")
    assert parsed[-1] == volume.read("postfix-virtual.cf")  # parsed once written

    for i in range(5):
        before = volume.read("postfix-virtual.cf")
        parsed.clear()
        _desired_with_alias(path, f"edit{i}@elsewhere.net")
        watcher.reconcile("change")
        assert watcher.status.last_result == "changed"
        now = volume.read("postfix-virtual.cf")
        assert f"edit{i}@elsewhere.net" in (now or "")
        # The change planned from the last write without parsing it (already done), then
        # parsed its own write, once, for the next change.
        assert before not in parsed
        assert parsed == [now]
    # one parse per file is kept, the one of the bytes now on the volume
    assert watcher.memory.parses.last[virtual.FILENAME][0].decode() == volume.read("postfix-virtual.cf")
    # one parse per file: the DMS files' codecs, and the Rspamd files found under rspamd/
    assert {n for n in watcher.memory.parses.last if not n.startswith("rspamd/")} <= set(observe._CODECS)

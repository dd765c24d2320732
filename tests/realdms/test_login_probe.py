"""The end-to-end bench's login probe against the real DMS (both images): Dovecot holds a login
from an address that just failed one (its auth penalty, kept per remote IP: 4 s after one
failure), so the bench's attempts for an account that does not exist yet each come from an
address of their own (bench/end_to_end.py `source_address`): a failed attempt holds back
neither the next attempt nor the bystander on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench import generate as benchgen
from bench.end_to_end import Attempt, enter_network_of, imap_attempt, source_address
from reconciler.reconcile import Target, apply_once
from tests.realdms import harness
from tests.realdms.harness import DmsVolume, RealDms, wait_until
from tests.realdms.probe import PASSWORD, with_bystander

pytestmark = pytest.mark.realdms

PENALTY = 4.0  # auth-penalty.c: 2 s doubled once, for one failure


def in_container(dms: RealDms, work: Callable[[], list[Attempt]]) -> list[Attempt]:
    """`work()` in a thread inside the container's network namespace."""
    out: list[list[Attempt]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            enter_network_of(int(dms.container.attrs["State"]["Pid"]))
            out.append(work())
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)
    if errors:
        raise errors[0]
    return out[0]


def test_a_failed_attempt_holds_back_only_its_own_address(
    start_real_dms: Callable[..., RealDms], realdms_root: Path, real_client: Any
) -> None:
    volume = DmsVolume(realdms_root / "probe")
    spec = benchgen.build(50, secrets_from="file", plaintext_fraction=0.0)
    text, bystander = with_bystander(
        benchgen.to_yaml(spec).replace(
            "hostname: mail.bench-host.test", f"hostname: {harness.HOSTNAME}"
        ),
        spec.domains[0],
    )
    desired = volume.root / "mailserver.yaml"
    desired.write_text(text)
    apply_once(Target(str(desired), volume.value))
    dms = start_real_dms(volume, name="dms-login-probe")
    # DMS's start-up leaves mailbox folders root-owned past a few dozen accounts (DMS PR #4696):
    # SELECT would fail. The bench does the same once after start-up.
    dms.sh("chown -R 5000:5000 /var/mail")
    wait_until(lambda: dms.imap_login(bystander, PASSWORD), 120, "the bystander to log in")
    absent = f"not-yet@{spec.domains[0]}"

    def attempts() -> list[Attempt]:
        now = time.monotonic()
        return [
            imap_attempt(absent, source_address(0), now),  # fails: no such account
            imap_attempt(bystander, source_address(1), now),  # the probe's next address
            imap_attempt(bystander, source_address(0), now),  # the address that failed
        ]

    failed, next_one, same = in_container(dms, attempts)
    assert not failed.ok
    assert next_one.ok and same.ok
    # the address that failed waits out the penalty before Dovecot even looks the user up ...
    assert same.answered - same.started >= PENALTY - 0.1, same
    # ... the next address does not
    assert next_one.answered - next_one.started < PENALTY / 2, next_one

"""No outage at 1,000 accounts: while a new account is applied, a bystander (an existing account,
the last line of postfix-accounts.cf: the one DMS's rebuild restores last) logs in over IMAP and
receives mail without a break.

- fast apply: zero failed logins, zero refused or deferred mails;
- the same probe while DMS's own change detector applies a change: failures (so this test can
  fail: the probe does see an outage when there is one).

The probe runs from the moment the change is written until the new account logs in (bounded);
afterwards every mail the probe sent must be in the bystander's inbox (bounded wait)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import generate as benchgen
from reconciler.reconcile import Target, apply_once
from reconciler.watch.dms import Dms
from reconciler.watch.fastapply import FastApply, Result
from tests.realdms import harness
from tests.realdms.harness import DmsVolume, RealDms, wait_until
from tests.realdms.probe import PASSWORD, Probe, mail_trouble, wait_delivered, with_bystander

pytestmark = pytest.mark.realdms

ACCOUNTS = 1000


@pytest.fixture(scope="module")
def big_host(
    real_client: Any, real_engine: Any, dms_image: harness.DmsImage,
    realdms_root: Path,
) -> Iterator[tuple[RealDms, Target, Dms, str]]:
    image = dms_image.image  # both images: the realdms group's matrix (conftest.py)
    volume = DmsVolume(realdms_root / f"outage-{dms_image.id}")
    spec = benchgen.build(ACCOUNTS, secrets_from="file", plaintext_fraction=0.0, alias_ratio=1)
    text, bystander = with_bystander(benchgen.to_yaml(spec).replace(
        "hostname: mail.bench-host.test", f"hostname: {harness.HOSTNAME}"), spec.domains[0])
    desired = volume.root / "mailserver.yaml"
    desired.write_text(text)
    target = Target(str(desired), volume.value)
    apply_once(target)
    last = (volume.config / "postfix-accounts.cf").read_text().splitlines()[-1]
    assert last.startswith(bystander + "|"), "the bystander must be DMS's last account"
    dms = harness.start_dms(real_client, volume, name=f"dms-outage-{dms_image.id.replace('.', '')}",
                            image=image)
    try:
        # DMS's start-up leaves the mailbox folders it creates owned by root past a few dozen
        # accounts (DMS PR #4696): the bystander's mail would wait for DMS's first change
        # handling. Chown once here, as bench/end_to_end.py does, so only the change is measured.
        dms.sh("chown -R 5000:5000 /var/mail")
        dms.wait_amavis()
        wait_until(lambda: dms.imap_login(bystander, PASSWORD), 60, "the bystander to log in")
        yield dms, target, Dms(container=dms.name, environ={"DOCKER_HOST": real_engine.url}), \
            bystander
    finally:
        dms.remove()


def add_account(target: Target, local: str) -> str:
    desired = Path(target.desired_path)
    text = desired.read_text()
    domain = text.split("domains:\n  - ", 1)[1].split("\n", 1)[0]
    address = f"{local}@{domain}"
    text = text.replace(
        "accounts:\n", f'accounts:\n  {address}:\n    password_hash: "{benchgen.hash_pool()[0]}"\n',
        1,
    )
    desired.write_text(text)
    return address


def user_known(dms: RealDms, address: str) -> bool:
    """Dovecot's userdb has `address` (`doveadm user`: a userdb lookup, no login)."""
    return dms.sh(f"doveadm user {address} >/dev/null 2>&1 && echo known", check=False).strip() \
        == "known"


def run_change(dms: RealDms, target: Target, client: Dms, bystander: str, local: str, *,
               fast: bool) -> tuple[Probe, float, list[str], Result | None]:
    """Add an account while the probe runs; (probe, seconds until the account works, the mail
    log's deferrals and bounces for the bystander, fast apply's result)."""
    address = add_account(target, local)
    log_mark = len(dms.mail_log())
    probe = Probe(dms, bystander).start()
    results: list[Result | None] = []
    started = time.monotonic()
    try:
        hook = (lambda written: results.append(FastApply(client, target.volume.folder).run(written))
                ) if fast else None
        apply_once(target, while_locked=hook)
        # Dovecot's userdb first (no failed login: a failed IMAP login is answered only after
        # 2 s and holds the next from the same address 4 s more, Dovecot's auth penalty, which
        # the figure would then measure), then the login itself
        wait_until(lambda: user_known(dms, address), 600, f"Dovecot to know {address}",
                   interval=0.25)
        wait_until(lambda: dms.imap_login(address, PASSWORD), 60, f"{address} to log in",
                   interval=0.5)
        took = time.monotonic() - started
        if not fast:  # the probe keeps going until DMS's change detector has finished
            wait_until(lambda: dms.has_applied("postfix-accounts.cf"), 600,
                       "DMS to record the change")
    finally:
        probe.stop()
    if fast:
        wait_delivered(dms, probe)  # every probe mail arrives: nothing was deferred or bounced
    else:
        # DMS's rebuild bounced some probe mails for good (the outage this shows) and deferred
        # others until Postfix's next queue run: start that run now and wait for the queue to drain
        dms.sh("postqueue -f")
        wait_until(lambda: "Mail queue is empty" in dms.sh("postqueue -p"), 300,
                   "Postfix's queue to drain")
    trouble = mail_trouble(dms.mail_log()[log_mark:], bystander)
    return probe, took, trouble, next((r for r in results if r is not None), None)


def test_fast_apply_has_no_outage_and_dms_path_has_one(
    big_host: tuple[RealDms, Target, Dms, str], realdms_timings: dict[str, float],
) -> None:
    dms, target, client, bystander = big_host
    probe, took, trouble, result = run_change(dms, target, client, bystander, "fast1", fast=True)
    assert result is not None and result.path == "fast", result
    assert probe.logins >= 1 and probe.failed_logins == 0, (probe.logins, probe.failed_logins)
    assert not probe.refused, probe.refused[:5]
    assert not trouble, trouble[:5]
    realdms_timings[f"1,000 accounts, fast apply: new account works after ({dms.name})"] = took

    probe, took, trouble, _ = run_change(dms, target, client, bystander, "slow1", fast=False)
    realdms_timings[f"1,000 accounts, DMS's path: new account works after ({dms.name})"] = took
    failures = probe.failed_logins + len(probe.refused) + len(trouble)
    assert failures > 0, (
        "the probe saw no outage on DMS's own path: it could not have seen one with fast apply"
    )
    print(f"DMS's path, {dms.name}: {probe.failed_logins} failed logins of {probe.logins}, "
          f"{len(probe.refused)} refused mails, {len(trouble)} deferred/bounced log lines")

"""Fast apply against the real DMS (v15.1.0 and 16-edge): a change is put in place by the sidecar
under DMS's lock, DMS's checksum record says it is applied, the new account logs in and receives
mail at once, and DMS's change detector finds nothing left to rebuild. Where fast apply must not
run (generator scripts it was not proven against, turned off) DMS's own path applies the change.

Each write goes through `apply_once(..., while_locked=FastApply(...).run)`, which is exactly what
the sidecar's cycle does after writing (reconciler/watch/cycle.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import generate as benchgen
from reconciler.reconcile import Target, apply_once
from reconciler.watch.dms import Dms
from reconciler.watch.fastapply import FastApply, Result
from tests.realdms import harness
from tests.realdms.harness import DmsVolume, RealDms, wait_until

pytestmark = pytest.mark.realdms

ACCOUNTS = 60
PASSWORD = "pool-password-0"  # the password of bench/generate.py's first pool hash


@pytest.fixture(scope="module")
def host(
    real_client: Any, real_engine: Any, dms_image: harness.DmsImage,
    realdms_root: Path,
) -> Iterator[tuple[RealDms, Target, Dms]]:
    image = dms_image.image  # both images: the realdms group's matrix (conftest.py)
    volume = DmsVolume(realdms_root / f"fast-{dms_image.id}")
    spec = benchgen.build(ACCOUNTS, secrets_from="file", plaintext_fraction=0.0)
    text = benchgen.to_yaml(spec).replace("hostname: mail.bench-host.test",
                                          f"hostname: {harness.HOSTNAME}")
    desired = volume.root / "mailserver.yaml"
    desired.write_text(text)
    target = Target(str(desired), volume.value)
    apply_once(target)
    readonly = volume.root / "regexp-ro"  # a generated file the container cannot replace
    readonly.write_text("")
    dms = harness.start_dms(real_client, volume, name=f"dms-fast-{dms_image.id.replace('.', '')}",
                            image=image,
                            extra_mounts={str(readonly): {"bind": "/etc/postfix/regexp",
                                                          "mode": "ro"}})
    try:
        dms.wait_amavis()
        yield dms, target, Dms(container=dms.name, environ={"DOCKER_HOST": real_engine.url})
    finally:
        dms.remove()


def add_account(target: Target, local: str) -> str:
    """One account in a domain without a catch-all: in a catch-all domain it would also get
    self-routes, a change to postfix-regexp.cf (which the fixture makes read-only in DMS)."""
    desired = Path(target.desired_path)
    text = desired.read_text()
    loaded = yaml.safe_load(text)
    domain = next(d for d in loaded["domains"] if d not in (loaded.get("catch_all") or {}))
    address = f"{local}@{domain}"
    pool_hash = benchgen.hash_pool()[0]
    text = text.replace("accounts:\n", f'accounts:\n  {address}:\n    password_hash: "{pool_hash}"\n'
                        "    quota: 5G\n", 1)
    desired.write_text(text)
    return address


def apply_fast(target: Target, fast: FastApply) -> Result | None:
    results: list[Result | None] = []
    apply_once(target, while_locked=lambda written: results.append(fast.run(written)))
    return next((r for r in results if r is not None), None)


def detector_cycles(dms: RealDms, count: int) -> None:
    """Wait until DMS's change detector has polled `count` more times: each poll rewrites
    /tmp/docker-mailserver-config-chksum.new (check-for-changes.sh)."""
    def mtime() -> str:
        return dms.sh("stat -c %Y.%Z /tmp/docker-mailserver-config-chksum.new", check=False)

    seen = [mtime()]

    def advanced() -> bool:
        now = mtime()
        if now != seen[-1]:
            seen.append(now)
        return len(seen) > count

    wait_until(advanced, 30, f"{count} polls of DMS's change detector", interval=0.2)


def test_fast_apply_applies_a_new_account_at_once(host: tuple[RealDms, Target, Dms]) -> None:
    dms, target, client = host
    address = add_account(target, "fresh")
    started = time.monotonic()
    result = apply_fast(target, FastApply(client, target.config_dir))
    assert result is not None and result.path == "fast", result
    # DMS's record holds every file we wrote: its change detector has nothing left to do
    assert dms.has_applied("postfix-accounts.cf", "dovecot-quotas.cf")
    assert dms.imap_login(address, PASSWORD)
    took = time.monotonic() - started
    userdb = dms.sh("stat -c %i.%Y /etc/dovecot/userdb")
    line = dms.sh(f"grep '^{address}:' /etc/dovecot/userdb")
    assert "quota" in line
    assert dms.sh(f"stat -c %U /var/mail/{address.split('@')[1]}/fresh/home").strip() == "docker"
    dms.send(address, "fast-apply hello", sender=address)  # senders must be hosted: no DNS
    dms.wait_for_mail(address, "fast-apply hello", timeout=60)
    detector_cycles(dms, 3)
    assert dms.sh("stat -c %i.%Y /etc/dovecot/userdb") == userdb, "DMS rebuilt the userdb"
    assert took < 20


def test_generators_not_proven_are_left_to_dms(host: tuple[RealDms, Target, Dms]) -> None:
    dms, target, client = host
    dms.sh("cp -a /usr/local/bin/helpers/accounts.sh /tmp/accounts.sh.orig && "
           "echo '# a changed generator' >> /usr/local/bin/helpers/accounts.sh")
    try:
        address = add_account(target, "slowpath")
        result = apply_fast(target, FastApply(client, target.config_dir))
        assert result is not None and result.path == "dms", result
        assert "not ones fast apply was proven against" in result.message
        wait_until(lambda: dms.has_applied("postfix-accounts.cf"), 120,
                   "DMS's own change detector to apply the change")
        wait_until(lambda: dms.imap_login(address, PASSWORD), 30, "the new account to log in")
    finally:
        dms.sh("cp -a /tmp/accounts.sh.orig /usr/local/bin/helpers/accounts.sh")


def test_a_read_only_generated_file_leaves_the_change_to_dms(
    host: tuple[RealDms, Target, Dms],
) -> None:
    """/etc/postfix/regexp is a read-only bind mount (the fixture's): the rename onto it fails,
    fast apply says so, leaves DMS's record alone, and DMS's own path applies the change. The
    userdb, replaced before, never lacks a user."""
    dms, target, client = host
    before = set(dms.sh("cut -d: -f1 /etc/dovecot/userdb").split())
    desired = Path(target.desired_path)
    domain = desired.read_text().split("domains:\n  - ", 1)[1].split("\n", 1)[0]
    address = add_account(target, "rofail")
    desired.write_text(
        desired.read_text()
        + f"regexp_aliases:\n  - pattern: '^ro[0-9]+@{domain.replace('.', '[.]')}$'\n"
        f"    to: {address}\n"
    )
    result = apply_fast(target, FastApply(client, target.config_dir))
    assert result is not None and result.path == "dms", result
    assert "fast apply failed in the container (replacing /etc/postfix/regexp)" in result.message
    assert before <= set(dms.sh("cut -d: -f1 /etc/dovecot/userdb").split())
    wait_until(lambda: dms.has_applied("postfix-accounts.cf", "postfix-regexp.cf"), 120,
               "DMS's own change detector to apply the change")
    wait_until(lambda: dms.imap_login(address, PASSWORD), 30, "the new account to log in")
    assert dms.sh("ls -a /etc/postfix | grep -c dms-reconciler", check=False).strip() == "0"

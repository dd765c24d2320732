"""Fast apply against the real DMS (v15.1.0 and 16-edge): a change is put in place by the sidecar
under DMS's lock, DMS's checksum record says it is applied, the new account logs in and receives
mail at once, and DMS's change detector finds nothing left to rebuild. Where fast apply must not
run (generator scripts it was not proven against, turned off) DMS's own path applies the change.

Each write goes through `apply_once(..., while_locked=FastApply(...).run)`, which is exactly what
the sidecar's cycle does after writing (reconciler/watch/cycle.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import generate as benchgen
from reconciler.reconcile import Target, apply_once
from reconciler.watch import fastapply
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
    dms = start(real_client, volume, f"dms-fast-{dms_image.id.replace('.', '')}", image)
    try:
        dms.wait_amavis()
        yield dms, target, Dms(container=dms.name, environ={"DOCKER_HOST": real_engine.url})
    finally:
        dms.remove()


def start(client: Any, volume: DmsVolume, name: str, image: str) -> RealDms:
    """DMS on `volume` (an earlier container of that name is removed first), with the read-only
    /etc/postfix/regexp of the fixture."""
    readonly = volume.root / "regexp-ro"
    return harness.start_dms(client, volume, name=name, image=image,
                             extra_mounts={str(readonly): {"bind": "/etc/postfix/regexp",
                                                           "mode": "ro"}})


def add_account(target: Target, local: str, index: int = 0) -> str:
    """One account in a domain without a catch-all: in a catch-all domain it would also get
    self-routes, a change to postfix-regexp.cf (which the fixture makes read-only in DMS)."""
    desired = Path(target.desired_path)
    text = desired.read_text()
    loaded = yaml.safe_load(text)
    domain = next(d for d in loaded["domains"] if d not in (loaded.get("catch_all") or {}))
    address = f"{local}@{domain}"
    pool_hash = benchgen.hash_pool()[index]  # password f"pool-password-{index}"
    text = text.replace("accounts:\n", f'accounts:\n  {address}:\n    password_hash: "{pool_hash}"\n'
                        "    quota: 5G\n", 1)
    desired.write_text(text)
    return address


def apply_fast(target: Target, fast: FastApply,
               during: Callable[[], None] | None = None) -> Result | None:
    """One `apply_once` with fast apply's hooks, as the sidecar's cycle passes them;
    `during()` runs under DMS's lock after the write, before fast apply."""
    results: list[Result | None] = []

    def after(written: tuple[str, ...]) -> None:
        if during is not None:
            during()
        results.append(fast.run(written))

    try:
        apply_once(target, before_write=fast.prepare, while_locked=after)
    finally:
        fast.release()
    return next((r for r in results if r is not None), None)


def dovecot_reloads(dms: RealDms) -> int:
    """`dovecot reload`s so far: Dovecot's master logs each SIGHUP."""
    return len(re.findall(r"SIGHUP received - reloading configuration", dms.mail_log()))


def detector_handlings(dms: RealDms) -> int:
    """Changes DMS's change detector saw (check-for-changes.sh logs this before taking the lock,
    then runs its reloads even when the change list it finds under the lock is empty)."""
    return dms.supervisor_logs().count("Change detected")


def userdb_users(dms: RealDms) -> set[str]:
    return set(dms.sh("cut -d: -f1 /etc/dovecot/userdb").split())


def plain_accounts(target: Target) -> list[tuple[str, int]]:
    """Accounts named nowhere else in mailserver.yaml (no alias, quarantine or sa_learn refers
    to them), outside catch-all domains (whose self-routes would change the read-only regexp),
    with a pool hash: (address, its index in the pool, i.e. password f"pool-password-{i}")."""
    text = Path(target.desired_path).read_text()
    loaded = yaml.safe_load(text)
    pool = benchgen.hash_pool()
    catch_all = set(loaded.get("catch_all") or {})
    out = []
    for address, entry in loaded["accounts"].items():
        found = entry.get("password_hash")
        if (found in pool and text.count(address) == 1
                and address.split("@")[1] not in catch_all):
            out.append((address, pool.index(found)))
    return out


def set_hash(target: Target, address: str, index: int) -> None:
    desired = Path(target.desired_path)
    loaded = yaml.safe_load(desired.read_text())
    old = loaded["accounts"][address]["password_hash"]
    new = benchgen.hash_pool()[index]
    entry = f"  {address}:\n    password_hash: "
    text = desired.read_text()
    desired.write_text(text.replace(f'{entry}"{old}"', f'{entry}"{new}"', 1))
    assert yaml.safe_load(desired.read_text())["accounts"][address]["password_hash"] == new


def remove_account(target: Target, address: str) -> None:
    desired = Path(target.desired_path)
    lines = desired.read_text().splitlines(keepends=True)
    start = lines.index(f"  {address}:\n")
    end = start + 1
    while end < len(lines) and lines[end].startswith("    "):
        end += 1
    desired.write_text("".join(lines[:start] + lines[end:]))
    assert address not in yaml.safe_load(desired.read_text())["accounts"]


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
    result = apply_fast(target, FastApply(client, target.volume.folder, timed=True))
    assert result is not None and result.path == "fast", result
    # Postfix was reloaded only once Dovecot's userdb look-up (the real doveadm) found the new
    # account: no moment where Postfix takes mail for it that Dovecot's LMTP would bounce
    assert "dovecot-knows" in result.message and "before Dovecot" not in result.message, result
    assert not (Path(target.volume.folder) / fastapply.STAGE).exists()  # staged, then removed
    # Postfix's texthash tables went in already cool: a Postfix process the reload starts reads
    # them at once instead of dozing 0.3 s at a time until their mtime is 2 s old
    # (dict_thash_open's "pausing to let file ... cool down", logged at -vv)
    assert int(dms.sh("stat -c %Y /etc/postfix/vmailbox")) <= int(time.time()) - 2
    verbose = dms.sh("postmap -vv -q nobody texthash:/etc/postfix/vmailbox 2>&1", check=False)
    assert "texthash" in verbose, verbose[-2000:]
    assert "cool down" not in verbose, verbose[-2000:]
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
        result = apply_fast(target, FastApply(client, target.volume.folder))
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
    result = apply_fast(target, FastApply(client, target.volume.folder))
    assert result is not None and result.path == "dms", result
    assert "fast apply failed in the container (replacing /etc/postfix/regexp)" in result.message
    assert before <= set(dms.sh("cut -d: -f1 /etc/dovecot/userdb").split())
    wait_until(lambda: dms.has_applied("postfix-accounts.cf", "postfix-regexp.cf"), 120,
               "DMS's own change detector to apply the change")
    wait_until(lambda: dms.imap_login(address, PASSWORD), 30, "the new account to log in")
    assert dms.sh("ls -a /etc/postfix | grep -c dms-reconciler", check=False).strip() == "0"
    assert not (Path(target.volume.folder) / fastapply.STAGE).exists()


def test_account_changes_need_neither_a_dovecot_reload_nor_dms_change_detector(
    host: tuple[RealDms, Target, Dms],
) -> None:
    """A new account, a changed password and a removed account are only passwd-file data:
    Dovecot re-reads /etc/dovecot/userdb when its mtime or size changes, so fast apply does not
    reload it (the reload restarts the auth processes and fails the logins in flight). DMS's
    change detector, polling twice while the files are written and applied under the lock,
    finds its record held aside and does nothing: no second handling, no reload of its own."""
    dms, target, client = host
    changed, old_index = add_account(target, "changing", 1), 1
    removed, removed_index = add_account(target, "leaving", 2), 2
    first = apply_fast(target, FastApply(client, target.volume.folder))
    assert first is not None and first.path == "fast", first
    new_index = (old_index + 1) % len(benchgen.hash_pool())
    users = userdb_users(dms)
    reloads, handlings = dovecot_reloads(dms), detector_handlings(dms)
    wait_until(lambda: dms.imap_login(changed, f"pool-password-{old_index}"), 15, "a login")
    assert dms.imap_login(removed, f"pool-password-{removed_index}")
    added = add_account(target, "noreload")
    set_hash(target, changed, new_index)
    remove_account(target, removed)

    result = apply_fast(target, FastApply(client, target.volume.folder),
                        during=lambda: detector_cycles(dms, 2))
    assert result is not None and result.path == "fast", result
    assert userdb_users(dms) == (users | {added}) - {removed}
    wait_until(lambda: dms.imap_login(added, PASSWORD), 15, "the new account to log in")
    wait_until(lambda: dms.imap_login(changed, f"pool-password-{new_index}"), 15,
               "the changed password to work")
    assert not dms.imap_login(changed, f"pool-password-{old_index}")
    assert not dms.imap_login(removed, f"pool-password-{removed_index}")
    detector_cycles(dms, 2)
    assert dms.has_applied("postfix-accounts.cf", "dovecot-quotas.cf")
    assert "Dovecot not reloaded" in result.message, result
    assert dovecot_reloads(dms) == reloads, [
        line for line in dms.mail_log().splitlines()[-400:] if "SIGHUP" in line or "reload" in line
    ]
    assert detector_handlings(dms) == handlings, "DMS's change detector handled the change too"
    assert not dms.sh("ls /tmp | grep -c dms-reconciler-held", check=False).strip("0\n")


def test_a_password_changed_within_the_same_second_is_seen(
    host: tuple[RealDms, Target, Dms], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dovecot compares the passwd-file's mtime in whole seconds and its size: a new hash of the
    same length put in place within the second of the file it replaces would go unseen. Pinned
    here: the userdb and the staged copy carry the same mtime; the apply script moves it on."""
    dms, target, client = host
    address, old_index = plain_accounts(target)[0]
    new_index = (old_index + 1) % len(benchgen.hash_pool())
    pinned = int(time.time()) - 100
    dms.sh(f"touch -m -d @{pinned} /etc/dovecot/userdb")
    # Dovecot re-reads it (another mtime) and now holds mtime `pinned` and this size
    wait_until(lambda: dms.imap_login(address, f"pool-password-{old_index}"), 15,
               "a login that makes Dovecot read the touched userdb")
    size = dms.sh("stat -c %s /etc/dovecot/userdb")
    set_hash(target, address, new_index)
    monkeypatch.setattr(fastapply, "_upload_mtime", lambda: pinned)
    result = apply_fast(target, FastApply(client, target.volume.folder))
    assert result is not None and result.path == "fast", result
    assert dms.sh("stat -c %s /etc/dovecot/userdb") == size  # the case: same size
    assert int(dms.sh("stat -c %Y /etc/dovecot/userdb")) > pinned
    wait_until(lambda: dms.imap_login(address, f"pool-password-{new_index}"), 15,
               "the changed password to work")
    assert not dms.imap_login(address, f"pool-password-{old_index}")


class Interrupted:
    """The sidecar's Dms client, but `action()` runs once just before fast apply's script, after
    the generated files were staged: the moment a restart or a recreation does most harm."""

    def __init__(self, dms: Dms, action: Callable[[], None]) -> None:
        self.dms = dms
        self.action: Callable[[], None] | None = action

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dms, name)

    def run(self, container: Any, argv: list[str], **options: Any) -> tuple[int, str]:
        if self.action is not None and argv[-1] == fastapply.APPLY_SCRIPT:
            action, self.action = self.action, None
            action()
        return self.dms.run(container, argv, **options)


def wait_started_again(dms: RealDms, ups: int) -> None:
    """DMS's start-up after a restart or recreation is over: it logged 'is up and running' once
    more than `ups`, its record holds the volume's files, Dovecot and Postfix answer."""
    wait_until(lambda: dms.logs().count("is up and running") > ups, 300, "DMS's start-up")
    wait_until(lambda: dms.has_applied("postfix-accounts.cf", "dovecot-quotas.cf"), 120,
               "DMS's record of the volume's files")
    wait_until(lambda: dms.listening(143) and dms.listening(25), 120, "Dovecot and Postfix")


def assert_userdb_whole(dms: RealDms, expected: set[str]) -> None:
    lines = dms.sh("cut -d: -f1 /etc/dovecot/userdb").split()
    assert len(lines) == len(set(lines)), "a user twice in the userdb"
    assert expected <= set(lines), f"missing from the userdb: {sorted(expected - set(lines))}"


def test_dms_restarted_mid_fast_apply_is_left_to_its_start_up(
    host: tuple[RealDms, Target, Dms],
) -> None:
    """`docker restart` after the staging, before fast apply's script: the script finds another
    run of the container and stops before touching anything (DMS's start-up rebuilds the userdb
    line by line: a rename then would double users), fast apply says so and leaves the change
    to DMS, whose start-up applies it. No user is missing from the userdb after it."""
    dms, target, client = host
    before = userdb_users(dms)
    ups = dms.logs().count("is up and running")
    added = add_account(target, "restarted")
    fast = FastApply(Interrupted(client, lambda: dms.container.restart(timeout=20)),
                     target.volume.folder)
    result = apply_fast(target, fast)
    assert result is not None and result.path == "dms", result
    assert "DMS restarted since fast apply began" in result.message, result
    wait_started_again(dms, ups)
    assert_userdb_whole(dms, before | {added})
    wait_until(lambda: dms.imap_login(added, PASSWORD), 30, "the new account to log in")
    assert not dms.sh("ls -a /tmp /etc/postfix /etc/dovecot | grep dms-reconciler",
                      check=False).strip()
    assert not (Path(target.volume.folder) / fastapply.STAGE).exists()  # hashes: never left


def test_dms_recreated_during_and_between_changes(
    host: tuple[RealDms, Target, Dms], real_client: Any, dms_image: harness.DmsImage,
) -> None:
    """The container removed and started again (same name, same volume) after the staging:
    fast apply's script finds the container gone, says so, and leaves the change to DMS, whose
    new container's start-up applies it. The next change finds the new container by its name
    and is applied by fast apply. No user is missing from the userdb after either."""
    dms, target, client = host
    before = userdb_users(dms)
    added = add_account(target, "recreated")

    def recreate() -> None:
        name = dms.name
        dms.container.remove(force=True)
        dms.container = start(real_client, dms.volume, name, dms_image.image).container

    result = apply_fast(target, FastApply(Interrupted(client, recreate), target.volume.folder))
    assert result is not None and result.path == "dms", result
    assert "is gone (removed or recreated)" in result.message, result
    wait_started_again(dms, 0)
    assert_userdb_whole(dms, before | {added})
    wait_until(lambda: dms.imap_login(added, PASSWORD), 30, "the new account to log in")

    later = add_account(target, "afterwards")
    result = apply_fast(target, FastApply(client, target.volume.folder))
    assert result is not None and result.path == "fast", result
    assert_userdb_whole(dms, before | {added, later})
    wait_until(lambda: dms.imap_login(later, PASSWORD), 15, "the next new account to log in")


def test_amavis_is_reloaded_only_when_its_domains_change(
    host: tuple[RealDms, Target, Dms],
) -> None:
    """Amavis reads /etc/postfix/vhost alone: an account in a known domain leaves vhost byte for
    byte the same and Amavis is not reloaded (its reload refuses the mail Postfix hands it
    meanwhile); an account in a new domain changes vhost and Amavis is reloaded, as DMS does."""
    dms, target, client = host
    starts = dms.amavis_starts()
    add_account(target, "samedomain")
    same = apply_fast(target, FastApply(client, target.volume.folder))
    assert same is not None and same.path == "fast", same
    assert "Amavis reloaded" not in same.message
    desired = Path(target.desired_path)
    desired.write_text(desired.read_text().replace(
        "domains:\n", "domains:\n  - fresh-domain.test\n", 1).replace(
        "accounts:\n", f'accounts:\n  new@fresh-domain.test:\n    password_hash: '
        f'"{benchgen.hash_pool()[0]}"\n', 1))
    fresh = apply_fast(target, FastApply(client, target.volume.folder))
    assert fresh is not None and fresh.path == "fast", fresh
    assert "Amavis reloaded (its domains changed)" in fresh.message
    wait_until(lambda: dms.amavis_starts() > starts, 60, "Amavis to log its reload")
    assert dms.amavis_starts() == starts + 1, "Amavis was reloaded for the known domain too"

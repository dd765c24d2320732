"""Accounts in a catch-all domain on the real DMS (v15.1.0 and v16): their own mail is routed by
exact patterns in postfix-regexp.cf (self-routes), not by self-alias lines in postfix-virtual.cf,
about which DMS logs `Alias 'x@d' will not be added to '/etc/dovecot/userdb' twice` at every
start and change.

The volume starts as an earlier dms-reconciler left it: self-alias lines it wrote (for a declared
account and for one added with `setup email add`) next to the catch-all. DMS is started on it and
warns; one apply moves the routes to postfix-regexp.cf; then mail to each account (and its
+extension addresses) reaches it, any other address the catch-all's target, and DMS logs no
warning, neither after the change nor at the next start.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.realdms import harness
from tests.realdms.harness import DmsVolume, RealDms, wait_until
from tests.support.util import run_cli, sha512_hash

pytestmark = pytest.mark.realdms

SENDER = "admin@example.test"  # a hosted domain: there is no DNS
TWICE = r"will not be added to '/etc/dovecot/userdb' twice"
ADMIN, CAROL, KEPT = (sha512_hash(p, s) for p, s in
                      (("admin-pw", "adminsalt"), ("carol-pw", "carolsalt"), ("kept-pw", "keptsl")))
DESIRED = f"""\
version: 1
hostname: {harness.HOSTNAME}
domains: [example.test]
accounts:
  admin@example.test: {{password_hash: "{ADMIN}"}}
  carol@example.test: {{password_hash: "{CAROL}"}}
catch_all: {{example.test: admin@example.test}}
"""
# What an earlier dms-reconciler wrote for DESIRED, with kept@ added by `setup email add` (kept,
# unmanaged) and given a self-alias too.
OLD_VIRTUAL = ("@example.test admin@example.test\ncarol@example.test carol@example.test\n"
               "kept@example.test kept@example.test\n")
OLD_STATE = {
    "format": 1,
    "comment": "Written by dms-reconciler: the entries it manages. Deleting this file makes them "
               "unmanaged; it never deletes mail configuration.",
    "plan_key": "0123456789abcdef" * 4,
    "owns_cron": False,
    "owned": {"postfix-accounts.cf": ["admin@example.test", "carol@example.test"],
              "postfix-virtual.cf": ["@example.test", "carol@example.test", "kept@example.test"]},
}
ALLOWED = (r"!! INSECURE !! SSL configured with plain text access",)  # no TLS in the tests


@pytest.fixture(scope="module")
def old_volume(realdms_root: Path, start_real_dms: Any) -> Iterator[tuple[RealDms, Path]]:
    volume = DmsVolume(realdms_root / "dms")
    (volume.config / "postfix-accounts.cf").write_text(
        f"admin@example.test|{ADMIN}\ncarol@example.test|{CAROL}\nkept@example.test|{KEPT}\n")
    (volume.config / "postfix-virtual.cf").write_text(OLD_VIRTUAL)
    (volume.config / "dms-reconciler.state.json").write_text(json.dumps(OLD_STATE, indent=1))
    desired = realdms_root / "mailserver.yaml"
    desired.write_text(DESIRED)
    dms = start_real_dms(volume, name="realdms-self-routes",
                         env={"ENABLE_AMAVIS": "0", "ENABLE_SPAMASSASSIN": "0"})
    yield dms, desired


def problems(dms: RealDms) -> list[str]:
    return dms.problems(since_mark=True, allow=ALLOWED)


def test_dms_warns_about_self_alias_lines(old_volume: tuple[RealDms, Path]) -> None:
    """The claim, on this version: each self-alias line makes DMS log the warning at start-up."""
    dms, _ = old_volume
    warned = [line for line in dms.problems(allow=ALLOWED) if TWICE in line]
    assert any("'carol@example.test'" in line for line in warned), warned
    assert any("'kept@example.test'" in line for line in warned), warned


def test_one_apply_moves_the_routes_and_dms_stops_warning(old_volume: tuple[RealDms, Path]
                                                          ) -> None:
    dms, desired = old_volume
    config = dms.volume.config
    dms.mark()
    applied = run_cli("apply", "-f", str(desired), *dms.volume.args())
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "Warning" not in applied.stdout + applied.stderr  # nothing to warn about
    assert (config / "postfix-virtual.cf").read_text().splitlines()[1:] == [
        "@example.test admin@example.test"]
    assert (config / "postfix-regexp.cf").read_text().splitlines()[1:] == [
        r"/^carol@example\.test$/ carol@example.test",
        r"/^kept@example\.test$/ kept@example.test",
        r"/^carol\+(.*)@example\.test$/ carol+${1}@example.test",
        r"/^kept\+(.*)@example\.test$/ kept+${1}@example.test",
    ]
    wait_until(lambda: dms.has_applied("postfix-virtual.cf", "postfix-regexp.cf"), 60,
               "DMS to apply both files")
    wait_until(lambda: dms.sh("cat /etc/postfix/regexp") == (config / "postfix-regexp.cf"
                                                              ).read_text(), 30,
               "DMS to install postfix-regexp.cf as /etc/postfix/regexp")
    assert "pcre:/etc/postfix/regexp" in dms.sh("postconf -h virtual_alias_maps")
    routed = {"carol@example.test": "carol@example.test",
              "carol+news@example.test": "carol@example.test",
              "kept@example.test": "kept@example.test",
              "KEPT+Tag@Example.TEST": "kept@example.test",
              "someone-else@example.test": "admin@example.test",
              "carolx@example.test": "admin@example.test"}
    for to in routed:
        dms.send(to, f"self-route-{to}", sender=SENDER)
    for to, mailbox in routed.items():
        dms.wait_for_mail(mailbox, f"self-route-{to}")
    for mailbox in {"carol@example.test", "kept@example.test"}:  # not to the catch-all too
        assert not any(f"self-route-{mailbox}" in m for m in dms.messages("admin@example.test"))
    assert problems(dms) == [], "DMS logged warnings or errors:\n" + "\n".join(problems(dms))
    # Dovecot got no login for a pattern: the userdb holds the three accounts, nothing else
    users = sorted(line.split(":", 1)[0] for line in dms.sh("cat /etc/dovecot/userdb").split())
    assert users == ["admin@example.test", "carol@example.test", "kept@example.test"] or \
        users == ["@example.test", "admin@example.test", "carol@example.test",
                  "kept@example.test"], users  # v15.1.0 makes one of the catch-all (DMS #4581)


def test_no_warning_at_the_next_start(old_volume: tuple[RealDms, Path]) -> None:
    dms, desired = old_volume
    dms.mark()
    dms.container.restart(timeout=30)
    wait_until(lambda: dms.logs().count("is up and running") >= 2, 180, "DMS to start again")
    dms.wait_postfix()
    dms.send("carol+again@example.test", "after-restart", sender=SENDER)
    dms.wait_for_mail("carol@example.test", "after-restart")
    # supervisord's WARN lines about the stop we asked for are not about our files
    stopping = (*ALLOWED, r"WARN (received SIGTERM|stopped: \S+ \(terminated by SIGTERM\))")
    found = dms.problems(since_mark=True, allow=stopping)
    assert found == [], "DMS logged warnings or errors:\n" + "\n".join(found)
    plan = run_cli("plan", "-f", str(desired), *dms.volume.args(), "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr

"""The planner is pure: desired + observed (+ password decisions) -> plan, tested on literals."""

from __future__ import annotations

from pathlib import Path

from reconciler.load.desired import load_desired_bytes
from reconciler.passwords import sources as passwords
from reconciler.passwords.sources import SecretReader, VerifiedCache
from reconciler.plan import Action, Kind, Plan
from reconciler.planner.make import make_plan
from reconciler.state import Ownership
from reconciler.volume.observe import Observed, observe
from tests.support.util import make_volume, sha512_hash

HASH_A = sha512_hash("alpha", "saltA")
HASH_B = sha512_hash("bravo", "saltB")


def desired(body: str):
    text = "version: 1\ndomains: [example.com]\naccounts:\n" + body
    return load_desired_bytes(text.encode(), "m.yaml").state


def observed_from(tmp: Path, files: dict[str, str], owned: dict[str, list[str]] | None = None) -> Observed:
    volume = make_volume(tmp)
    for name, text in files.items():
        volume.write(name, text)
    obs = observe(volume.value)
    if owned is not None:
        obs = Observed(**{**obs.__dict__, "ownership": Ownership(
            {k: frozenset(v) for k, v in owned.items()})})
    return obs


def plan_for(state, obs: Observed, *, prune: bool = False, env: dict[str, str] | None = None) -> Plan:
    stored = {a: e.password_hash for a, e in obs.accounts.entries.items()}
    decided = passwords.resolve(state, stored, reader=SecretReader("/", env or {}), cache=VerifiedCache())
    return make_plan(state, obs, decided, prune=prune)


def keys(plan: Plan, action: Action) -> list[str]:
    return [c.key for c in plan.changes if c.action is action]


def test_plan_should_do_nothing_when_only_formatting_differs(tmp_path: Path) -> None:
    state = desired(f"  a@example.com: {{password_hash: '{HASH_A}', quota: 1G}}\n"
                    "aliases:\n  info@example.com: [a@example.com, x@elsewhere.net]\n")
    obs = observed_from(tmp_path, {
        "postfix-accounts.cf": f"# hand written\r\na@example.com|{HASH_A}",  # CRLF, no final newline
        "postfix-virtual.cf": "info@example.com   x@elsewhere.net, a@example.com\n",
        "dovecot-quotas.cf": "a@example.com:1G\n",
    })
    plan = plan_for(state, obs)
    assert plan.changes == () and not plan.has_changes


def test_plan_should_create_update_and_keep_unmanaged(tmp_path: Path) -> None:
    state = desired(f"  a@example.com: {{password_hash: '{HASH_B}'}}\n"
                    f"  b@example.com: {{password_hash: '{HASH_B}'}}\n")
    obs = observed_from(tmp_path, {"postfix-accounts.cf": f"a@example.com|{HASH_A}\nold@example.com|{HASH_A}\n"})
    plan = plan_for(state, obs)
    assert keys(plan, Action.CREATE) == ["b@example.com"]
    assert keys(plan, Action.UPDATE) == ["a@example.com"]
    assert keys(plan, Action.DELETE) == []
    assert [u.key for u in plan.unmanaged] == ["old@example.com"]


def test_plan_should_delete_only_what_it_wrote_unless_pruning(tmp_path: Path) -> None:
    state = desired(f"  a@example.com: {{password_hash: '{HASH_A}'}}\n")
    files = {"postfix-accounts.cf": f"a@example.com|{HASH_A}\nmine@example.com|{HASH_A}\n"
                                    f"theirs@example.com|{HASH_A}\n"}
    owned = {"postfix-accounts.cf": ["a@example.com", "mine@example.com"]}
    plan = plan_for(state, observed_from(tmp_path / "1", files, owned))
    assert keys(plan, Action.DELETE) == ["mine@example.com"]
    assert "mail in /var/mail/example.com/mine/ is kept" in plan.changes[0].reason
    assert [u.key for u in plan.unmanaged] == ["theirs@example.com"]
    pruned = plan_for(state, observed_from(tmp_path / "2", files, owned), prune=True)
    assert keys(pruned, Action.DELETE) == ["mine@example.com", "theirs@example.com"]


def test_losing_the_state_file_deletes_nothing(tmp_path: Path) -> None:
    state = desired(f"  a@example.com: {{password_hash: '{HASH_A}'}}\n")
    obs = observed_from(tmp_path, {"postfix-accounts.cf": f"a@example.com|{HASH_A}\nb@example.com|{HASH_A}\n"})
    plan = plan_for(state, obs)
    assert keys(plan, Action.DELETE) == [] and [u.key for u in plan.unmanaged] == ["b@example.com"]
    assert plan.ownership.owned("postfix-accounts.cf") == {"a@example.com"}  # adopted, not changed


def test_plaintext_secret_keeps_a_hash_that_verifies(tmp_path: Path) -> None:
    state = desired("  a@example.com: {password_env: A}\n")
    obs = observed_from(tmp_path, {"postfix-accounts.cf": f"a@example.com|{HASH_A}\n"})
    assert plan_for(state, obs, env={"A": "alpha"}).changes == ()
    changed = plan_for(state, obs, env={"A": "not-alpha"})
    assert keys(changed, Action.UPDATE) == ["a@example.com"]
    assert set(changed.secrets) == {"a@example.com"}


def test_catch_all_domain_accounts_get_self_routes_and_devnull_its_local_alias(tmp_path: Path) -> None:
    state = desired(f"  a@example.com: {{password_hash: '{HASH_A}'}}\n"
                    f"  b@example.com: {{password_hash: '{HASH_A}'}}\n"
                    "catch_all:\n  example.com: a@example.com\ndevnull: [no@example.com]\n")
    plan = plan_for(state, observed_from(tmp_path, {}))
    kinds = {(c.file, c.kind, c.key) for c in plan.changes}
    assert ("postfix-regexp.cf", Kind.SELF_ROUTE, r"/^b@example\.com$/") in kinds
    assert ("postfix-regexp.cf", Kind.SELF_ROUTE, r"/^b\+(.*)@example\.com$/") in kinds
    # no self-alias line in postfix-virtual.cf (DMS warns about each), none for the catch-all's
    # own single target (its mail goes to it either way), and nothing to warn about
    assert not any(c.kind is Kind.SELF_ALIAS for c in plan.changes)
    assert not any("a@example.com" in c.key for c in plan.changes if c.file == "postfix-regexp.cf")
    assert not any("self-alias" in w or "twice" in w for w in plan.warnings), plan.warnings
    assert ("postfix-virtual.cf", Kind.CATCH_ALL, "@example.com") in kinds
    assert ("postfix-virtual.cf", Kind.DEVNULL, "no@example.com") in kinds
    assert ("postfix-aliases.cf", Kind.LOCAL_ALIAS, "devnull") in kinds


def test_default_deletion_limit_is_half_the_managed_accounts(tmp_path: Path) -> None:
    state = desired(f"  a@example.com: {{password_hash: '{HASH_A}'}}\n")
    lines = "".join(f"u{i}@example.com|{HASH_A}\n" for i in range(4))
    owned = {"postfix-accounts.cf": [f"u{i}@example.com" for i in range(4)]}
    plan = plan_for(state, observed_from(tmp_path, {"postfix-accounts.cf": lines}, owned))
    assert plan.account_deletions == 4 and plan.deletion_limit == 2 and plan.over_deletion_limit


def test_plan_never_holds_a_hash_in_its_public_form(tmp_path: Path) -> None:
    state = desired(f"  a@example.com: {{password_hash: '{HASH_B}'}}\n")
    obs = observed_from(tmp_path, {"postfix-accounts.cf": f"a@example.com|{HASH_A}\nz@example.com|{HASH_A}\n"})
    text = str(plan_for(state, obs, prune=True).to_dict())
    assert "$6$" not in text and "saltA" not in text and "saltB" not in text

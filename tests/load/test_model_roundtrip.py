"""Property: any valid desired state survives load -> model -> dump -> load unchanged."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.load.desired import load_desired_bytes
from reconciler.model import (
    QUARANTINE_KINDS,
    Account,
    Alias,
    CatchAll,
    DesiredState,
    Learn,
    PasswordEnv,
    PasswordFile,
    PasswordHash,
    Policy,
    Quarantine,
    SaLearnJob,
    to_document,
)
from reconciler.planner.export import dump_yaml

HASHES = [
    "{SHA512-CRYPT}$6$examplesalt1234$djhYHgU4lT6iwsWWt9hVLtZNfxKcN54iEfNMSvAIZ7tPExHhbnAMirMd6T"
    "/eF/HG0sD4sw/bd6HEjJmGRzq4j/",
    "{BLF-CRYPT}$2y$05$" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0",
    "{SSHA512}c29tZWhhc2g=",
]
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domain = st.builds(lambda a, b: f"{a}.{b}", label, st.sampled_from(["com", "org", "net", "io"]))
local = st.from_regex(r"[a-z0-9_-]{1,8}(\.[a-z0-9_-]{1,8}){0,2}", fullmatch=True)
password = st.one_of(
    st.sampled_from(HASHES).map(PasswordHash),
    st.from_regex(r"/run/secrets/[a-z]{1,8}", fullmatch=True).map(PasswordFile),
    st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True).map(PasswordEnv),
)
quota = st.one_of(st.none(), st.sampled_from(["0", "5G", "500M", "10k", "1T", "100B"]))
schedule = st.sampled_from(["0 2 * * *", "30 3 * * 1-5", "@daily", "*/15 * * * *"])
folder = st.sampled_from([".Junk", "cur", ".Archive*", ".INBOX.spam"])


@st.composite
def desired_states(draw: st.DrawFn) -> DesiredState:
    domains = sorted(set(draw(st.lists(domain, min_size=1, max_size=3))))
    addresses = sorted(set(draw(st.lists(
        st.builds(lambda l, d: f"{l}@{d}", local, st.sampled_from(domains)), min_size=1, max_size=8))))
    accounts = tuple(Account(a, draw(password), draw(quota)) for a in addresses)
    outside = st.builds(lambda l: f"{l}@elsewhere.example", local)
    target = st.one_of(st.sampled_from(addresses), outside)
    alias_keys = sorted(set(draw(st.lists(
        st.builds(lambda l, d: f"a{l}@{d}", local, st.sampled_from(domains)), max_size=6))) - set(addresses))
    aliases = tuple(
        Alias(k, tuple(sorted(set(draw(st.lists(target, min_size=1, max_size=4)))))) for k in alias_keys
    )
    devnull = tuple(sorted(set(draw(st.lists(
        st.builds(lambda l, d: f"n{l}@{d}", local, st.sampled_from(domains)), max_size=3)))
        - set(addresses) - set(alias_keys)))
    catch = tuple(
        CatchAll(d, (draw(st.sampled_from(addresses)),))
        for d in sorted(set(draw(st.lists(st.sampled_from(domains), max_size=2))))
    )
    quarantine = draw(st.one_of(st.none(), st.builds(
        Quarantine, st.sampled_from(addresses),
        st.lists(st.sampled_from(QUARANTINE_KINDS), min_size=1, unique=True).map(
            lambda ks: tuple(k for k in QUARANTINE_KINDS if k in ks)))))
    jobs = []
    for _ in range(draw(st.integers(0, 3))):
        scope = draw(st.sampled_from(["accounts", "domains", "all"]))
        jobs.append(SaLearnJob(
            draw(schedule), draw(st.sampled_from(list(Learn))), draw(folder),
            accounts=tuple(sorted(set(draw(st.lists(st.sampled_from(addresses), min_size=1)))))
            if scope == "accounts" else None,
            domains=tuple(sorted(set(draw(st.lists(st.sampled_from(domains), min_size=1)))))
            if scope == "domains" else None,
        ))
    policy = Policy(draw(st.booleans()), draw(st.one_of(st.none(), st.integers(0, 50))))
    return DesiredState(1, tuple(domains), accounts, aliases, catch, devnull, quarantine,
                        tuple(jobs), policy, draw(st.one_of(st.none(), st.just("mail.host.example"))))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(desired_states())
def test_dump_then_load_gives_the_same_model(state: DesiredState) -> None:
    text = dump_yaml(state)
    loaded = load_desired_bytes(text.encode(), "generated.yaml")
    assert loaded.state == state
    assert dump_yaml(loaded.state) == text
    assert to_document(loaded.state) == to_document(state)


def test_model_normalises_what_means_the_same() -> None:
    a = load_desired_bytes(
        b"version: 1\ndomains: [b.com, a.com, a.com]\naccounts:\n"
        b"  z@a.com: {password_env: Z}\n  y@b.com: {password_env: Y}\n"
        b"aliases:\n  t@a.com: [y@b.com, z@a.com, y@b.com]\n", "a.yaml").state
    b = load_desired_bytes(
        b"version: 1\ndomains: [a.com, b.com]\naccounts:\n"
        b"  y@b.com: {password_env: Y}\n  z@a.com: {password_env: Z}\n"
        b"aliases:\n  t@a.com: [z@a.com, y@b.com]\n", "b.yaml").state
    assert a == b
    assert a.aliases[0].targets == ("y@b.com", "z@a.com")

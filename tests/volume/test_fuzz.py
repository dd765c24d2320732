"""Property-based fuzzing (hypothesis) of every parser and of the YAML loader.

Every parser must turn any text into a result (never an exception, never a hang), and the codecs
must be stable: what we render parses back to the same entries, so no line on the volume can sneak
into an entry we manage. The YAML loader may only fail with its own positioned errors, and a
desired state that validates must render into files that parse back to exactly what it declares
(no line or field injected). DMS_RECONCILER_FUZZ_EXAMPLES scales the number of examples.
"""

from __future__ import annotations

import json
import os
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reconciler import state as state_file
from reconciler.configvolume import Volume
from reconciler.errors import InvalidDesiredState, VolumeError
from reconciler.formats import (
    access,
    accounts,
    aliases,
    amavis,
    cron,
    masters,
    opendkim,
    quotas,
    regexp,
    relaymap,
    sasl,
    virtual,
)
from reconciler.load.desired import load_desired_bytes
from reconciler.load.yamlload import YamlLoadError, load_yaml_bytes

EXAMPLES = int(os.environ.get("DMS_RECONCILER_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=10),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RUN: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _count_examples() -> Iterator[None]:
    yield
    print(f"\nfuzz examples run: {sum(RUN.values())} ({dict(RUN)})")


# Text that looks like DMS config lines: the separators, comment and continuation characters,
# line breaks of every kind, NUL, our own markers, and arbitrary unicode in between.
TOKENS = ["|", ":", "@", ",", " ", "\t", "\r", "\n", "\r\n", "#", "\\", "\0", "devnull",
          "/dev/null", "{SHA512-CRYPT}$6$", "a@b.c", "x", "1G", "0", "1;", '"', "$", "*",
          amavis.BEGIN, amavis.END, "$spam_quarantine_to = \"q\\@x.y\";", "root sa-learn --spam",
          "\u2028", "\x85", "\udcff", "é", "9" * 4400, "!!python/name:os.system", "&a", "*a",
          "<<: ", "- ", "? ", "{", "}", "[", "]", "---\n", "!!float", "'", "~", "!!bool", "!!int",
          "!!binary", "!!timestamp", "!!map", "!!seq", "!!str", "!!null", '""', "!", "%YAML 1.1\n",
          "%TAG ! tag:x,2000:\n", "/^a\\/b$/i", "if /x/", "endif", "REJECT", "\t\t", "[h]:25",
          "u:p", "mail._domainkey.example.com", "*@example.com"]
configish = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=8)),
                     max_size=60).map("".join)
any_text = st.one_of(configish, st.text(max_size=400))

ENTRY_CODECS = {"accounts": accounts, "virtual": virtual, "aliases": aliases, "quotas": quotas,
                "masters": masters, "access": access, "relaymap": relaymap, "sasl": sasl,
                "regexp": regexp, "opendkim": opendkim}


def _as_written(name: str, entries: dict[str, Any]) -> dict[str, Any]:
    """The entries a render writes: parse keeps a quota size's trailing CRs (DMS hands them to
    Dovecot, so the plan must see them as a change), render writes LF only."""
    if name != "quotas":
        return entries
    return {key: replace(e, size=e.size.rstrip("\r")) for key, e in entries.items()}


def _render_parsed(name: str, parsed: Any) -> str:
    codec = ENTRY_CODECS[name]
    return codec.render(parsed.entries.values(), comments=parsed.comments, invalid=parsed.invalid)


@pytest.mark.parametrize("name", sorted(ENTRY_CODECS))
@FUZZ
@given(text=any_text)
@example(text="|\r\r")  # found in CI: an unreadable quota line lost one CR per render
@example(text="a@b.c:1G\r\r")  # and a quota size its CRs one at a time
def test_entry_codecs_parse_anything_and_round_trip(name: str, text: str) -> None:
    RUN[name] += 1
    codec = ENTRY_CODECS[name]
    first = codec.parse(text)
    rendered = _render_parsed(name, first)
    assert rendered.endswith("\n") or (rendered == "" and name == "opendkim")  # no header there
    second = codec.parse(rendered)
    assert second.entries == _as_written(name, first.entries), (
        "a rendered file parses to other entries"
    )
    assert _render_parsed(name, second) == rendered, "rendering is not stable"


@FUZZ
@given(text=any_text, mailbox=st.sampled_from(["q@example.com", "quarantine.box@mail.example.org"]),
       kinds=st.sets(st.sampled_from(amavis.KINDS), min_size=1))
def test_amavis_parses_anything_and_keeps_the_users_text(text: str, mailbox: str,
                                                         kinds: set[str]) -> None:
    RUN["amavis"] += 1
    parsed = amavis.parse(text)
    assert amavis.render(parsed) == text or parsed.block is not None
    if parsed.broken_markers:
        return
    block = {k: mailbox for k in kinds}
    with_ours = amavis.render(amavis.with_block(parsed, block))
    again = amavis.parse(with_ours)
    assert again.block == block and not again.unreadable_block
    without = amavis.render(amavis.with_block(again, None))
    if parsed.block is None:  # the user's bytes are all still there, in order
        assert _subsequence(text, without)


def _subsequence(small: str, big: str) -> bool:
    it = iter(big)
    return all(ch in it for ch in small)


@FUZZ
@given(text=any_text)
def test_cron_parses_anything_and_round_trips(text: str) -> None:
    RUN["cron"] += 1
    first = cron.parse(text)
    rendered = cron.render(first.entries.values(), comments=first.comments)
    second = cron.parse(rendered)
    assert second.entries == first.entries
    for line in first.entries:
        cron.read_job_line(line)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20)
state_like = st.fixed_dictionaries(
    {"format": st.sampled_from([1, 2, "1", None])},
    optional={"owned": json_values | st.dictionaries(st.text(max_size=20), json_values),
              "owns_cron": json_values, "plan_key": json_values})


@FUZZ
@given(text=st.one_of(any_text, state_like.map(json.dumps), json_values.map(json.dumps)))
def test_state_file_parses_anything(text: str) -> None:
    RUN["state"] += 1
    try:
        ownership, _problem = state_file.parse(text)
    except VolumeError as exc:  # a newer format is refused on purpose, never overwritten
        assert "written by a newer dms-reconciler" in str(exc)
        assert json.loads(text)["format"] > state_file.FORMAT
        return
    assert isinstance(ownership, state_file.Ownership)
    assert all(isinstance(k, str) for keys in ownership.entries.values() for k in keys)
    assert ownership.plan_key == "" or (len(ownership.plan_key) == 64
                                        and bytes.fromhex(ownership.plan_key))
    again, problem2 = state_file.parse(state_file.render(ownership))
    assert again == ownership and problem2 is None


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), any_text.map(lambda t: t.encode("utf-8",
                                                                              "surrogatepass"))))
def test_yaml_loader_fails_only_with_positioned_errors(data: bytes) -> None:
    RUN["yaml"] += 1
    try:
        doc = load_yaml_bytes(data, "fuzz.yaml")
    except YamlLoadError as exc:
        assert exc.diagnostics and all(d.file == "fuzz.yaml" for d in exc.diagnostics)
        return
    assert isinstance(doc.value, dict)


# Documents shaped like mailserver.yaml, with hostile strings in every place a value can go.
HOSTILE = ["a@example.com", "A@Example.com", "a\n@example.com", "a|b@example.com", "a:b@example.com",
           "a,b@example.com", "a b@example.com", "../x@example.com", "a/b@example.com",
           "a..b@example.com", "a@example.com\nevil@example.com", "a@exa mple.com", "@example.com",
           "a@", "a@@example.com", "a+tag@example.com", "a#b@example.com", "a\0@example.com",
           "a@example.com ", "x" * 300 + "@example.com", "a@" + "b." * 200 + "com", "example.com",
           "ex..ample.com", "-bad.example.com", "{SHA512-CRYPT}$6$x$y", "*", "* * * * *",
           "0 2 * * *\n* * * * * root rm -rf /", "@reboot", "@daily", ".Junk", "../../etc",
           ".Junk/../../x", "cur", "5G", "5G\nevil@example.com:1G", "0", "-1G", "spam", "ham"]
hostile = st.one_of(st.sampled_from(HOSTILE), st.text(alphabet=string.printable, max_size=30),
                    st.integers(-5, 10), st.booleans(), st.none())
addresses = st.one_of(st.sampled_from(["a@example.com", "b@example.com", "c@example.org",
                                       "d.e@example.org"]), st.sampled_from(HOSTILE))
account = st.fixed_dictionaries({}, optional={
    "password_hash": st.one_of(st.sampled_from([
        "{SHA512-CRYPT}$6$saltsaltsaltsalt$" + "a" * 86,
        "{SHA512-CRYPT}$6$saltsaltsaltsalt$" + "a" * 85 + "\nevil@example.com|x",
        "{PLAIN}secret", "{SHA512-CRYPT}$6$s$a|b"]), hostile),
    "password_env": hostile, "password_file": hostile, "quota": hostile})
document = st.fixed_dictionaries(
    {"version": st.sampled_from([1, 1, 1, 2, "1"]),
     "domains": st.lists(st.one_of(st.sampled_from(["example.com", "example.org"]), hostile),
                         max_size=4),
     "accounts": st.dictionaries(addresses, account, max_size=4)},
    optional={
        "hostname": hostile,
        "aliases": st.dictionaries(addresses, st.one_of(addresses, st.lists(addresses, max_size=3)),
                                   max_size=4),
        "catch_all": st.dictionaries(st.one_of(st.sampled_from(["example.com"]), hostile),
                                     addresses, max_size=2),
        "devnull": st.lists(addresses, max_size=3),
        "quarantine": st.fixed_dictionaries({"mailbox": addresses},
                                            optional={"kinds": st.lists(hostile, max_size=3)}),
        "sa_learn": st.lists(st.fixed_dictionaries(
            {"schedule": hostile, "learn": hostile, "folder": hostile},
            optional={"accounts": st.lists(addresses, max_size=2),
                      "domains": st.lists(hostile, max_size=2)}), max_size=2),
        "policy": st.fixed_dictionaries({}, optional={"prune": hostile, "max_deletions": hostile}),
        "unknown": hostile,
        "masters": st.dictionaries(st.one_of(hostile.filter(lambda v: isinstance(v, str)),
                                             st.just("admin")), account, max_size=2),
        "regexp_aliases": st.lists(st.fixed_dictionaries(
            {"pattern": st.one_of(hostile, st.sampled_from(["^a(b@example\\.com", "(?<x", "^x$"])),
             "to": st.one_of(addresses, st.lists(hostile, max_size=2))},
            optional={"flags": hostile}), max_size=2),
        "restrict": st.fixed_dictionaries({}, optional={"send": st.lists(addresses, max_size=2),
                                                        "receive": st.lists(hostile, max_size=2)}),
        "relay": st.dictionaries(st.one_of(st.sampled_from(["example.com"]), hostile),
                                 st.fixed_dictionaries({}, optional={
                                     "host": hostile, "port": hostile, "exclude": hostile,
                                     "username": hostile, "password_env": hostile}), max_size=2),
        "dkim": st.dictionaries(st.one_of(st.sampled_from(["example.com"]), hostile),
                                st.fixed_dictionaries({}, optional={"selector": hostile,
                                                                    "key_size": hostile}),
                                max_size=2),
    })


LOCAL = st.from_regex(r"[a-z0-9_-]{1,8}(\.[a-z0-9_-]{1,5}){0,2}", fullmatch=True)
DOMAINS = ["example.com", "example.org", "mail-2.example.net", "x.y.z.example.io"]
SCHEDULES = ["0 2 * * *", "*/15 * * * *", "30 3 * * 1-5", "@daily", "@reboot", "0 0 1 1 *"]
FOLDERS = [".Junk", "cur", ".Archive*", ".INBOX.spam", "new"]
QUOTAS = ["0", "5G", "500M", "1k", "10B", "2T"]


@st.composite
def valid_document(draw: st.DrawFn) -> dict[str, Any]:
    """A mailserver.yaml that validates, with values anywhere in what the rules allow."""
    domains = draw(st.lists(st.sampled_from(DOMAINS), min_size=1, max_size=4, unique=True))
    address = st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, st.sampled_from(domains))
    names = draw(st.lists(address, min_size=1, max_size=6, unique=True))
    accounts_ = names[: max(1, len(names) // 2)]
    rest = names[len(accounts_):]
    split = len(rest) // 2
    alias_keys, devnull = rest[:split], rest[split:]
    external = st.builds(lambda local: f"{local}@elsewhere.test", LOCAL)
    doc: dict[str, Any] = {"version": 1, "domains": domains, "accounts": {}}
    for a in accounts_:
        spec: dict[str, Any] = {"password_hash": "{SHA512-CRYPT}$6$" + draw(
            st.text(alphabet=string.ascii_letters + "./", min_size=1, max_size=16)) + "$"
            + draw(st.text(alphabet=string.ascii_letters + "./0123456789", min_size=86,
                           max_size=86))}
        if draw(st.booleans()):
            spec["quota"] = draw(st.sampled_from(QUOTAS))
        doc["accounts"][a] = spec
    if alias_keys:
        doc["aliases"] = {k: draw(st.lists(st.one_of(st.sampled_from(accounts_), external),
                                           min_size=1, max_size=3, unique=True))
                          for k in alias_keys}
    if devnull:
        doc["devnull"] = devnull
    used_domains = {a.split("@")[1] for a in names}
    if draw(st.booleans()):
        doc["catch_all"] = {draw(st.sampled_from(sorted(used_domains))): accounts_[0]}
    if draw(st.booleans()):
        doc["quarantine"] = {"mailbox": accounts_[0],
                             "kinds": draw(st.lists(st.sampled_from(list(amavis.KINDS)),
                                                    min_size=1, unique=True))}
    if draw(st.booleans()):
        job: dict[str, Any] = {"schedule": draw(st.sampled_from(SCHEDULES)),
                               "learn": draw(st.sampled_from(["spam", "ham"])),
                               "folder": draw(st.sampled_from(FOLDERS))}
        scope = draw(st.sampled_from(["accounts", "domains", "all"]))
        if scope == "accounts":
            job["accounts"] = accounts_[:2]
        elif scope == "domains":
            job["domains"] = sorted(used_domains)[:1]
        doc["sa_learn"] = [job]
    _setup_sections(draw, doc, accounts_, sorted(used_domains))
    return doc


MASTER_NAMES = st.from_regex(r"[a-z0-9_-]{1,8}(\.[a-z0-9_-]{1,4})?", fullmatch=True)
PATTERNS = ["^test[0-9]+@example\\.com$", "^(a|b)@x\\.org$", "a/b", "^(.+)@(.+)$", "[/]", "\\/x",
            "^\\w+\\s?$", "x{2,3}"]
HOSTS = ["smtp.example.net", "127.0.0.1", "::1", "relay", "mx-1.example.org"]


def _setup_sections(draw: st.DrawFn, doc: dict[str, Any], accounts_: list[str],
                    domains: list[str]) -> None:
    """masters, regexp_aliases, restrict and relay, with values anywhere the rules allow."""
    if draw(st.booleans()):
        doc["masters"] = {name: {"password_hash": "{SHA512-CRYPT}$6$salt$" + "c" * 86}
                          for name in draw(st.lists(MASTER_NAMES, min_size=1, max_size=3,
                                                    unique=True)) if name not in doc["accounts"]}
    if draw(st.booleans()):
        doc["regexp_aliases"] = [
            {"pattern": pattern, "flags": draw(st.sampled_from(["", "i", "mx", "iU"])),
             "to": draw(st.lists(st.sampled_from(accounts_ + ["x@elsewhere.test"]), min_size=1,
                                 max_size=2, unique=True))}
            for pattern in draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3,
                                         unique=True))]
    if draw(st.booleans()):
        doc["restrict"] = {"send": accounts_[:1], "receive": accounts_[-1:]}
    if draw(st.booleans()):
        relay: dict[str, Any] = {}
        for domain in draw(st.lists(st.sampled_from(domains), min_size=1, unique=True)):
            if draw(st.booleans()):
                relay[domain] = {"exclude": True}
            else:
                relay[domain] = {"host": draw(st.sampled_from(HOSTS)),
                                 "port": draw(st.integers(1, 65535)),
                                 "username": draw(st.from_regex(r"[A-Za-z0-9@._-]{1,12}",
                                                                fullmatch=True)),
                                 "password_env": "RELAY_PW"}
        doc["relay"] = relay


def _places(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value or a mapping key in `doc` (keys as ("key", name))."""
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append(path + (("key", k),))
            out += _places(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _places(v, path + (i,))
    return out


@st.composite
def mutated_document(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with one value or key replaced by something hostile."""
    doc = draw(valid_document())
    places = [p for p in _places(doc) if p]
    place = draw(st.sampled_from(places))
    value = draw(hostile)
    parent: Any = doc
    for part in place[:-1]:
        parent = parent[part]
    last = place[-1]
    if isinstance(last, tuple):  # rename a key
        if isinstance(value, str) and value not in parent:
            parent[value] = parent.pop(last[1])
    else:
        parent[last] = value
    return doc


@FUZZ
@given(doc=st.one_of(document, valid_document(), mutated_document()))
def test_desired_state_valid_or_positioned_errors_and_nothing_injected(doc: dict[str, Any]) -> None:
    RUN["desired"] += 1
    data = yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")
    try:
        loaded = load_desired_bytes(data, "fuzz.yaml")
    except InvalidDesiredState as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            assert d.file == "fuzz.yaml" and d.message
            assert d.line is None or d.line >= 1
            assert len(d.format()) < 2000, "an error message quoting a huge value"
        return
    RUN["desired valid"] += 1
    _assert_rendered_files_hold_exactly(loaded.state)


def _assert_rendered_files_hold_exactly(state: Any) -> None:
    """Plan the state against an empty volume and check each rendered file parses back to
    exactly the declared entries: no value can add a line or a field."""
    import tempfile

    from reconciler.passwords.sources import (
        RELAY_KEY,
        DesiredPassword,
        Secret,
        Status,
        password_sources,
    )
    from reconciler.planner.make import make_plan
    from reconciler.volume.contents import render_files
    from reconciler.volume.observe import observe

    with tempfile.TemporaryDirectory() as tmp:
        observed = observe(Volume(tmp, os.path.join(tmp, "sa-learn")))
        decided = {key: DesiredPassword(Status.GIVEN, source, hash=source.value)
                   if hasattr(source, "value") else
                   DesiredPassword(Status.GIVEN, source, hash="{SHA512-CRYPT}$6$x$" + "b" * 86)
                   for key, source in password_sources(state)}
        for relay in state.relay:
            if relay.password is not None:
                decided[RELAY_KEY + relay.domain] = DesiredPassword(
                    Status.NEW, relay.password, secret=Secret("p@ss:w rd#1"))
        plan = make_plan(state, observed, decided)
        files = render_files(plan)
    declared_accounts = {a.address for a in state.accounts}
    parsed = accounts.parse(files["postfix-accounts.cf"].decode())
    assert set(parsed.entries) == declared_accounts and not parsed.invalid
    for entry in parsed.entries.values():
        assert entry.extra is None and "\n" not in entry.password_hash
    if "dovecot-quotas.cf" in files:
        q = quotas.parse(files["dovecot-quotas.cf"].decode())
        assert set(q.entries) == {a.address for a in state.accounts if a.quota is not None}
        assert not q.invalid
    if "postfix-virtual.cf" in files:
        v = virtual.parse(files["postfix-virtual.cf"].decode())
        keys = ({a.address for a in state.aliases} | {"@" + c.domain for c in state.catch_all}
                | set(state.devnull))
        assert keys <= set(v.entries) and not v.invalid
        for alias in state.aliases:
            assert set(v.entries[alias.address].targets) == set(alias.targets)
    if "cron" in files:
        lines = [line for line in files["cron"].decode().splitlines()
                 if line and not line.startswith("#")]
        assert all(cron.read_job_line(line) for line in lines), "a cron line that is no sa-learn job"
    if "amavis.cf" in files:
        block = amavis.parse(files["amavis.cf"].decode()).block
        assert block is not None and set(block.values()) == {state.quarantine.mailbox}
    _assert_setup_files_hold_exactly(state, files)


def _assert_setup_files_hold_exactly(state: Any, files: dict[str, bytes]) -> None:
    from reconciler.kinds.regexp import regexp_line

    if state.masters:
        m = masters.parse(files["dovecot-masters.cf"].decode())
        assert set(m.entries) == {x.name for x in state.masters} and not m.invalid
    if state.regexp_aliases:
        r = regexp.parse(files["postfix-regexp.cf"].decode())
        want = [regexp_line(a.pattern, a.flags, a.targets) for a in state.regexp_aliases]
        # the self-routes of accounts in a catch-all domain stand around the declared patterns
        declared = [e for e in r.entries.values() if regexp.self_route_of(e) is None]
        assert declared == want and not r.invalid, "regexp entries changed"
    for name, declared in ((access.SEND, state.restrict.send),
                           (access.RECEIVE, state.restrict.receive)):
        if declared:
            a = access.parse(files[name].decode())
            assert set(a.entries) == set(declared) and not a.invalid
            assert all(e.action == access.REJECT for e in a.entries.values())
    if state.relay:
        rm = relaymap.parse(files["postfix-relaymap.cf"].decode())
        assert set(rm.entries) == {"@" + r.domain for r in state.relay} and not rm.invalid
        for relay in state.relay:
            entry = rm.entries["@" + relay.domain]
            assert entry.excluded if relay.exclude else entry.host_port() == (relay.host,
                                                                              relay.port)
        with_auth = {"@" + r.domain: r.username for r in state.relay if r.username}
        if with_auth:
            sa = sasl.parse(files["postfix-sasl-password.cf"].decode())
            assert {k: e.username for k, e in sa.entries.items()} == with_auth
            assert all(e.password == "p@ss:w rd#1" for e in sa.entries.values())


def _saved_plan_sample(tmp: str) -> dict[str, Any]:
    """A real saved plan, made by `plan --out` logic in-process on a tiny volume."""
    from reconciler.cli import saved_plan
    from reconciler.reconcile import Target, plan_once

    config, desired = os.path.join(tmp, "config"), os.path.join(tmp, "m.yaml")
    os.makedirs(config, exist_ok=True)
    with open(desired, "w") as handle:
        handle.write("version: 1\ndomains: [example.com]\naccounts:\n  a@example.com: "
                     "{password_hash: '{SHA512-CRYPT}$6$saltsaltsaltsalt$" + "a" * 86 + "'}\n")
    target = Target(desired, Volume(config, os.path.join(tmp, "sa-learn")))
    planned = plan_once(target)
    out = os.path.join(tmp, "plan.saved")
    saved_plan.save(out, planned, target, planned.plan.to_dict(desired={}, volume={}))
    with open(out) as handle:
        return json.load(handle)  # type: ignore[no-any-return]


@st.composite
def damaged(draw: st.DrawFn, sample: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(sample))
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in _places(doc) if p and not isinstance(p[-1], tuple)]
        place = draw(st.sampled_from(places))
        parent: Any = doc
        for part in place[:-1]:
            parent = parent[part]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[place[-1]]
        else:
            parent[place[-1]] = draw(json_values | st.sampled_from(["", "/nonexistent", 5]))
    return doc


def test_saved_plan_loader_refuses_damaged_files(tmp_path: Any) -> None:
    from reconciler.cli import saved_plan
    from reconciler.errors import ReconcilerError

    sample = _saved_plan_sample(str(tmp_path))

    @FUZZ
    @given(doc=damaged(sample))
    def check(doc: dict[str, Any]) -> None:
        RUN["saved plan"] += 1
        path = tmp_path / "damaged.saved"
        path.write_text(json.dumps(doc))
        try:
            saved_plan.apply_saved(str(path), allow_deletions=None, lock_timeout=1)
        except ReconcilerError:
            pass

    check()

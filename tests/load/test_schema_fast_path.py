"""The compiled schema check (jsonschema-rs) may only skip python-jsonschema when both agree.

`desired._fast_says_valid` lets a valid file skip python-jsonschema (2.6 s at 10,000 accounts). It
must never call a document valid that python-jsonschema rejects, or a schema error would go
unreported. These tests compare the two on many generated documents, near-valid ones included,
and check that the fast path is really taken for ordinary files. The sidecar's check of only the
entries that changed since the last valid document must answer exactly as the whole check.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import generate
from reconciler.load import desired
from reconciler.load.yamlload import load_yaml_bytes
from tests.support.util import REPO

HASH = "{SHA512-CRYPT}" + "$6$saltsalt$" + "a" * 86
TEXTS = [
    "example.com", "example.org", "a@example.com", "jane.doe@example.org", "A@example.com",
    "a@example.com\n", "a b@example.com", "a+b@example.com", "@example.com", "a@b", "a@-b.com",
    HASH, "{SSHA}abc", "{SSHA}ab\x1ccd", "{SSHA}ab\xa0cd", "{SSHA}ab\ufeffcd", "{SSHA}a|b",
    "{PLAIN}x", "nohash", "5G", "500M", "100k", "5g", "0", "1.5G", "BOB_PASSWORD", "1BAD",
    "B\xc4D", "/run/secrets/jane", "", ".Junk", "cur", ".", "..", "a..b", "a/b", ".Archive*",
    "spam", "ham", "virus", "banned", "bad_header", "0 2 * * *", "@daily", "mail.example.com",
    "x" * 70 + ".com", "a" * 250 + "@example.com", "a" * 64 + "@example.com",
    "a" * 65 + "@example.com", "a@example.123", "10.0.0.1", "a@10.0.0.1", "a@[10.0.0.1]",
]
ALPHABET = "abcz09.-_@{}|: +AZ$/*\n\t\x1c\xa0\xe9"
NAMES = [
    "version", "hostname", "domains", "accounts", "aliases", "catch_all", "devnull", "quarantine",
    "sa_learn", "policy", "password_hash", "password_file", "password_env", "quota", "mailbox",
    "kinds", "schedule", "learn", "folder", "prune", "max_deletions", "unknown",
]

texts = st.one_of(st.sampled_from(TEXTS), st.text(alphabet=ALPHABET, max_size=14))
numbers = st.one_of(
    st.sampled_from([0, 1, 2, -1, 5, 2**53, 2**63, 10**30]),
    st.sampled_from([0.0, 1.0, 1.5, -0.0, float("nan"), float("inf")]),
)
scalars = st.one_of(texts, numbers, st.booleans(), st.none())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(NAMES), texts), inner, max_size=3),
    ),
    max_leaves=8,
)


VALID_ADDRESSES = ["a@example.com", "jane.doe@example.org", "b_c-d@example.com"]
VALID_ACCOUNTS = [{"password_hash": HASH}, {"password_env": "BOB_PASSWORD"},
                  {"password_file": "/run/secrets/a"}, {"password_hash": HASH, "quota": "5G"},
                  {"password_env": "X", "quota": 0}, {"password_file": "s", "quota": "100k"}]


@st.composite
def valid_documents(draw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": 1, "domains": ["example.com", "example.org"]}
    if draw(st.booleans()):
        doc["hostname"] = "mail.example.net"
    addresses = draw(st.lists(st.sampled_from(VALID_ADDRESSES), min_size=1, unique=True))
    doc["accounts"] = {a: dict(draw(st.sampled_from(VALID_ACCOUNTS))) for a in addresses}
    if draw(st.booleans()):
        doc["aliases"] = {"team@example.org": draw(st.sampled_from(
            ["a@example.com", ["a@example.com", "x@elsewhere.net"]]))}
    if draw(st.booleans()):
        doc["catch_all"] = {"example.com": "a@example.com"}
    if draw(st.booleans()):
        doc["devnull"] = ["noreply@example.com"]
    if draw(st.booleans()):
        doc["quarantine"] = {"mailbox": "a@example.com", "kinds": ["spam", "virus"]}
    if draw(st.booleans()):
        doc["sa_learn"] = [{"schedule": "0 2 * * *", "learn": "spam", "folder": ".Junk",
                            "accounts": ["a@example.com"]},
                           {"schedule": "@daily", "learn": "ham", "folder": "cur",
                            "domains": ["example.org"]}]
    if draw(st.booleans()):
        doc["policy"] = {"prune": False, "max_deletions": 5}
    return doc


def _places(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every value's path, and ("key", path) for every mapping key."""
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out.append(("key", path + (key,)))
            out += _places(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _places(value, path + (i,))
    return out


def _replace_some(draw: Any, doc: dict[str, Any]) -> None:
    """Replace zero to two values or keys of `doc`, in place, by something else."""
    for _ in range(draw(st.integers(0, 2))):
        place = draw(st.sampled_from(_places(doc)[1:]))
        replacement = draw(st.one_of(st.sampled_from(TEXTS), scalars, values))
        if place[0] == "key":
            *parents, key = place[1]
            parent = _at(doc, parents)
            if isinstance(parent, dict) and isinstance(replacement, str) and key in parent:
                parent[replacement] = parent.pop(key)
            continue
        *parents, last = place
        _at(doc, parents)[last] = replacement


@st.composite
def documents(draw: Any) -> dict[str, Any]:
    """A valid document with zero to two values or keys replaced by something else."""
    doc = draw(valid_documents())
    _replace_some(draw, doc)
    return doc


def _at(doc: Any, path: list[Any]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@st.composite
def edits_of_valid_documents(draw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(A, B): a valid document and an edit of it, sharing the value objects of the accounts and
    aliases the edit left alone, as the sidecar's incremental loader hands them back."""
    before = draw(valid_documents())
    after = copy.deepcopy(before)
    _replace_some(draw, after)
    for section in desired.EntryModels.SECTIONS:
        old, new = before.get(section), after.get(section)
        if isinstance(old, dict) and isinstance(new, dict):
            for key, value in new.items():
                if key in old and old[key] == value:
                    new[key] = old[key]  # the same object, as for an unchanged chunk
    return before, after


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits_of_valid_documents())
def test_checking_only_changed_entries_answers_like_the_whole_check(
        pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    before, after = pair
    known = desired.EntryModels()
    desired.build_state(before, known)
    assert desired._fast_says_valid(after, known=known) == desired._fast_says_valid(after), after


def test_after_one_edit_only_that_entry_is_checked_alone() -> None:
    doc = load_yaml_bytes(generate.to_yaml(generate.build(300)).encode(), "generated").value
    known = desired.EntryModels()
    desired.build_state(doc, known)
    edited = {**doc, "accounts": dict(doc["accounts"]), "aliases": dict(doc["aliases"])}
    address = next(iter(edited["aliases"]))
    edited["aliases"][address] = ["a@elsewhere.net"]
    edited["accounts"]["new.one@" + doc["domains"][0]] = {"password_env": "NEW_ONE"}
    skeleton, fresh = desired._without_known_entries(edited, known)
    assert fresh == {"accounts": {"new.one@" + doc["domains"][0]: {"password_env": "NEW_ONE"}},
                     "aliases": {address: ["a@elsewhere.net"]}}
    assert len(skeleton["accounts"]) == 1 and skeleton["aliases"] == {}  # minProperties: 1
    assert desired._fast_says_valid(edited, known=known)
    edited["accounts"]["new.one@" + doc["domains"][0]] = {"password_env": "1BAD"}
    assert not desired._fast_says_valid(edited, known=known)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_fast_path_never_accepts_what_python_jsonschema_rejects(doc: dict[str, Any]) -> None:
    if desired._fast_says_valid(doc):
        assert desired._validator().is_valid(doc), doc


def test_fast_path_never_accepts_a_single_bad_value() -> None:
    """Every value and key of a rich valid document, replaced by every sample in turn."""
    base = {
        "version": 1, "hostname": "mail.example.net", "domains": ["example.com", "example.org"],
        "accounts": {"a@example.com": {"password_hash": HASH, "quota": "5G"},
                     "b@example.org": {"password_env": "BOB_PASSWORD", "quota": 0},
                     "c@example.org": {"password_file": "/run/secrets/c"}},
        "aliases": {"team@example.org": ["a@example.com", "x@elsewhere.net"],
                    "info@example.com": "a@example.com"},
        "catch_all": {"example.com": "a@example.com"}, "devnull": ["noreply@example.com"],
        "quarantine": {"mailbox": "a@example.com", "kinds": ["spam", "virus"]},
        "sa_learn": [{"schedule": "0 2 * * *", "learn": "spam", "folder": ".Junk",
                      "accounts": ["a@example.com"]},
                     {"schedule": "@daily", "learn": "ham", "folder": "cur",
                      "domains": ["example.org"]}],
        "policy": {"prune": False, "max_deletions": 5},
    }
    assert desired._fast_says_valid(base) and desired._validator().is_valid(base)
    samples: list[Any] = [*TEXTS, 0, 1, -1, 2**63, 1.0, 1.5, True, False, None, [], {},
                          ["a@example.com"], {"a": 1}]
    checked = 0
    for place in _places(base)[1:]:
        for sample in samples:
            doc = copy.deepcopy(base)
            if place[0] == "key":
                if not isinstance(sample, str):
                    continue
                *parents, key = place[1]
                parent = _at(doc, parents)
                parent[sample] = parent.pop(key)
            else:
                *parents, last = place
                _at(doc, parents)[last] = sample
            if desired._fast_says_valid(doc):
                assert desired._validator().is_valid(doc), (place, sample)
            checked += 1
    assert checked > 3000


def test_ordinary_files_take_the_fast_path() -> None:
    """If this fails, jsonschema-rs is missing or rejects valid files: validation got 100x slower."""
    example = load_yaml_bytes((REPO / "examples" / "mailserver.yaml").read_bytes(), "example")
    assert desired._fast_says_valid(example.value)
    generated = load_yaml_bytes(generate.to_yaml(generate.build(300)).encode(), "generated")
    assert desired._fast_says_valid(generated.value)


def test_invalid_files_are_still_explained_by_python_jsonschema() -> None:
    doc = load_yaml_bytes(
        b"version: 1\ndomains: [example.com]\naccounts:\n  a@example.com:\n"
        b"    password_env: BOB\n    quota: 5g\n    colour: blue\n", "bad.yaml")
    messages = [d.message for d in desired.check_document(doc)]
    assert any("quota must be 0" in m for m in messages), messages
    assert any("unknown key 'colour'" in m for m in messages), messages

"""The loader keeps positions and refuses what PyYAML's safe_load would silently accept."""

from __future__ import annotations

import re
import time

import pytest

from reconciler.load.yamlload import MAX_BYTES, YamlLoadError, load_yaml_bytes


def messages(data: bytes) -> list[str]:
    with pytest.raises(YamlLoadError) as exc:
        load_yaml_bytes(data, "f.yaml")
    return [d.format() for d in exc.value.diagnostics]


def test_positions_of_keys_and_values() -> None:
    doc = load_yaml_bytes(b"a:\n  b: [x, 'y']\n  c: {d: 1}\n", "f.yaml")
    assert doc.value == {"a": {"b": ["x", "y"], "c": {"d": 1}}}
    assert doc.key_marks[("a", "b")] == (2, 3)
    assert doc.marks[("a", "b", 1)] == (2, 10)
    assert doc.marks[("a", "c", "d")] == (3, 10)
    assert doc.position(("a", "c", "nope")) == (3, 6)  # falls back to the nearest parent


def test_duplicate_keys_are_errors_at_every_depth() -> None:
    found = messages(b"a: 1\nb:\n  x: 1\n  x: 2\na: 3\n")
    assert any("f.yaml:4:3:" in m and "duplicate key 'x' (first on line 3)" in m for m in found)
    assert any("f.yaml:5:1:" in m and "duplicate key 'a'" in m for m in found)


def test_scalars_resolve_like_yaml_but_keys_stay_text() -> None:
    doc = load_yaml_bytes(b"yes: no\n1: 0\nq: '0'\nn: ~\nf: -1\ns: '-1'\n", "f.yaml")
    assert doc.value == {"yes": False, "1": 0, "q": "0", "n": None, "f": -1, "s": "-1"}


def test_anchors_within_budget_are_fine_but_bombs_are_not() -> None:
    doc = load_yaml_bytes(b"t: &t [a@b.com, c@d.com]\nu: *t\n", "f.yaml")
    assert doc.value["u"] == ["a@b.com", "c@d.com"]
    levels = "a: &a [" + ",".join(["x"] * 10) + "]\n"
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]\n"
    start = time.monotonic()
    assert any("billion laughs" in m for m in messages(levels.encode()))
    assert time.monotonic() - start < 5  # refused early, not after expanding 10**9 values


def test_deep_nesting_is_refused_without_recursion() -> None:
    """Refused with a position, whoever refuses first: libyaml has its own depth limit (PyYAML
    6.0.4 reports it before our MAX_DEPTH), so the wording is not asserted."""
    for data, line in ((b"[" * 200_000, 1),
                       (b"a:\n" + b"".join(b"  " * i + b"k:\n" for i in range(1, 100)), None)):
        refused = messages(data)
        assert len(refused) == 1, refused
        assert re.match(r"f\.yaml:(\d+):\d+: error: ", refused[0]), refused
        if line is not None:
            assert refused[0].startswith(f"f.yaml:{line}:")


@pytest.mark.parametrize(("data", "words"), [
    (b"", "empty"),
    (b"# only a comment\n", "empty"),
    (b"- a\n- b\n", "must be a mapping"),
    (b"just text\n", "must be a mapping"),
    (b"a: b\n---\nc: d\n", "more than one YAML document"),
    (b"a: \x00\n", "NUL byte"),
    (b"a: \xc3\x28\n", "not UTF-8"),
    (b"a: !!python/object:os.system x\n", "unsupported YAML tag"),
    (b"? [x]\n: y\n", "a key must be a plain string"),
    (b"<<: {a: 1}\n", "merge keys"),
    (b"a: *nowhere\n", "alias"),
    (b"a:\n\t- x\n", "tabs"),
])
def test_refusals(data: bytes, words: str) -> None:
    assert any(words in m for m in messages(data)), messages(data)


def test_size_limit_is_checked_before_parsing() -> None:
    assert any("the limit is" in m for m in messages(b"#" * (MAX_BYTES + 1)))


def test_utf8_bom_is_accepted() -> None:
    assert load_yaml_bytes(b"\xef\xbb\xbfa: 1\n", "f.yaml").value == {"a": 1}


@pytest.mark.parametrize(("text", "read"), [
    ("010", 8), ("0x10", 16), ("1_000", 1000), ("10:00", 600), ("00", 0), ("1:30.5", 90.5)])
def test_yaml_1_1_number_forms_are_refused_at_their_place(text: str, read: object) -> None:
    """Decided: PyYAML reads these as YAML 1.1 numbers (a quota, max_deletions or schedule
    written unquoted would silently become another value); YAML 1.2 readers see something else.
    Refused with the position, what it reads as and both fixes."""
    found = messages(f"policy:\n  max_deletions: {text}\n".encode())
    assert len(found) == 1 and found[0].startswith("f.yaml:2:18: error: policy.max_deletions: ")
    assert f"reads as {read!r}" in found[0] and f"quote it ('{text}')" in found[0]


@pytest.mark.parametrize("text", ["10", "0", "-1", "+5", "1.5", ".5", "1e3", "'010'", '"10:00"'])
def test_numbers_that_mean_the_same_in_yaml_1_2_are_kept(text: str) -> None:
    load_yaml_bytes(f"a: {text}\n".encode(), "f.yaml")

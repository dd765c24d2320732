"""Positions are recorded lazily: a valid file never pays for them, a diagnostic still gets them."""

from __future__ import annotations

from reconciler.load import yamlload

TEXT = """\
version: 1
domains: [example.com, example.org]
accounts:
  a@example.com:
    password_hash: "{SHA512-CRYPT}$6$x$y"
    quota: 5G
aliases:
  team@example.org: [a@example.com, x@elsewhere.net]
  one@example.org: &target a@example.com
  two@example.org: *target
"""


def test_positions_match_a_full_read() -> None:
    lazy = yamlload.load_yaml_bytes(TEXT.encode(), "m.yaml")
    assert lazy._unread_text is not None  # nothing recorded yet
    full = yamlload.DocumentBuilder("m.yaml").build(TEXT)
    assert lazy.position(("accounts", "a@example.com", "quota")) == (6, 12)
    assert lazy.position(("accounts", "a@example.com"), key=True) == (4, 3)
    assert lazy.position(("aliases", "team@example.org", 1)) == (8, 37)
    assert lazy.position(("aliases", "nobody@example.org")) == (8, 3)  # the nearest parent
    assert lazy.marks == full.marks and lazy.key_marks == full.key_marks
    assert lazy.value == full.value


def test_reading_a_table_directly_fills_it_too() -> None:
    doc = yamlload.load_yaml_bytes(TEXT.encode(), "m.yaml")
    assert doc.key_marks[("aliases", "two@example.org")] == (10, 3)
    assert doc.marks[("domains", 1)] == (2, 24)


def test_errors_found_while_reading_keep_their_lines() -> None:
    try:
        yamlload.load_yaml_bytes(TEXT.encode() + b"version: 2\n", "m.yaml")
    except yamlload.YamlLoadError as exc:
        expected = ("m.yaml:11:1: error: version: duplicate key 'version' (first on line 1); "
                    "YAML would silently keep only the last one: merge the two")
        assert [d.format() for d in exc.diagnostics] == [expected]
    else:
        raise AssertionError("a duplicate key must be refused")

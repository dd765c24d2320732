"""A position inside one entry is read from that entry's text alone, and is the full read's."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import generate
from reconciler.load import yamlload
from reconciler.load.yamlchunks import IncrementalLoader

REPO = Path(__file__).resolve().parent.parent.parent

PLAIN = """\
version: 1
domains: [example.com, example.org]
accounts:  # the people
  a@example.com:
    password_hash: "{SHA512-CRYPT}$6$x$y"
    quota: 5G

  # a comment between entries
  b@example.com:
    password_file: b.txt
    quota: 1G
# a comment at column 0 inside the section
  c@example.com: {password_file: c.txt, quota: 2G}
aliases:
    team@example.org: [a@example.com, x@elsewhere.net]
    list@example.org:
      - a@example.com
      - b@example.com
"""

CORPUS = {
    "plain": PLAIN,
    "crlf": PLAIN.replace("\n", "\r\n"),
    "anchors": """\
aliases:
  team@example.org: [a@example.com, x@elsewhere.net]
  one@example.org: &target a@example.com
  two@example.org: *target
""",
    "compact list": """\
aliases:
  a@example.org:
  - b@example.com
  - c@example.com
  d@example.org: e@example.com
""",
    "a key line inside a quoted value": """\
aliases:
  a@example.org: "b@example.com
  c@example.org: d"
  e@example.org: f@example.com
""",
    "quoted keys": """\
aliases:
  "a@example.org": b@example.com
  'c@example.org': d@example.com
""",
    "flow section": "aliases: {a@example.org: b@example.com, c@example.org: [d@x.org]}\n",
    "line separator in a value": 'aliases:\n  a@example.org: "x\u2028y"\n  b@example.org: c@x.org\n',
    "document marker": "---\naliases:\n  a@example.org: b@example.com\n",
    "nested": """\
relay:
  example.com:
    hosts: [{host: a.example.net, port: 587}, [x, [], {}], ~]
    empty:
    list:
      - {a: 1}
      - - b
        - c: [d]
      -
    'quoted': "value"
    ? complex
    : key
""",
    "a section twice in text": """\
notes: |
  aliases:
    a@example.org: not this one
aliases:
  a@example.org: b@example.com
""",
}


def every_path(doc: yamlload.Document) -> list[tuple[tuple[object, ...], bool]]:
    found = [(path, False) for path in doc.marks] + [(path, True) for path in doc.key_marks]
    missing = [(path + ("nope",), key) for path, key in found if len(path) >= 2]
    return found + missing


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_position_is_the_full_reads(name: str) -> None:
    text = CORPUS[name]
    full = yamlload.DocumentBuilder("m.yaml").build(text)
    for path, key in every_path(full):
        for load in (yamlload.load_yaml_bytes, IncrementalLoader().load):
            lazy = load(text.encode(), "m.yaml")  # fresh: no full read from an earlier path
            assert lazy.position(path, key=key) == full.position(path, key=key), (path, key)


@pytest.mark.parametrize("source", ["example", "generated"])
def test_real_files_give_the_full_reads_positions(source: str) -> None:
    if source == "example":
        text = (REPO / "examples" / "mailserver.yaml").read_text()
    else:
        text = generate.to_yaml(generate.build(300))
    full = yamlload.DocumentBuilder("m.yaml").build(text)
    lazy = yamlload.load_yaml_bytes(text.encode(), "m.yaml")
    for path, key in every_path(full):
        if len(path) >= 2:
            assert lazy.position(path, key=key) == full.position(path, key=key), (path, key)


def test_a_warning_on_an_entry_does_not_read_the_whole_file_again() -> None:
    text = generate.to_yaml(generate.build(300))
    full = yamlload.DocumentBuilder("m.yaml").build(text)
    doc = yamlload.load_yaml_bytes(text.encode(), "m.yaml")
    quotas = [path for path in full.marks if path[:1] == ("accounts",) and path[-1:] == ("quota",)]
    assert len(quotas) > 100
    for path in quotas:
        assert doc.position(path) == full.position(path)
    assert doc._unread_text is not None  # the positions tables were never filled


def test_the_sidecar_reads_an_unchanged_entrys_positions_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = generate.build(300)
    loader = IncrementalLoader()
    first = loader.load(generate.to_yaml(spec).encode(), "m.yaml")
    address = next(a for a, entry in first.value["accounts"].items() if "quota" in entry)
    path = ("accounts", address, "quota")
    first.position(path)
    generate.add_account(spec)  # another save: a new entry above or below, lines move
    text = generate.to_yaml(spec)
    monkeypatch.setattr(yamlload, "_read_entry", lambda *args: pytest.fail("read again"))
    second = loader.load(text.encode(), "m.yaml")
    full = yamlload.DocumentBuilder("m.yaml").build(text)
    assert second.position(path) == full.position(path)

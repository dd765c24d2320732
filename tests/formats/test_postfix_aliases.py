"""postfix-aliases.cf codec (aliases(5), appended to /etc/aliases by DMS): corpus and round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.formats import aliases
from reconciler.formats._lines import HEADER
from reconciler.formats.aliases import LocalAlias
from tests.formats._corpus import addresses, comments, corpus_files, read

DIR = aliases.FILENAME
LOG = '"|/usr/local/bin/log-mail  --quiet"'

EXPECTED = {
    "dms-faq.cf": ({"devnull": LocalAlias("devnull", "/dev/null")}, (), (), []),
    "hand-edited.cf": (
        {"devnull": LocalAlias("devnull", "/dev/null"),
         "ops": LocalAlias("ops", "alice@example.com, bob@example.org"),  # continuation joined
         "log": LocalAlias("log", LOG),  # the quoted command keeps its two spaces
         "list": LocalAlias("list", ":include:/etc/postfix/list.txt"),
         "archive": LocalAlias("Archive", "/var/archive/mail")},
        ("# local aliases",),
        ("broken line without colon", "empty:"),
        [(8, "not `name: target`"), (9, "no target"),
         (10, "duplicate local alias 'devnull' (first on line 2)")],
    ),
    "canonical.cf": (
        {"devnull": LocalAlias("devnull", "/dev/null"), "log": LocalAlias("log", LOG),
         "ops": LocalAlias("ops", "alice@example.com, bob@example.org")},
        ("# local aliases",), ("not an alias line",), [(6, "not `name: target`")],
    ),
}


def test_every_corpus_file_has_an_expectation():
    assert sorted(EXPECTED) == corpus_files(DIR)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_parses_as_postalias_reads_it(name):
    entries, comments_, invalid, problems = EXPECTED[name]
    parsed = aliases.parse(read(DIR, name))
    assert parsed.entries == entries
    assert list(parsed.entries) == list(entries)
    assert parsed.comments == comments_
    assert parsed.invalid == invalid
    assert [(p.line, words in p.message) for p, (_, words) in zip(parsed.problems, problems)] == [
        (line, True) for line, _ in problems]
    assert len(parsed.problems) == len(problems)


@pytest.mark.parametrize("name", corpus_files(DIR))
def test_rendering_any_corpus_file_is_canonical_and_loses_no_entry(name):
    parsed = aliases.parse(read(DIR, name))
    once = aliases.render(parsed.entries.values(), comments=parsed.comments, invalid=parsed.invalid)
    again = aliases.parse(once)
    assert once.startswith(HEADER + "\n") and once.endswith("\n") and "\r" not in once
    assert again.entries == parsed.entries
    assert again.invalid == parsed.invalid


def test_devnull_recipe_compares_equal_however_it_is_spaced():
    spaced = aliases.parse("devnull:\t  /dev/null  \r\n").entries["devnull"]
    assert spaced.normalised() == LocalAlias("devnull", "/dev/null").normalised()
    listed = LocalAlias("x", "a@b.c,d@e.f")
    assert listed.normalised() == LocalAlias("x", "a@b.c ,  d@e.f").normalised()


names = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)
values = st.one_of(
    st.just("/dev/null"),
    st.lists(addresses, min_size=1, max_size=3).map(", ".join),
    st.text("abcdefghijklmnopqrstuvwxyz/ -", min_size=1, max_size=20).map(lambda s: f'"|/bin/{s}"'),
).filter(lambda v: v == v.strip())
entry_lists = st.lists(st.builds(LocalAlias, names, values), max_size=10,
                       unique_by=lambda e: e.name)


@given(entry_lists, st.lists(comments, max_size=3))
def test_parse_of_render_gives_back_the_entries(entries, comment_lines):
    text = aliases.render(entries, comments=comment_lines)
    parsed = aliases.parse(text)
    assert parsed.entries == {e.name: e for e in entries}
    assert parsed.comments == tuple(comment_lines)
    assert aliases.render(parsed.entries.values(), comments=parsed.comments) == text

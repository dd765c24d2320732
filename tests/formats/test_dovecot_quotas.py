"""dovecot-quotas.cf codec: `address:size` read like DMS's `grep -i "<address>:"`; round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.formats import quotas
from reconciler.formats._lines import HEADER
from reconciler.formats.quotas import QuotaLine
from tests.formats._corpus import addresses, comments, corpus_files, read

DIR = quotas.FILENAME

EXPECTED = {
    "setup-cli.cf": (
        {"alice@example.com": QuotaLine("alice@example.com", "5G"),
         "bob@example.org": QuotaLine("bob@example.org", "500M"),
         "carol@example.com": QuotaLine("carol@example.com", "0")},
        (), (), [],
    ),
    "dms-created-empty.cf": ({}, (), (), []),
    "blanks-around-colon.cf": (
        # kept as written: DMS's grep misses `alice@example.com :` and hands Dovecot ` 500M`, so
        # these must not look like the canonical entries (the plan rewrites them)
        {"alice@example.com": QuotaLine("alice@example.com ", " 5G"),
         "bob@example.org": QuotaLine("bob@example.org", " 500M"),
         "carol@example.com": QuotaLine("carol@example.com", "0")},
        (), (), [(1, "blanks around ':'"), (2, "blanks around ':'")],
    ),
    "hand-edited.cf": (
        {
            # CRLF: DMS reads this file without its CRLF fix, so the CR is part of each size
            "alice@example.com": QuotaLine("alice@example.com ", " 5G\r"),
            "pal@example.com": QuotaLine("pal@example.com", "1G\r"),
            "al@example.com": QuotaLine("al@example.com", "2G\r"),
            "bob@example.org": QuotaLine("bob@example.org", "10k"),  # the last line has no CRLF
        },
        ("# quotas for al@example.com: ignored by us",),
        ("weird@example.com:1:2\r", "nocolon\r"),
        [(1, "grep for the quota of 'al@example.com' matches this line first"),
         (2, "not read it as written"), (3, "CRLF"), (4, "CRLF"), (5, "not `address:size`"),
         (6, "not `address:size`"), (7, "CRLF"),
         (7, "duplicate quota 'alice@example.com' (first on line 2)"),
         (7, "grep for the quota of 'alice@example.com' matches this line first")],
    ),
    "setup-cli-unsafe-order.cf": (
        # `setup quota set pal@... 1G`, then `setup quota set al@... 2G`: appended in that order
        {"pal@example.com": QuotaLine("pal@example.com", "1G"),
         "al@example.com": QuotaLine("al@example.com", "2G"),
         "alice@example.com": QuotaLine("alice@example.com", "5G")},
        (), (), [(1, "so 'al@example.com' gets '1G' from line 1, not '2G'")],
    ),
    "canonical.cf": (
        {"al@example.com": QuotaLine("al@example.com", "2G"),
         "bob@example.org": QuotaLine("bob@example.org", "500M"),
         "pal@example.com": QuotaLine("pal@example.com", "1G"),
         "alice@example.com": QuotaLine("alice@example.com", "5G")},
        ("# quotas",), ("weird@example.com:1:2",), [(7, "not `address:size`")],
    ),
}


def test_every_corpus_file_has_an_expectation():
    assert sorted(EXPECTED) == corpus_files(DIR)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_parses_as_dms_reads_it(name):
    entries, comments_, invalid, problems = EXPECTED[name]
    parsed = quotas.parse(read(DIR, name))
    assert parsed.entries == entries
    assert list(parsed.entries) == list(entries)
    assert parsed.comments == comments_
    assert parsed.invalid == invalid
    assert [(p.line, words in p.message) for p, (_, words) in zip(parsed.problems, problems)] == [
        (line, True) for line, _ in problems]
    assert len(parsed.problems) == len(problems)


# What DMS's `grep -i "<address>:"` finds first when it is not the entry's own line.
SHADOWED = {
    "hand-edited.cf": {"al@example.com": "' ignored by us\\r' from line 1",  # the comment!
                       "alice@example.com": "'9G\\r' from line 7"},  # `alice@example.com :` misses
    "setup-cli-unsafe-order.cf": {"al@example.com": "'1G' from line 1"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entries_dms_reads_from_another_line_are_marked(name):
    parsed = quotas.parse(read(DIR, name))
    shadowed = {key: e.shadowed for key, e in parsed.entries.items() if e.shadowed}
    assert shadowed == SHADOWED.get(name, {})


@pytest.mark.parametrize("name", corpus_files(DIR))
def test_rendering_any_corpus_file_is_canonical_and_loses_no_entry(name):
    parsed = quotas.parse(read(DIR, name))
    once = quotas.render(parsed.entries.values(), comments=parsed.comments, invalid=parsed.invalid)
    again = quotas.parse(once)
    assert once.startswith(HEADER + "\n") and once.endswith("\n") and "\r" not in once
    # a rewrite is LF only: an entry we keep loses its CR, which DMS would have read as data
    assert again.entries == {k: QuotaLine(e.address, e.size.removesuffix("\r"))
                             for k, e in parsed.entries.items()}
    assert again.invalid == tuple(line.removesuffix("\r") for line in parsed.invalid)


def test_render_drops_comments_that_dms_grep_would_read_as_a_quota():
    # `grep -i "al@example.com:"` matches this comment and DMS would use " ignored by us" as size
    parsed = quotas.parse(read(DIR, "hand-edited.cf"))
    out = quotas.render(parsed.entries.values(), comments=parsed.comments, invalid=parsed.invalid)
    assert "# quotas for al@example.com" not in out


def test_shorter_address_comes_first_so_its_grep_finds_its_own_line():
    out = quotas.render([QuotaLine("pal@example.com", "1G"), QuotaLine("al@example.com", "2G")])
    assert out.index("al@example.com:2G") < out.index("pal@example.com:1G")


sizes = st.one_of(st.just("0"), st.builds(lambda n, u: f"{n}{u}", st.integers(1, 10**6),
                                          st.sampled_from("BkMGT")))
# short addresses over few letters and domains: many are substrings or `.`-matches of others
tangled = st.builds(lambda local, domain: f"{local}@{domain}",
                    st.text("alp.", min_size=1, max_size=4),
                    st.sampled_from(["d.com", "dxcom", "e.d.com"]))
entry_lists = st.lists(st.builds(QuotaLine, st.one_of(addresses, tangled), sizes), max_size=12,
                       unique_by=lambda e: e.address)


@given(entry_lists, st.lists(comments, max_size=3))
def test_parse_of_render_gives_back_the_entries(entries, comment_lines):
    text = quotas.render(entries, comments=comment_lines)
    parsed = quotas.parse(text)
    assert parsed.entries == {e.address: e for e in entries}
    assert not any(e.shadowed for e in parsed.entries.values())  # DMS's grep finds each line
    assert parsed.comments == tuple(comment_lines)
    assert quotas.render(parsed.entries.values(), comments=parsed.comments) == text
    lines = text.split("\n")[1 + len(comment_lines):-1]
    assert lines == sorted(lines, key=lambda line: (len(line.split(":")[0]),
                                                    -line.split(":")[0].count(".")))

"""postfix-virtual.cf codec: read as Postfix's texthash reads it; canonical files round-trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.formats import virtual
from reconciler.formats._lines import HEADER
from reconciler.formats.virtual import VirtualLine
from tests.formats._corpus import addresses, comments, corpus_files, domains, read

DIR = virtual.FILENAME


def v(key: str, *targets: str) -> VirtualLine:
    return VirtualLine(key, targets)


# corpus file -> (entries by key, comments, unreadable lines, [(line, words in the problem)])
EXPECTED = {
    "setup-cli.cf": (
        {"alias@example.com": v("alias@example.com", "target1@forward.com", "target2@forward.com"),
         "postmaster@example.com": v("postmaster@example.com", "alice@example.com"),
         "@example.org": v("@example.org", "alice@example.com"),
         "alias2@example.com": v("alias2@example.com", "external@elsewhere.net")},
        (), (), [],
    ),
    "dms-test-config.cf": (
        {"alias1@example.com": v("alias1@example.com", "alice@example.com"),
         "alias2@example.com": v("alias2@example.com", "external1@elsewhere.net"),
         "@example.org": v("@example.org", "alice@example.com")},
        ("# this is a test comment, please keep me :'(", "     # an indented comment"), (), [],
    ),
    "hand-edited.cf": (
        {
            # Postfix joins indented lines to the entry before, even across a comment line
            # (checked with `postmap -q team@example.com texthash:...`)
            "team@example.com": v("team@example.com", "alice@example.com", "bob@example.org",
                                  "carol@example.com", "dave@example.com", "erin@example.com"),
            "sales@example.com": v("Sales@Example.com", "alice@example.com"),
            "bare": v("bare", "alice@example.com"),
            "@example.com": v("@example.com", "catch@example.com"),
            "spaces@example.com": v("spaces@example.com", "a@example.com", "b@example.com"),
        },
        ("# team lists", "# a comment inside a continued entry"),
        ("notarget@example.com",),
        [(7, "duplicate alias 'sales@example.com' (first on line 6)"), (9, "no target")],
    ),
    "orphan-continuation.cf": (
        {"first@example.com": v("first@example.com", "alice@example.com")},
        (), ("   orphan@example.com",), [(1, "starts with whitespace")],
    ),
    "empty.cf": ({}, (), (), []),
    "canonical.cf": (
        {"@example.com": v("@example.com", "alice@example.com"),
         "alice@example.com": v("alice@example.com", "alice@example.com"),
         "noreply@example.com": v("noreply@example.com", "devnull"),
         "team@example.com": v("team@example.com", "alice@example.com", "bob@example.org"),
         "list@example.org": v("list@example.org", "a@elsewhere.net", "b@elsewhere.net")},
        (), (), [],
    ),
    "canonical-with-trivia.cf": (
        {"bare": v("bare", "alice@example.com"),
         "sales@example.com": v("sales@example.com", "alice@example.com")},
        ("# forwards for the sales team",),
        ("   leading@example.com", "notarget@example.com"),
        [(3, "starts with whitespace"), (6, "no target")],
    ),
}


def test_every_corpus_file_has_an_expectation():
    assert sorted(EXPECTED) == corpus_files(DIR)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_parses_as_postfix_reads_it(name):
    entries, comments_, invalid, problems = EXPECTED[name]
    parsed = virtual.parse(read(DIR, name))
    assert parsed.entries == entries
    assert list(parsed.entries) == list(entries)
    assert parsed.comments == comments_
    assert parsed.invalid == invalid
    assert [(p.line, w in p.message) for p, (_, w) in zip(parsed.problems, problems)] == [
        (line, True) for line, _ in problems]
    assert len(parsed.problems) == len(problems)


@pytest.mark.parametrize("name", corpus_files(DIR))
def test_rendering_any_corpus_file_keeps_what_postfix_sees(name):
    parsed = virtual.parse(read(DIR, name))
    once = virtual.render(parsed.entries.values(), comments=parsed.comments, invalid=parsed.invalid)
    again = virtual.parse(once)
    assert once.startswith(HEADER + "\n") and once.endswith("\n") and "\r" not in once
    assert again.entries == parsed.entries  # no unreadable line was glued onto an entry
    assert sorted(again.invalid) == sorted(parsed.invalid)
    assert virtual.render(again.entries.values(), comments=again.comments,
                          invalid=again.invalid) == once


def test_an_indented_unreadable_line_is_never_written_after_an_entry():
    # After an entry, Postfix would read it as more targets of that entry.
    out = virtual.render([v("a@example.com", "b@example.com")], invalid=["   stray@example.net"])
    lines = out.splitlines()
    assert lines.index("   stray@example.net") < lines.index("a@example.com b@example.com")
    assert virtual.parse(out).entries == {"a@example.com": v("a@example.com", "b@example.com")}


def test_render_writes_one_line_per_key_like_the_setup_cli():
    out = virtual.render([v("team@example.com", "a@example.com", "b@example.org")])
    assert out == f"{HEADER}\nteam@example.com a@example.com,b@example.org\n"


keys = st.one_of(addresses, domains.map(lambda d: "@" + d), st.sampled_from(["devnull", "root"]))
targets = st.lists(st.one_of(addresses, st.just("devnull")), min_size=1, max_size=4, unique=True)
entry_lists = st.lists(st.builds(lambda k, t: VirtualLine(k, tuple(t)), keys, targets),
                       max_size=12, unique_by=lambda e: e.key)
junk = st.builds(lambda indent, word: indent + word, st.sampled_from(["", " ", "\t"]),
                 st.text("abcdefghijklmnopqrstuvwxyz.@", min_size=1, max_size=20))


@given(entry_lists, st.lists(comments, max_size=3), st.lists(junk, max_size=3))
def test_parse_of_render_gives_back_the_entries(entries, comment_lines, invalid):
    text = virtual.render(entries, comments=comment_lines, invalid=invalid)
    parsed = virtual.parse(text)
    assert parsed.entries == {e.key: e for e in entries}
    assert parsed.comments == tuple(comment_lines)
    # Indented unreadable lines in a row form one logical line, as in Postfix: compare the words.
    assert sorted(" ".join(parsed.invalid).split()) == sorted(" ".join(invalid).split())
    assert [x for x in parsed.invalid if not x[0].isspace()] == [
        x for x in invalid if not x[0].isspace()]

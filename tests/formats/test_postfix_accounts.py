"""postfix-accounts.cf codec: files parse as DMS reads them; canonical ones round-trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.formats import accounts
from reconciler.formats._lines import HEADER
from reconciler.formats.accounts import AccountLine
from tests.formats._corpus import (
    addresses,
    comments,
    corpus_files,
    read,
    sha512_hashes,
)
from tests.support.util import sha512_hash

DIR = accounts.FILENAME
# the hashes in the corpus files (fixed salts, so the corpus is stable)
A = sha512_hash("alice-pw", "aliceSalt0001")
B = sha512_hash("bob-pw", "bobSalt000002")
C = sha512_hash("carol-pw", "carolSalt0003")
D = sha512_hash("dave-pw", "daveSalt00004")
MBOX = "userdb_mail=mbox:~/mail:INBOX=~/inbox"

# corpus file -> (entries by key, comments, unreadable lines, [(line, words in the problem)])
EXPECTED = {
    "setup-cli.cf": (
        {"alice@example.com": AccountLine("alice@example.com", A),
         "bob@example.org": AccountLine("bob@example.org", B),
         "carol@example.com": AccountLine("carol@example.com", C)},
        (), (), [],
    ),
    "dms-template.cf": (
        {"alice@example.com": AccountLine("alice@example.com", A),
         "bob@example.org": AccountLine("bob@example.org", B),
         "carol@example.com": AccountLine("carol@example.com", C, MBOX)},
        ("# keep this comment: it has no address", "           # an indented comment"), (), [],
    ),
    "crlf-no-final-newline.cf": (
        # a bare `$6$` hash is kept as written; the address keeps its spelling, the key is lowercase
        {"alice@example.com": AccountLine("Alice@Example.com", A.removeprefix("{SHA512-CRYPT}")),
         "bob@example.org": AccountLine("bob@example.org", B)},
        ("# accounts",), (), [],
    ),
    "empty-hash.cf": (
        {"alice@example.com": AccountLine("alice@example.com", A),
         "broken@example.com": AccountLine("broken@example.com", "")},
        (), (), [(2, "empty password hash")],
    ),
    "duplicates-and-junk.cf": (
        {"alice@example.com": AccountLine("alice@example.com", A),
         "carol@example.com": AccountLine("carol@example.com", C,
                                          "userdb_quota_rule=*:storage=1G userdb_x=a|b")},
        (),
        ("this is not an account", f"  dave@example.com|{D}", f"noat.example.com|{D}", f"|{D}"),
        [(2, "no '|'"), (3, "duplicate account 'alice@example.com' (first on line 1)"),
         (4, "not an address"), (5, "not an address"), (7, "not an address")],
    ),
    "empty.cf": ({}, (), (), []),
    "only-comments.cf": ({}, ("# nothing here yet", "# still nothing"), (), []),
    "canonical.cf": (
        {"bob@example.org": AccountLine("bob@example.org", B),
         "alice@example.com": AccountLine("alice@example.com", A),
         "carol@example.com": AccountLine("carol@example.com", C, MBOX)},
        (), (), [],
    ),
    "canonical-with-trivia.cf": (
        {"al@example.com": AccountLine("al@example.com", D),
         "a.b@example.com": AccountLine("a.b@example.com", B),
         "axb@example.com": AccountLine("axb@example.com", C),
         "pal@example.com": AccountLine("pal@example.com", A)},
        ("# a comment without an address",), ("not an account line",), [(7, "no '|'")],
    ),
    "canonical-empty.cf": ({}, (), (), []),
}


def test_every_corpus_file_has_an_expectation():
    assert sorted(EXPECTED) == corpus_files(DIR)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_parses_as_dms_reads_it(name):
    entries, comments_, invalid, problems = EXPECTED[name]
    parsed = accounts.parse(read(DIR, name))
    assert parsed.entries == entries
    assert list(parsed.entries) == list(entries)  # file order
    assert parsed.comments == comments_
    assert parsed.invalid == invalid
    assert len(parsed.problems) == len(problems)
    for problem, (line, words) in zip(parsed.problems, problems, strict=True):
        assert problem.line == line
        assert words in problem.message


@pytest.mark.parametrize("name", corpus_files(DIR))
def test_rendering_any_corpus_file_is_canonical_and_loses_no_entry(name):
    parsed = accounts.parse(read(DIR, name))
    once = accounts.render(parsed.entries.values(), comments=parsed.comments,
                           invalid=parsed.invalid)
    again = accounts.parse(once)
    assert once.startswith(HEADER + "\n") and once.endswith("\n") and "\r" not in once
    assert again.entries == parsed.entries
    assert again.invalid == parsed.invalid
    assert accounts.render(again.entries.values(), comments=again.comments,
                           invalid=again.invalid) == once


def test_render_orders_lines_so_no_grep_matches_a_longer_address_first():
    text = read(DIR, "canonical-with-trivia.cf")
    keys = list(accounts.parse(text).entries)
    for i, key in enumerate(keys):
        for earlier in keys[:i]:
            assert key not in earlier  # `grep "<key>"` must find its own line first


def test_render_drops_comments_with_an_address_which_dms_greps_would_match():
    out = accounts.render([AccountLine("al@example.com", A)],
                          comments=["# old: pal@example.com", "# keep me"])
    assert "pal@example.com" not in out and "# keep me\n" in out


def test_repr_never_shows_the_hash():
    assert A not in repr(AccountLine("alice@example.com", A, MBOX))
    assert A[20:40] not in repr(accounts.parse(read(DIR, "setup-cli.cf")))


# no NUL either: a line holding one is kept as it is, never read as an account (bash's `read` in
# DMS drops the byte, Dovecot stops at it), and render refuses to write one into an entry
extras = st.one_of(st.none(), st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0",
                                                     exclude_categories=("Cs",)), max_size=40))
entry_lists = st.lists(
    st.builds(AccountLine, addresses, st.one_of(st.just(""), sha512_hashes), extras),
    max_size=12, unique_by=lambda e: e.address,
)
junk = st.text("abcdefghijklmnopqrstuvwxyz .-", min_size=1, max_size=30).filter(
    lambda s: s.strip() and not s.lstrip().startswith("#"))


@given(entry_lists, st.lists(comments, max_size=3), st.lists(junk, max_size=3))
def test_parse_of_render_gives_back_the_entries(entries, comment_lines, invalid):
    text = accounts.render(entries, comments=comment_lines, invalid=invalid)
    parsed = accounts.parse(text)
    assert parsed.entries == {e.address: e for e in entries}
    assert parsed.comments == tuple(comment_lines)
    assert parsed.invalid == tuple(line for line in invalid)
    assert accounts.render(parsed.entries.values(), comments=parsed.comments,
                           invalid=parsed.invalid) == text

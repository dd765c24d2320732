"""amavis.cf: only the marked quarantine block is ours; every byte of the user's part is kept."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.formats import amavis
from tests.formats._corpus import addresses, corpus_files, read

DIR = amavis.FILENAME
Q = "quarantine@example.com"

# corpus file -> (block, unreadable block, broken markers)
EXPECTED = {
    "dms-default.cf": (None, False, False),
    "plain-true.cf": (None, False, False),
    "no-final-newline.cf": (None, False, False),
    "crlf.cf": (None, False, False),
    "no-true-line.cf": (None, False, False),
    "with-block.cf": ({"spam": Q, "virus": Q}, False, False),
    "block-hand-edited.cf": ({"spam": "q@example.com", "virus": "q@example.com"}, False, False),
    "block-unreadable.cf": ({"spam": "q@example.com"}, True, False),
    "block-broken-markers.cf": (None, False, True),
}
NO_BLOCK = [name for name, (block, _, broken) in EXPECTED.items() if block is None and not broken]


def test_every_corpus_file_has_an_expectation():
    assert sorted(EXPECTED) == corpus_files(DIR)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_parses(name):
    block, unreadable, broken = EXPECTED[name]
    parsed = amavis.parse(read(DIR, name))
    assert parsed.block == block
    assert (parsed.unreadable_block, parsed.broken_markers) == (unreadable, broken)


@pytest.mark.parametrize("name", ["with-block.cf", *NO_BLOCK, "block-broken-markers.cf"])
def test_render_of_parse_is_the_file_byte_for_byte(name):
    text = read(DIR, name)
    assert amavis.render(amavis.parse(text)) == text


def test_a_hand_edited_block_is_rewritten_but_nothing_around_it():
    text = read(DIR, "block-hand-edited.cf")
    out = amavis.render(amavis.parse(text))
    assert out == ("use strict;\n" + amavis.render_block(
        {"spam": "q@example.com", "virus": "q@example.com"}) + "1;\n")


@pytest.mark.parametrize("name", NO_BLOCK)
def test_inserting_and_removing_the_block_keeps_every_user_byte(name):
    text = read(DIR, name)
    block = {"spam": Q, "virus": Q, "banned": Q, "bad_header": Q}
    inserted = amavis.render(amavis.with_block(amavis.parse(text), block))
    reparsed = amavis.parse(inserted)
    assert reparsed.block == block
    assert reparsed.before + reparsed.after in (text, text + "1;\n")  # user bytes, in order
    removed = amavis.render(amavis.with_block(reparsed, None))
    if name == "no-true-line.cf":  # the file did not return true; it does from now on
        assert removed == text + "1;\n"
    else:
        assert removed == text


@pytest.mark.parametrize("name", ["dms-default.cf", "plain-true.cf", "no-final-newline.cf",
                                  "crlf.cf"])
def test_the_block_goes_right_before_the_final_true_line(name):
    inserted = amavis.render(amavis.with_block(amavis.parse(read(DIR, name)), {"spam": Q}))
    lines = inserted.splitlines()
    end = lines.index(amavis.END)
    assert lines[end + 1].startswith("1;")
    assert "1;" not in [line.strip()[:2] for line in lines[end + 2:]]


def test_the_mailbox_at_sign_is_escaped_for_perl():
    out = amavis.render_block({"spam": Q})
    assert '$spam_quarantine_to = "quarantine\\@example.com";' in out


def test_a_missing_file_gets_a_block_and_a_true_value():
    out = amavis.render(amavis.with_block(None, {"virus": Q}))
    assert out == amavis.render_block({"virus": Q}) + "1;\n"


def test_broken_markers_are_never_rewritten():
    with pytest.raises(ValueError):
        amavis.with_block(amavis.parse(read(DIR, "block-broken-markers.cf")), {"spam": Q})


perl_lines = st.one_of(
    st.sampled_from(["use strict;", "1;", "1;  # ensure a defined return", "", "# comment",
                     "$max_servers = 2;", "@bypass_spam_checks_maps = (1);", "  1;"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n", exclude_categories=("Cs",)),
            max_size=30).filter(lambda s: "dms-reconciler" not in s),
)
user_files = st.builds(
    lambda lines, eol, final: eol.join(lines) + (eol if final and lines else ""),
    st.lists(perl_lines, max_size=8), st.sampled_from(["\n", "\r\n"]), st.booleans(),
)
blocks = st.builds(lambda kinds, mailbox: {k: mailbox for k in kinds},
                   st.lists(st.sampled_from(amavis.KINDS), min_size=1, unique=True), addresses)


@given(user_files, blocks)
def test_any_user_file_keeps_its_bytes_around_our_block(user, block):
    inserted = amavis.render(amavis.with_block(amavis.parse(user), block))
    parsed = amavis.parse(inserted)
    assert parsed.block == block and not parsed.unreadable_block
    removed = amavis.render(amavis.with_block(parsed, None))
    if re.search(r"(?m)^[ \t]*1;[ \t]*(#.*)?\r?$", user):
        assert removed == user
    else:  # no `1;` line: one is added after the user's text, which is otherwise unchanged
        assert removed.startswith(user) and removed.endswith("1;\n")
        assert len(removed) - len(user) <= len("\n1;\n")

"""The Rspamd codecs: override files read at the top level and rendered canonically (round trip),
the user's blocks and comments kept; custom-commands.conf read as bash's `read` splits it and
rendered back byte for byte; a value that would break a line is refused before anything is
written."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.formats import rspamd_commands, rspamd_map, rspamd_ucl
from reconciler.formats._lines import RenderRefused

HAND = """\
# my thresholds
reject = 15;
rules {
  # a nested comment with a } in it "}"
  A { type = "from"; map = "/x.map"; }
}
greylist: 4
"""


def test_top_level_items_and_blocks_are_read_and_kept() -> None:
    parsed = rspamd_ucl.parse(HAND)
    assert list(parsed.entries) == ["reject", "rules", "greylist"]
    assert parsed.entries["reject"].value == "15"
    assert parsed.entries["rules"].body[-1] == "}"
    assert parsed.comments == ("# my thresholds",)
    again = rspamd_ucl.parse(
        rspamd_ucl.render(parsed.entries.values(), comments=parsed.comments)
    )
    assert again.entries == parsed.entries and again.comments == parsed.comments


def test_an_unclosed_block_and_a_repeated_key_are_kept_as_unreadable() -> None:
    parsed = rspamd_ucl.parse("a = 1;\na = 2;\nb {\n  c = 3;\n")
    assert list(parsed.entries) == ["a"]
    assert parsed.invalid == ("a = 2;", "b {", "  c = 3;")
    assert len(parsed.problems) == 2


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
        st.one_of(
            st.booleans(),
            st.integers(-1000, 1000),
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20).filter(
                lambda s: rspamd_ucl.value_problem(s) is None
            ),
        ),
        max_size=6,
    )
)
def test_what_we_write_reads_back_as_written(settings: dict[str, object]) -> None:
    items = [rspamd_ucl.Item(k, rspamd_ucl.ucl_value(v)) for k, v in settings.items()]  # type: ignore[arg-type]
    blocks = [rspamd_ucl.block("RULE", list(settings.items()))] if settings else []  # type: ignore[arg-type]
    parsed = rspamd_ucl.parse(rspamd_ucl.render(items + blocks))
    assert list(parsed.entries.values()) == items + blocks
    for block in blocks:
        assert rspamd_ucl.block_settings(block) == {k: i.value for k, i in zip(settings, items)}


@pytest.mark.parametrize("value", ['a"b', "a\nb", 'b";x="1'])
def test_a_hostile_value_is_refused_by_the_rule_and_by_the_renderer(value: str) -> None:
    assert rspamd_ucl.value_problem(value) is not None
    with pytest.raises(RenderRefused):
        rspamd_ucl.render([rspamd_ucl.Item("x", rspamd_ucl.ucl_value(value))])


def test_custom_commands_split_as_bash_read_does_and_render_back_unchanged() -> None:
    text = (
        "# comment\n\ndisable-module rbl\nset-option-for-module classifier-bayes autolearn true\n"
        'set-common-option OhMy "PraiseBeLinters !"\nadd-line worker-proxy.inc reject_message = '
        '"Rejected"\nbogus-command x\r\n'
    )
    parsed = rspamd_commands.parse(text)
    got = [line.directive.key for line in parsed.directives() if line.directive]
    assert got == [
        "rbl.conf enabled",
        "classifier-bayes.conf autolearn",
        "options.inc OhMy",
        'worker-proxy.inc +reject_message = "Rejected"',
    ]
    assert parsed.directives()[2].directive.value == '"PraiseBeLinters !"'  # type: ignore[union-attr]
    assert parsed.problems() == [(7, "'bogus-command' is not one of DMS's directives; DMS warns")]
    assert rspamd_commands.render(parsed.lines, parsed.final_newline) == text


def test_a_map_file_round_trips_lowercase() -> None:
    text = rspamd_map.render([rspamd_map.MapLine("trusted.example")])
    assert rspamd_map.parse(text).entries == {"trusted.example": rspamd_map.MapLine("trusted.example")}
    assert rspamd_map.parse("Partner@Elsewhere.NET\n").entries["partner@elsewhere.net"]

"""render_lines' read-back check, line by line (`_lines.check_by_line`), is as strict as reading
the whole rendered file back (`_lines.check_round_trip`, its oracle here): it never accepts a text
the whole-file check refuses, whatever goes into the entries, comments and kept lines. Where it is
unsure it says so and the whole-file check decides, so render's answers are those of the
whole-file check, at a fraction of its cost.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.formats import _lines, cron, regexp
from reconciler.formats._lines import RenderRefused
from tests.formats.test_hardening_relay import (
    BREAKERS,
    CODECS,
    SEPARATORS,
    _entry,
    _render,
    _replace_field,
    _text_fields,
)


class Verdicts:
    """Wraps `check_by_line`: its verdict next to the whole-file check's, on the same text."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool]] = []  # (by line, whole file)
        self.real = _lines.check_by_line

    def __call__(self, text: str, count: int, parse: Any, read: Any, entries: list[Any],
                 lines: list[str], before: list[str], rest: list[str], comments: list[str],
                 invalid: list[str], **options: bool) -> bool:
        by_line = self.real(text, count, parse, read, entries, lines, before, rest, comments,
                            invalid, **options)
        try:
            _lines.check_round_trip("f", text, parse, entries, comments, invalid)
            whole = True
        except RenderRefused:
            whole = False
        self.seen.append((by_line, whole))
        return by_line


@pytest.mark.parametrize("name", CODECS)
def test_every_codec_checks_its_lines_one_by_one(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each codec hands render_lines its single-line reader: valid entries are accepted line by
    line, without parsing the whole file again."""
    verdicts = Verdicts()
    monkeypatch.setattr(_lines, "check_by_line", verdicts)
    codec, entry = _entry(name)
    _render(codec, [entry])
    assert verdicts.seen == [(True, True)]


PIECES = st.lists(st.one_of(st.sampled_from(BREAKERS + SEPARATORS + ["if", "endif", "#", " "]),
                            st.text(max_size=4)), max_size=4).map("".join)


@pytest.mark.parametrize("name", CODECS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_line_by_line_never_accepts_what_the_whole_file_refuses(name: str, data: Any) -> None:
    """Property: over hostile values in any field of up to three entries, hostile comments and
    kept lines (indented or not), the line-by-line check says True only where the whole-file
    check accepts; and render refuses exactly where the whole-file check does."""
    codec, entry = _entry(name)
    entries = []
    for _ in range(data.draw(st.integers(0 if name != "cron" else 1, 3))):
        field = data.draw(st.sampled_from(_text_fields(entry)))
        current = getattr(entry, field)
        base = current[0] if isinstance(current, tuple) else current
        cut = data.draw(st.integers(0, len(base)))
        piece = data.draw(PIECES)
        entries.append(_replace_field(entry, field, base[:cut] + piece + base[cut:]))
    comments = data.draw(st.lists(PIECES.map(lambda p: "#" + p), max_size=2))
    invalid = data.draw(st.lists(st.one_of(PIECES, st.sampled_from(
        ["  if /a/", "if /a/", "endif", "  x y", "\tz", "no-target", "a@b\0c d"])), max_size=3))
    with pytest.MonkeyPatch.context() as patch:
        verdicts = Verdicts()
        patch.setattr(_lines, "check_by_line", verdicts)
        try:
            if codec is cron:
                codec.render(entries, comments=comments)
            else:
                codec.render(entries, comments=comments, invalid=invalid)
            rendered = True
        except RenderRefused:
            rendered = False
        except (AttributeError, TypeError, ValueError, IndexError):
            return  # a value line_of cannot even format: not what this property is about
    for by_line, whole in verdicts.seen:
        assert whole or not by_line, "line by line accepted what the whole file refuses"
    if verdicts.seen:
        assert rendered == verdicts.seen[-1][1]


def test_an_open_if_block_before_the_entries_is_seen() -> None:
    """postfix-regexp.cf: an indented kept `if` line before the entries would swallow them into
    its block. The entries read alone are fine; the skeleton (the file around one entry) shows it,
    and render refuses as the whole-file check always did."""
    entry = regexp.RegexpLine("^a$", "", ("b@example.com",))
    with pytest.MonkeyPatch.context() as patch:
        verdicts = Verdicts()
        patch.setattr(_lines, "check_by_line", verdicts)
        with pytest.raises(RenderRefused):
            regexp.render([entry], invalid=["  if /x/"])
    assert verdicts.seen == [(False, False)]

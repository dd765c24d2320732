"""quotas.parse skips the search for shadowed entries when the file is in grep-safe order; the
shortcut must say "nothing shadowed" only where the full search (one grep per address, as DMS
does) finds every entry's own line, and must not hide a shadow in any other file."""

from __future__ import annotations

import random

from reconciler.formats import quotas
from tests.formats.test_quota_first_hits import _line

LOCALS = ["al", "pal", "a.l", "axl", "p.al", "b", "ab", "a", "x.y", "xzy", "AL", "Pal", "axb"]
DOMAINS = ["d", "d.e", "dxe", "D.e", "d.E", "a.b.c"]


def _own_lines_found(text: str) -> bool:
    """Does DMS's grep find, for every entry, that entry's first line? (the slow way)"""
    lines = text.split("\n")
    parsed = quotas.parse_lines(text, quotas._read, what="quota", keep_cr=True)
    for key, entry in parsed.entries.items():
        hit = quotas.dms_lookup(key, lines)
        read = quotas._read(hit[1]) if hit else "none"
        if isinstance(read, str) or read[0] != key or read[1] != entry:
            return False
    return True


def test_rendered_files_need_no_search_and_really_have_no_shadow() -> None:
    rnd = random.Random(7)
    for _ in range(2000):
        entries = {}
        for _ in range(rnd.randint(1, 12)):
            address = rnd.choice(LOCALS) + "@" + rnd.choice(DOMAINS)
            entries.setdefault(address.lower(), quotas.QuotaLine(address, rnd.choice(["1G", "0"])))
        text = quotas.render(entries.values(), comments=["# a comment", "# x@y: kept out"])
        assert quotas._nothing_shadowed(text.split("\n")), text
        assert _own_lines_found(text), text


def test_the_shortcut_never_hides_a_shadow() -> None:
    rnd = random.Random(11)
    shortcut = 0
    for _ in range(5000):
        lines = [_line(rnd) for _ in range(rnd.randint(1, 10))]
        if quotas._nothing_shadowed(lines):
            shortcut += 1
            assert _own_lines_found("\n".join(lines)), lines
    assert shortcut > 100


def test_files_the_shortcut_must_leave_to_the_search() -> None:
    for lines in (
        ["pal@d:1G", "al@d:2G"],  # out of order
        ["x:al@d:1G", "al@d:2G"],  # a second ':' makes another address's pattern match
        ["# al@d:1G", "al@d:2G"],  # a comment with an address
        ["al@d :1G", "pal@d:2G"],  # blanks around ':'
        ["a@d:1G\r", "b@d:2G"],  # a CR DMS keeps
        ["\u212al@d:1G", "kl@d:2G"],  # not ASCII: grep -i and str.lower may disagree
    ):
        assert not quotas._nothing_shadowed(lines), lines

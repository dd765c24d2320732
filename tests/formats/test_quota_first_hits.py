"""quotas.first_hits finds, in one pass, what DMS's `grep -i "<address>:"` finds first for each
address; it must agree with looking each address up on its own (quotas.dms_lookup)."""

from __future__ import annotations

import random

from reconciler.formats import quotas

LOCALS = ["al", "pal", "a.l", "axl", "p.al", "b", "ab", "a", "x.y", "xzy", "AL", "Pal", "a*b", "a\\.b"]
DOMAINS = ["d", "d.e", "dxe", "D.e", "d.E", "a.b.c"]


def _line(rnd: random.Random) -> str:
    pick = rnd.random()
    if pick < 0.7:
        address = rnd.choice(LOCALS) + "@" + rnd.choice(DOMAINS)
        return address + rnd.choice([":", ":", " :", ": ", "::"]) + rnd.choice(["1G", "0", "2G\r", ""])
    if pick < 0.8:
        return "# " + rnd.choice(LOCALS) + "@" + rnd.choice(DOMAINS) + ":x"
    if pick < 0.9:
        return rnd.choice(["", "x:y:z", "a@d", "pal@d:1G extra:2", "\u017f@d:1G", "\u212al@d:1G"])
    return "".join(rnd.choice("al.@dx:E\r *") for _ in range(rnd.randint(1, 10)))


def test_first_hits_agrees_with_one_lookup_per_address() -> None:
    rnd = random.Random(5)
    compared = 0
    for _ in range(3000):
        lines = [_line(rnd) for _ in range(rnd.randint(1, 12))]
        addresses = sorted({rnd.choice(LOCALS).lower() + "@" + rnd.choice(DOMAINS).lower()
                            for _ in range(6)})
        expected = {a: hit for a in addresses if (hit := quotas.dms_lookup(a, lines)) is not None}
        assert quotas.first_hits(addresses, lines) == expected, (lines, addresses)
        compared += len(addresses)
    assert compared > 10000


def test_a_longer_address_earlier_in_the_file_shadows_a_shorter_one() -> None:
    parsed = quotas.parse("pal@d:1G\nal@d:2G\na.b@d:3G\naxb@d:4G\n")
    assert parsed.entries["al@d"].shadowed == "'1G' from line 1"
    assert parsed.entries["pal@d"].shadowed is None
    assert parsed.entries["a.b@d"].shadowed is None
    assert parsed.entries["axb@d"].shadowed is None  # `a.b@d` matches axb, not the reverse


def test_a_big_file_is_read_in_one_pass() -> None:
    """6,000 quotas took 5.5 s when each address was looked up from the top (no timing here:
    this only checks the answer on a file of that size)."""
    text = "".join(f"user{i}.x@dom{i % 40}.example.com:1G\n" for i in range(6000))
    parsed = quotas.parse(text)
    assert len(parsed.entries) == 6000
    assert not any(e.shadowed for e in parsed.entries.values())

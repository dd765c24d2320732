"""One round-trip corpus test for every codec in reconciler/formats (issue 21).

For each corpus file x of a codec, parse(render(parse(x))) is stable: what render writes is a
fixed point (rendering what it parses to gives it back, and parses the same) and keeps every entry
key; for each canonical file (what dms-reconciler writes), render(parse(x)) == x byte for byte.
What a codec's own tests assert beyond this (how DMS or Postfix reads each file, the header, CRs
dropped) stays in those tests.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable
from typing import Any

import pytest

import reconciler.formats
from reconciler.formats import (
    access,
    accounts,
    aliases,
    amavis,
    cron,
    masters,
    opendkim,
    quotas,
    regexp,
    relaymap,
    rspamd_commands,
    rspamd_map,
    rspamd_ucl,
    sasl,
    virtual,
)
from tests.formats._corpus import CORPUS, canonical_files, corpus_files, read


def _lines(codec: Any) -> Callable[[Any], str]:
    """render for a line-per-entry codec: entries, comments and kept lines of a parsed file."""
    return lambda parsed: str(
        codec.render(parsed.entries.values(), comments=parsed.comments, invalid=parsed.invalid)
    )


def _cron(parsed: Any) -> str:
    return cron.render(parsed.entries.values(), comments=parsed.comments)


def _parsed(codec: Any, parsed: Any) -> Any:
    """What must survive a round trip: the parsed structure without its line-numbered problems
    (a rewrite moves lines) and without the duplicates a rewrite drops on purpose."""
    if codec in (amavis, rspamd_commands):  # read whole, rendered back line for line
        return parsed
    return (parsed.entries, parsed.comments, sorted(parsed.invalid))


# corpus folder -> (codec module, render of a parsed file, canonical files)
CODECS: dict[str, tuple[Any, Callable[[Any], str], list[str]]] = {
    "postfix-accounts.cf": (accounts, _lines(accounts), canonical_files("postfix-accounts.cf")),
    "dovecot-masters.cf": (masters, _lines(masters), canonical_files("dovecot-masters.cf")),
    "dovecot-quotas.cf": (quotas, _lines(quotas), canonical_files("dovecot-quotas.cf")),
    "postfix-virtual.cf": (virtual, _lines(virtual), canonical_files("postfix-virtual.cf")),
    "postfix-aliases.cf": (aliases, _lines(aliases), canonical_files("postfix-aliases.cf")),
    "postfix-send-access.cf": (access, _lines(access), canonical_files("postfix-send-access.cf")),
    "postfix-relaymap.cf": (relaymap, _lines(relaymap), canonical_files("postfix-relaymap.cf")),
    "postfix-sasl-password.cf": (sasl, _lines(sasl), canonical_files("postfix-sasl-password.cf")),
    "postfix-regexp.cf": (regexp, _lines(regexp), canonical_files("postfix-regexp.cf")),
    "opendkim-KeyTable": (opendkim, _lines(opendkim), canonical_files("opendkim-KeyTable")),
    "opendkim-SigningTable": (opendkim, _lines(opendkim), canonical_files("opendkim-SigningTable")),
    "sa-learn": (cron, _cron, canonical_files("sa-learn")),
    # amavis.cf: our block inside the user's file; with-block.cf is what apply leaves
    "amavis.cf": (amavis, amavis.render, ["with-block.cf"]),
    "rspamd-override.d": (rspamd_ucl, _lines(rspamd_ucl), canonical_files("rspamd-override.d")),
    "rspamd-map": (rspamd_map, _lines(rspamd_map), canonical_files("rspamd-map")),
    # custom-commands.conf: every file is rendered back byte for byte (lines are only removed)
    "rspamd-custom-commands.conf": (
        rspamd_commands,
        lambda parsed: rspamd_commands.render(parsed.lines, parsed.final_newline),
        corpus_files("rspamd-custom-commands.conf"),
    ),
}
ALL = [(folder, name) for folder in CODECS for name in corpus_files(folder)]
CANONICAL = [(folder, name) for folder, (_, _, names) in CODECS.items() for name in names]


def test_every_codec_has_a_corpus_with_a_canonical_file() -> None:
    modules = {m.name for m in pkgutil.iter_modules(reconciler.formats.__path__)}
    codecs = {m for m in modules if not m.startswith("_") and m != "registry"}  # the table
    assert codecs == {codec.__name__.rsplit(".", 1)[1] for codec, _, _ in CODECS.values()}
    assert sorted(p.name for p in CORPUS.iterdir() if p.is_dir()) == sorted(CODECS)
    assert all(names for _, _, names in CODECS.values())


@pytest.mark.parametrize(("folder", "name"), ALL)
def test_parse_of_render_of_parse_is_stable(folder: str, name: str) -> None:
    codec, render, _ = CODECS[folder]
    parsed = codec.parse(read(folder, name))
    once = render(parsed)
    again = codec.parse(once)
    assert render(again) == once  # what we write is a fixed point
    assert _parsed(codec, codec.parse(render(again))) == _parsed(codec, again)
    if codec not in (amavis, rspamd_commands):  # and loses no entry (a CRLF quota keeps its key, not its CR)
        assert set(again.entries) == set(parsed.entries)


@pytest.mark.parametrize(("folder", "name"), CANONICAL)
def test_canonical_file_renders_back_byte_for_byte(folder: str, name: str) -> None:
    codec, render, _ = CODECS[folder]
    text = read(folder, name)
    assert render(codec.parse(text)) == text

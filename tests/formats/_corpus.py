"""Shared by the codec tests: the corpus of real-world files and the hypothesis strategies.

Corpus files live in `corpus/<DMS file name>/`. Those named `canonical*` are exactly what
dms-reconciler writes, so `render(parse(x)) == x` must hold for them byte for byte; the others are
what DMS's `setup` CLI and people with editors produce.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import strategies as st

CORPUS = Path(__file__).parent / "corpus"


def corpus_files(codec_dir: str) -> list[str]:
    return sorted(p.name for p in (CORPUS / codec_dir).iterdir() if p.is_file())


def canonical_files(codec_dir: str) -> list[str]:
    return [name for name in corpus_files(codec_dir) if name.startswith("canonical")]


def read(codec_dir: str, name: str) -> str:
    """The file as `observe` decodes it: UTF-8, undecodable bytes kept as surrogates."""
    return (CORPUS / codec_dir / name).read_bytes().decode("utf-8", "surrogateescape")


_LOCAL = st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12)
_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
domains = st.builds(lambda labels, tld: ".".join([*labels, tld]),
                    st.lists(_LABEL, min_size=1, max_size=2),
                    st.sampled_from(["com", "org", "net"]))
addresses = st.builds(lambda local, domain: f"{local}@{domain}", _LOCAL, domains)
_B64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
sha512_hashes = st.builds(
    lambda salt, body: "{SHA512-CRYPT}$6$" + salt + "$" + body,
    st.text(_B64, min_size=1, max_size=16), st.text(_B64, min_size=86, max_size=86),
)
# Comment lines as people write them: no trailing blanks (the parser drops those), no '@' (the
# accounts and quotas codecs deliberately drop comments with '@': DMS's greps would match them).
comments = st.builds(
    lambda indent, body: f"{indent}#{body}".rstrip(),
    st.sampled_from(["", "  ", "\t"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n@", exclude_categories=("Cs",)),
            max_size=30),
)

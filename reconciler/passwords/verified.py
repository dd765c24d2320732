"""Which `password_file` secrets already verified against which hash: a record in the volume.

Keeping the hash on the volume means verifying the plaintext against it, 5000 rounds of
SHA512-CRYPT (about 1.4 ms a secret and core): 10,000 accounts from password_file cost 14 s of
CPU on every run. Each fact here says "the file with this device, inode, mtime and ctime held a
secret that verifies this stored hash of this account"; it is a truncated SHA-256 of exactly
those, so it holds nothing derived from the secret's content (SECURITY.md: no faster way to test
a guess than the hash itself) and not even the timestamps. A file that changed too close to the
moment it was read is not trusted from its metadata (`FileStamp.settled`, git's racy-file rule).

A fact stays true for as long as it matches: a lost, damaged, stale or foreign record only makes
the next run verify again. `password_env` has no metadata and is verified on every run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.errors import SecretError
from reconciler.passwords.sources import (
    FACT_FORMAT,
    DesiredPassword,
    SecretReader,
    Status,
    fact,
)
from reconciler.readfile import load_json

FILENAME = "dms-reconciler.verified.json"
FORMAT = FACT_FORMAT  # the record holds `fact` digests of this format


def parse(data: bytes | None) -> frozenset[str]:
    """The facts in a record file; anything unreadable (not JSON, nested too deep, another shape)
    is an empty record: it only costs time."""
    if not data:
        return frozenset()
    try:
        loaded: Any = load_json(data)
    except ValueError:
        return frozenset()
    if not isinstance(loaded, dict) or loaded.get("format") != FORMAT:
        return frozenset()
    facts = loaded.get("facts")
    if not isinstance(facts, list):
        return frozenset()
    return frozenset(f for f in facts if isinstance(f, str) and len(f) == 32)


def render(facts: Iterable[str]) -> bytes:
    data = {
        "format": FORMAT,
        "comment": "Written by dms-reconciler: which password files already verified against "
        "which hash (digests of file metadata and hashes, nothing of the passwords). Deleting "
        "this file only makes the next run verify every password_file again.",
        "facts": sorted(facts),
    }
    return (json.dumps(data, indent=0) + "\n").encode()


def facts_for(decided: Mapping[str, DesiredPassword], reader: SecretReader) -> frozenset[str]:
    """The facts a converged volume proves: every kept `password_file` secret and its hash.

    A secret read too soon after its file changed is read again now: if the content is the
    one that verified and the file has settled since, the new stamp is recorded.
    """
    out = set()
    for address, choice in decided.items():
        secret = choice.secret
        if choice.status is not Status.KEPT or secret is None or secret.stamp is None:
            continue
        assert choice.hash is not None
        stamp = secret.stamp
        if not stamp.settled:
            try:
                again = reader.read(choice.source)
            except SecretError:  # gone or unreadable now: simply not recorded
                continue
            if again != secret or again.stamp is None or not again.stamp.settled:
                continue
            stamp = again.stamp
        out.add(fact(address, stamp, choice.hash))
    return frozenset(out)

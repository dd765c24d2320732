"""The ownership record: which entries dms-reconciler wrote, kept in the config volume.

Like Flux's inventory, it decides what a missing entry means: an entry we wrote that is gone from
mailserver.yaml is deleted; an entry we never wrote is unmanaged and kept (unless prune). Losing or
corrupting this file therefore only makes entries unmanaged: it can never cause a deletion. It also
holds a random key used to fingerprint secrets in saved plans, so the file is created mode 0600.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import VolumeError
from reconciler.readfile import TooDeep, load_json

FILENAME = "dms-reconciler.state.json"
FORMAT = 1
_PLAN_KEY = re.compile(r"[0-9a-f]{64}")
_REVISION = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})(?:-dirty)?")


@dataclass(frozen=True)
class Ownership:
    entries: dict[str, frozenset[str]] = field(default_factory=dict)  # file -> owned keys
    owns_cron: bool = False  # the sa-learn cron file is owned whole
    plan_key: str = ""  # hex; keys the HMAC of secret fingerprints in saved plans
    # The git revision of mailserver.yaml at the last apply that wrote the volume ("" unknown):
    # recorded only with a write, so an apply that changes nothing still writes nothing.
    revision: str = ""

    def owned(self, file: str) -> frozenset[str]:
        return self.entries.get(file, frozenset())

    def union(self, other: Ownership) -> Ownership:
        files = set(self.entries) | set(other.entries)
        return Ownership(
            {f: self.owned(f) | other.owned(f) for f in files},
            self.owns_cron or other.owns_cron,
            self.plan_key or other.plan_key,
            other.revision or self.revision,
        )


def new_plan_key() -> str:
    return secrets.token_hex(32)


def parse(text: str) -> tuple[Ownership, str | None]:
    """The ownership in `text`, or an empty one and a warning when it cannot be read.

    Anything but the shape `render` writes (JSON nested too deep, `owned` not a mapping of files
    to lists of keys, ...) is unreadable: a damaged record may only make entries unmanaged, so
    none of it is trusted. A file from a newer format is refused (VolumeError) instead: read as
    unreadable it would be overwritten, and the newer tool's record of what it owns lost."""
    why = ""
    try:
        data: Any = load_json(text)
        newer = data.get("format") if isinstance(data, dict) else None
        if type(newer) is int and newer > FORMAT:
            raise VolumeError(
                f"{FILENAME} was written by a newer dms-reconciler (state format {newer}; this "
                f"one reads format {FORMAT}): refusing to use or overwrite it. Upgrade "
                "dms-reconciler; nothing was written"
            )
        if not isinstance(data, dict) or type(newer) is not int or newer != FORMAT:
            raise ValueError("unknown format")
        owned = data.get("owned", {})
        if not isinstance(owned, dict) or not all(
            isinstance(keys, list) and all(isinstance(k, str) for k in keys)
            for keys in owned.values()
        ):
            raise ValueError("not a record of owned entries")
        entries = {name: frozenset(keys) for name, keys in owned.items() if keys}
        key = data.get("plan_key")
        if not (isinstance(key, str) and _PLAN_KEY.fullmatch(key)):
            key = ""  # missing or damaged: a new one is made at the next apply
        revision = data.get("revision")  # absent in records written before it existed
        if not (isinstance(revision, str) and _REVISION.fullmatch(revision)):
            revision = ""
        return Ownership(entries, data.get("owns_cron") is True, key, revision), None
    except TooDeep as exc:
        why = f" ({exc})"
    except ValueError:
        pass
    return Ownership(), (
        f"{FILENAME} is unreadable{why}; treating every entry as unmanaged (nothing is deleted) "
        "and rewriting it at the next apply"
    )


def render(ownership: Ownership) -> str:
    """The file's text: exactly `json.dumps(..., indent=1)` of the record (tests compare the two),
    with the long lists of owned keys joined here by json's C string encoder, because json's
    indenting encoder is pure Python (40,000 owned entries: 50 ms, twice in every apply)."""
    record: dict[str, object] = {
        "format": FORMAT,
        "comment": "Written by dms-reconciler: the entries it manages. Deleting this file "
        "makes them unmanaged; it never deletes mail configuration.",
        "plan_key": ownership.plan_key,
        "owns_cron": ownership.owns_cron,
    }
    if ownership.revision:  # an optional key: format 1 readers skip what they do not know
        record["revision"] = ownership.revision
    head = json.dumps(record, indent=1)
    owned = [(name, sorted(keys)) for name, keys in sorted(ownership.entries.items()) if keys]
    if not owned:
        return head[:-2] + ',\n "owned": {}\n}\n'
    quote = json.encoder.encode_basestring_ascii  # what json.dumps uses with ensure_ascii
    files = ",\n".join(
        f"  {quote(name)}: [\n   " + ",\n   ".join(map(quote, keys)) + "\n  ]"
        for name, keys in owned
    )
    return head[:-2] + ',\n "owned": {\n' + files + "\n }\n}\n"

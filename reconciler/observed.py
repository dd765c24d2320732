"""What a read of the DMS config volume found: `Observed`, one `FileSnapshot` per file, parsed.

Pure data, below everything that plans or checks: `volume.observe` builds it (the only code that
reads the config folder), the planner, the kinds and export read it. Nothing here touches the disk.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from reconciler import state as state_file
from reconciler.configvolume import Volume
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
    registry,
    relaymap,
    rspamd_commands,
    sasl,
    virtual,
)
from reconciler.formats._lines import ParsedFile
from reconciler.model import MASTER_KEY, RELAY_KEY

CRON = cron.NAME  # the sa-learn cron file, which lives outside the config dir
# The files of `setup dovecot-master`, `email restrict`, `relay`, `config dkim`; regexp aliases
KEYS_PREFIX = opendkim.DIRECTORY + "/keys/"
_EMPTY: ParsedFile[Any] = ParsedFile({})


@dataclass(frozen=True)
class FileSnapshot:
    """One file as read: its bytes, or None when it does not exist."""

    path: str
    data: bytes | None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    def __repr__(self) -> str:  # the bytes of postfix-accounts.cf are password hashes
        size = "missing" if self.data is None else f"{len(self.data)} bytes"
        return f"FileSnapshot({self.path!r}, {size}, mode={self.mode!r})"

    @property
    def exists(self) -> bool:
        return self.data is not None

    @property
    def text(self) -> str | None:
        # surrogateescape: bytes that are not UTF-8 survive a rewrite unchanged
        return None if self.data is None else self.data.decode("utf-8", "surrogateescape")

    @property
    def sha256(self) -> str | None:
        return None if self.data is None else hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Observed:
    volume: Volume  # where it was read from
    snapshots: dict[
        str, FileSnapshot
    ]  # logical name -> snapshot (the four entry files, amavis, cron, state)
    accounts: ParsedFile[accounts.AccountLine]
    virtual: ParsedFile[virtual.VirtualLine]
    local_aliases: ParsedFile[aliases.LocalAlias]
    quotas: ParsedFile[quotas.QuotaLine]
    amavis: amavis.AmavisFile | None
    cron: ParsedFile[cron.CronLine] | None
    ownership: state_file.Ownership
    warnings: tuple[str, ...] = ()
    masters: ParsedFile[masters.MasterLine] = _EMPTY
    regexp: ParsedFile[regexp.RegexpLine] = _EMPTY
    access: dict[str, ParsedFile[access.AccessLine]] = field(default_factory=dict)
    relaymap: ParsedFile[relaymap.RelayLine] = _EMPTY
    sasl: ParsedFile[sasl.SaslLine] = _EMPTY
    dkim_tables: dict[str, ParsedFile[opendkim.TableLine]] = field(default_factory=dict)
    rspamd_commands: rspamd_commands.CommandsFile | None = None  # None: no custom-commands.conf
    # rspamd/override.d/ files we can read, by logical name: override files (ParsedFile[Item])
    # and sender map files (ParsedFile[MapLine]); other files there are only in `snapshots`
    rspamd_files: dict[str, Any] = field(default_factory=dict)

    def parsed_files(self) -> list[tuple[str, ParsedFile[Any]]]:
        """Every entry file as parsed, by logical name (a missing file parses as empty)."""
        return [
            (accounts.FILENAME, self.accounts),
            (virtual.FILENAME, self.virtual),
            (aliases.FILENAME, self.local_aliases),
            (quotas.FILENAME, self.quotas),
            (masters.FILENAME, self.masters),
            (regexp.FILENAME, self.regexp),
            *sorted(self.access.items()),
            (relaymap.FILENAME, self.relaymap),
            (sasl.FILENAME, self.sasl),
            *sorted(self.dkim_tables.items()),
        ]

    def parse_problems(self) -> list[str]:
        """What the codecs could not read as entries, each with its file and line: such lines
        are kept as they are, and whoever reads the volume should say so."""
        return [
            f"{name} line {p.line}: {p.message}" if p.line else f"{name}: {p.message}"
            for name, parsed in self.parsed_files()
            for p in parsed.problems
        ]

    def stored_hashes(self) -> dict[str, str]:
        """Password key -> the hash on the volume: accounts by address, masters as
        `master:<name>` (see `passwords.password_sources`)."""
        out = {address: entry.password_hash for address, entry in self.accounts.entries.items()}
        for name, master in self.masters.entries.items():
            out[MASTER_KEY + name] = master.password_hash
        return out

    def stored_plaintext(self) -> dict[str, str]:
        """`relay:<domain>` -> the relay password on the volume (postfix-sasl-password.cf)."""
        return {
            RELAY_KEY + key[1:]: entry.password
            for key, entry in self.sasl.entries.items()
            if key.startswith("@")
        }

    def fingerprint(self) -> dict[str, str | None]:
        """sha256 of every file the plan depends on; a saved plan is stale when this moves.

        postfix-sasl-password.cf holds plaintext passwords, and a plain digest of a short file
        could be searched offline for a weak one: its digest is keyed with the volume's plan key
        (or, before the first apply, taken with the passwords masked)."""
        return fingerprint_of(self.snapshots, self.ownership.plan_key)


def _newer_feature(name: str) -> bool:
    """A file of `setup`'s features or a DKIM key: absent from plans made before them."""
    return name in registry.SETUP_FILES or name.startswith(KEYS_PREFIX) or registry.is_rspamd(name)


def fingerprint_of(snapshots: dict[str, FileSnapshot], plan_key: str) -> dict[str, str | None]:
    """sha256 by logical name. A missing file of the newer features counts as absent (plans made
    before them stay comparable; a file that appears still moves the fingerprint), and
    postfix-sasl-password.cf, which holds plaintext passwords, gets `secret_file_digest`."""
    out = {
        name: snap.sha256
        for name, snap in sorted(snapshots.items())
        if snap.data is not None or not _newer_feature(name)
    }
    snap = snapshots.get(sasl.FILENAME)
    if snap is not None and snap.data is not None:
        out[sasl.FILENAME] = secret_file_digest(snap.data, plan_key)
    return out


def secret_file_digest(data: bytes, key: str) -> str:
    """A digest of a file holding plaintext secrets that reveals nothing testable offline."""
    import hmac

    if key:
        return "hmac-" + hmac.new(bytes.fromhex(key), data, "sha256").hexdigest()
    masked = re.sub(rb"(?m)^(\s*\S+\s+[^:\s]*:).*$", rb"\1*", data)
    return "masked-" + hashlib.sha256(masked).hexdigest()

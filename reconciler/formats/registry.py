"""Every DMS file dms-reconciler reads or writes, in one table: what observe, the executor and the
sidecar need to know about a file, said once.

For each file: its logical name (its path below the config volume; `cron` is the sa-learn cron
file, which lives outside it), its codec's parser, the mode of a file we create, the order files
are put in place, whether DMS's change detector (`check-for-changes.sh`) hashes it, and what must
be reloaded after it changed when DMS does not do it itself. The order is the write order: the
accounts first (a new alias or quota never names an account that is not there yet), DKIM keys
(written before this table's files, see `volume.executor.write_order`) before the OpenDKIM tables
that name them.

The tool's own records (the state file, the verified record) are not DMS files and are not here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from reconciler import rspamdkeys
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

# What the sidecar restarts or reloads after a file DMS reads only at start-up changed.
AMAVIS = "amavis"  # amavis.cf: copied to 50-user and Amavis restarted
POSTFIX = "postfix"  # the access files: wired into Postfix's restrictions, `postfix reload`
OPENDKIM = "opendkim"  # opendkim/: copied to /etc/opendkim and OpenDKIM restarted


# A line file's renderer: entries, comments and the lines kept as they were -> the file's text.
Render = Callable[..., str]


@dataclass(frozen=True)
class DmsFile:
    name: str  # logical name: the path below the config volume, or `cron`
    parse: Callable[[str], Any] | None  # None: read as bytes, never parsed
    entries: bool  # an entry file: a missing one reads as empty (else None: absent)
    watched: bool  # DMS's change detector hashes it and regenerates after a change
    reload: str | None = None  # what must reload after it changed (AMAVIS, POSTFIX, OPENDKIM)
    new_mode: int = 0o644  # the mode of a file we create
    setup: bool = False  # a file of `setup`'s features (absent from plans made before them)
    in_place: bool = False  # rewritten in place (a single-file bind mount), not renamed
    owner_only: bool = False  # holds plaintext secrets: rewritten without group/other access
    render: Render | None = None  # for line files: render(entries, comments=, invalid=)

    def render_lines(self, entries: Iterable[Any], comments: Any, invalid: Any) -> str:
        """The file's text from its entries (a line file's codec); see `render`."""
        assert self.render is not None, f"{self.name} is not a line file"
        return self.render(entries, comments=comments, invalid=invalid)


FILES: tuple[DmsFile, ...] = (
    # password hashes: not world-readable (DMS's own `setup email add` leaves 0644 under umask 022)
    DmsFile(accounts.FILENAME, accounts.parse, True, True, new_mode=0o640, render=accounts.render),
    DmsFile(quotas.FILENAME, quotas.parse, True, True, render=quotas.render),
    # postfix-regexp.cf before postfix-virtual.cf: it holds the self-routes that keep an
    # account's mail from its domain's catch-all, and DMS's change detector hashes the files
    # (in the order postfix-virtual.cf, postfix-regexp.cf) before it waits for our lock, then
    # installs only those whose hash changed; the rest waits for its next poll. Written in the
    # opposite order, DMS can run a new postfix-virtual.cf (a new catch-all, an old self-alias
    # gone) only together with the new postfix-regexp.cf (its self-routes), never with the old.
    DmsFile(regexp.FILENAME, regexp.parse, True, True, setup=True, render=regexp.render),
    DmsFile(virtual.FILENAME, virtual.parse, True, True, render=virtual.render),
    DmsFile(aliases.FILENAME, aliases.parse, True, True, render=aliases.render),
    DmsFile(amavis.FILENAME, amavis.parse, entries=False, watched=False, reload=AMAVIS),
    DmsFile(cron.NAME, cron.parse, entries=False, watched=False, in_place=True),
    DmsFile(
        masters.FILENAME,
        masters.parse,
        True,
        True,
        new_mode=0o640,
        setup=True,
        render=masters.render,
    ),
    *(
        DmsFile(
            name,
            access.parse,
            True,
            False,
            POSTFIX,
            setup=True,
            render=partial(access.render, filename=name),
        )
        for name in access.FILENAMES
    ),
    DmsFile(relaymap.FILENAME, relaymap.parse, True, True, setup=True, render=relaymap.render),
    # plaintext relay passwords: DMS's `setup relay add-auth` creates the file with `echo >>`
    # (0644 under the usual umask) and only its own copy, /etc/postfix/sasl_passwd, is 0600
    DmsFile(
        sasl.FILENAME,
        sasl.parse,
        True,
        True,
        new_mode=0o600,
        setup=True,
        owner_only=True,
        render=sasl.render,
    ),
    # keys (and their DNS record files) are written before the tables that name them: OpenDKIM
    # never reads a table entry whose key file is missing
    DmsFile(opendkim.TRUSTED_HOSTS, None, False, False, reload=OPENDKIM, setup=True),
    *(
        DmsFile(
            name,
            opendkim.parse,
            True,
            False,
            OPENDKIM,
            setup=True,
            render=partial(opendkim.render, filename=name),
        )
        for name in opendkim.TABLES
    ),
)
# Rspamd's files: custom-commands.conf has a fixed name; override.d/ holds files by any name (the
# override files kinds write, the sender map files, and the user's own), found by reading the
# folder. DMS's change detector hashes every file under rspamd/ (`find rspamd -type f`) when
# ENABLE_RSPAMD=1, empties /etc/rspamd/override.d/ and copies the folder back on a change there,
# and reloads Rspamd itself: nothing is owed by the sidecar.
RSPAMD_FOLDER = "rspamd"
RSPAMD_COMMANDS = DmsFile(
    rspamd_commands.FILENAME, rspamd_commands.parse, entries=False, watched=True, setup=True
)
RSPAMD_OVERRIDE = DmsFile(rspamd_ucl.DIRECTORY + "/*", rspamd_ucl.parse, False, True, setup=True)
RSPAMD_MAP = DmsFile(rspamd_map.PREFIX + "*.map", rspamd_map.parse, False, True, setup=True)
FILES = (*FILES, RSPAMD_COMMANDS)
BY_NAME: dict[str, DmsFile] = {f.name: f for f in FILES}
ENTRY_FILES: tuple[str, ...] = tuple(f.name for f in FILES if f.entries)
SETUP_FILES: tuple[str, ...] = tuple(f.name for f in FILES if f.setup)
WATCHED: tuple[str, ...] = tuple(f.name for f in FILES if f.watched)
KEY_FILE_MODE = 0o600  # a DKIM private key and its record file, as opendkim-genkey makes them


def takes_folder_owner(path: str) -> bool:
    """A new file at `path` gets its folder's owner: Rspamd's DKIM keys, which DMS makes
    `_rspamd`'s (`chown -R _rspamd:_rspamd rspamd/dkim` at start-up) and Rspamd, running as
    `_rspamd`, must read without waiting for a restart."""
    return f"/{rspamdkeys.DIRECTORY}/" in path or path.startswith(rspamdkeys.DIRECTORY + "/")


def is_rspamd(name: str) -> bool:
    """A file under the volume's rspamd/ folder (DMS hashes them all when Rspamd is on)."""
    return name.startswith(RSPAMD_FOLDER + "/")


def rspamd_file(name: str) -> DmsFile | None:
    """The table row of a file in rspamd/ (None: not one we read)."""
    if name == rspamd_commands.FILENAME:
        return RSPAMD_COMMANDS
    if rspamd_map.is_map_file(name):
        return RSPAMD_MAP
    if rspamd_ucl.is_override_file(name):
        return RSPAMD_OVERRIDE
    return None


def watched(name: str) -> bool:
    """DMS's change detector hashes the file (`name`: its logical name)."""
    return name in WATCHED or is_rspamd(name)


def reloads(written: Any) -> set[str]:
    """What must reload after `written` (logical names) changed, beyond DMS's change detector.
    A DKIM key file (`opendkim/keys/...`) counts as OpenDKIM's too."""
    owed = set()
    for name in written:
        known = BY_NAME.get(name)
        if known is not None and known.reload is not None:
            owed.add(known.reload)
        elif opendkim.is_key_file(name):
            owed.add(OPENDKIM)
    return owed


def new_file_mode(path: str) -> int:
    """The mode of a DMS file we create at `path` (a logical name or a path ending in one):
    0644 unless it holds secrets."""
    if opendkim.is_key_file(path) or rspamdkeys.is_private_key(path):
        return KEY_FILE_MODE  # Rspamd's public.txt and public.dns.txt: 0644, as DMS leaves them
    for known in FILES:
        if path == known.name or path.endswith("/" + known.name):
            return known.new_mode
    return 0o644

"""The DMS config volume as one value: where its folder is, and the sa-learn cron file beside it.

Plans, kinds and the state file name a file by its logical name, relative to the volume
(`postfix-accounts.cf`, `opendkim/keys/example.org/mail.private`, `cron`); `Volume.path` is the one
place a logical name becomes a path. Pure data with no I/O, below the planner: the plan carries the
`Volume` it was made for, so its JSON form can show each file's path, while only `volume/`
(observe, the executor, the lock) opens what a path names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from reconciler.formats.cron import NAME as CRON


@dataclass(frozen=True)
class Volume:
    """The config folder (`--config-dir`) and the cron file (`--cron-file`), a single-file bind
    mount that lives outside it."""

    folder: str
    cron_file: str

    def path(self, name: str) -> str:
        """The path of the file with logical name `name` (`cron`: the cron file)."""
        return self.cron_file if name == CRON else os.path.join(self.folder, name)

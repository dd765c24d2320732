"""The plan: typed changes per entry, per file, and its versioned JSON form.

A `Plan` is what `planner.make_plan` computes and what `executor` applies. Its JSON form
(`to_dict`, `format_version`) is the machine contract for CI; the text and Markdown renderers
read that same dictionary, so the human and machine views cannot disagree. Nothing in a plan's
public form is a password or a hash: sensitive values are shown as `(sensitive)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from reconciler import __version__
from reconciler.configvolume import Volume
from reconciler.errors import redact_data
from reconciler.passwords.sources import Secret
from reconciler.state import Ownership

FORMAT_VERSION = "1.1"
SENSITIVE = "(sensitive)"
RESOLVED_AT_APPLY = "(sensitive, resolved at apply)"


class Action(str, Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


class Kind(str, Enum):
    ACCOUNT = "account"
    QUOTA = "quota"
    ALIAS = "alias"
    CATCH_ALL = "catch_all"
    DEVNULL = "devnull"
    SELF_ALIAS = "self_alias"  # an account's own line in postfix-virtual.cf (earlier versions)
    SELF_ROUTE = "self_route"  # an account's own patterns in postfix-regexp.cf (catch-all domain)
    LOCAL_ALIAS = "local_alias"
    QUARANTINE = "quarantine"
    SA_LEARN = "sa_learn"
    MASTER = "master"
    REGEXP_ALIAS = "regexp_alias"
    RESTRICT = "restrict"
    RELAY = "relay"
    RELAY_AUTH = "relay_auth"
    DKIM = "dkim"
    DKIM_KEY = "dkim_key"
    RSPAMD_ACTION = "rspamd_action"
    RSPAMD_SENDER = "rspamd_sender"
    RSPAMD_MODULE = "rspamd_module"
    RSPAMD_OPTION = "rspamd_option"
    RSPAMD_CONTROLLER = "rspamd_controller"
    RSPAMD_LEARN = "rspamd_learn"
    RSPAMD_DIRECTIVE = "rspamd_directive"


@dataclass(frozen=True)
class Change:
    """One entry that apply creates, updates or deletes."""

    file: str  # logical file name: postfix-accounts.cf ... amavis.cf, or "cron"
    kind: Kind
    key: str
    action: Action
    before: Mapping[str, Any] | None = None  # display values; secrets already masked
    after: Mapping[str, Any] | None = None
    reason: str = ""
    details: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "kind": self.kind.value,
            "key": self.key,
            "actions": [self.action.value],
            "before": dict(self.before) if self.before is not None else None,
            "after": dict(self.after) if self.after is not None else None,
            "reason": self.reason,
            "details": list(self.details),
        }


@dataclass(frozen=True)
class Unmanaged:
    """An entry on the volume that mailserver.yaml does not declare and this tool did not write."""

    file: str
    kind: Kind
    key: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "kind": self.kind.value, "key": self.key}


@dataclass(frozen=True)
class PendingHash:
    """Stands for the `{SHA512-CRYPT}` hash apply will make for a new or changed secret."""

    address: str  # the password key: an address, `master:<name>` or `relay:<domain>`
    unresolved: bool = False  # --offline: the secret could not be read, apply decides

    def __str__(self) -> str:
        return RESOLVED_AT_APPLY if self.unresolved else SENSITIVE


@dataclass(frozen=True)
class PendingKey:
    """Stands for the DKIM key pair apply makes (a private key file and its DNS record file)."""

    domain: str
    selector: str
    bits: int
    part: str  # "private" or "txt"


@dataclass(frozen=True)
class FilePlan:
    """What one file becomes. `content` is the codec input; `write` is False when unchanged."""

    name: str  # the logical name: the Volume of the plan says where it is
    write: bool
    existed: bool
    sha256_before: str | None
    content: Any = None  # codec-specific: entries + comments, an AmavisFile, cron lines
    in_place: bool = False  # the cron file: a single-file bind mount, so no rename


@dataclass(frozen=True)
class DeletionGuard:
    """The mass-deletion guard of one file: apply refuses more than `limit` deletions in it
    without --allow-deletions. The state file alone says which entries we manage, so this is
    what keeps a damaged or tampered one from deleting entries made by hand."""

    file: str
    deletions: int
    limit: int
    limit_source: str

    @property
    def over(self) -> bool:
        return self.deletions > self.limit


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    unmanaged: tuple[Unmanaged, ...]
    files: tuple[FilePlan, ...]
    ownership: Ownership  # what we own after apply
    fingerprint: Mapping[str, str | None]  # sha256 of each file it was planned from
    volume: Volume  # the volume it was planned for: where each file is
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    unresolved: tuple[str, ...] = ()  # accounts whose secret is decided at apply (--offline)
    account_deletions: int = 0
    deletion_limit: int = 0  # more account deletions than this are refused
    deletion_limit_source: str = ""
    secrets: Mapping[str, Secret] = field(default_factory=dict)  # NEW secrets to hash at apply
    managed_accounts: int = 0
    guards: tuple[DeletionGuard, ...] = ()  # every other file of entries the state file owns
    target: Mapping[str, Any] | None = None  # the DMS it was planned for (planner/target.py)
    target_warnings: tuple[str, ...] = ()  # what that DMS means for the plan (in `warnings`)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "add": sum(c.action is Action.CREATE for c in self.changes),
            "change": sum(c.action is Action.UPDATE for c in self.changes),
            "destroy": sum(c.action is Action.DELETE for c in self.changes),
            "unmanaged": len(self.unmanaged),
        }

    @property
    def has_changes(self) -> bool:
        return bool(self.changes) or any(f.write for f in self.files)

    @property
    def over_deletion_limit(self) -> bool:
        return self.account_deletions > self.deletion_limit or any(g.over for g in self.guards)

    def _files_over_limit(self) -> dict[str, Any]:
        """`files`: the guards of other files that refuse this plan (absent when none does)."""
        over = [
            {
                "file": g.file,
                "deletions": g.deletions,
                "limit": g.limit,
                "limit_source": g.limit_source,
            }
            for g in self.guards
            if g.over
        ]
        return {"files": over} if over else {}

    def files_to_write(self) -> tuple[FilePlan, ...]:
        return tuple(f for f in self.files if f.write)

    def to_dict(
        self, *, desired: Mapping[str, Any] | None = None, volume: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The versioned JSON form (see docs/plan-json.md); never holds a secret or hash (and
        anything hash-shaped that came from a file, a password_file path or a hand-written line,
        is redacted: every output form and saved plans are made from this)."""
        data = {
            "format_version": FORMAT_VERSION,
            "tool": {"name": "dms-reconciler", "version": __version__},
            "desired": dict(desired or {}),
            "volume": {**dict(volume or {}), "fingerprint": dict(self.fingerprint)},
            "summary": {**self.counts, "has_changes": self.has_changes},
            "changes": [c.to_dict() for c in self.changes],
            "unmanaged": [u.to_dict() for u in self.unmanaged],
            "files": [
                {
                    "name": f.name,
                    "path": self.volume.path(f.name),
                    "write": f.write,
                    "existed": f.existed,
                }
                for f in self.files
            ],
            "deletions": {
                "accounts": self.account_deletions,
                "limit": self.deletion_limit,
                "limit_source": self.deletion_limit_source,
                "over_limit": self.over_deletion_limit,
                **self._files_over_limit(),
            },
            "unresolved_secrets": list(self.unresolved),
            "warnings": [*self.warnings, *self.target_warnings],
            "notes": list(self.notes),
        }
        if self.target is not None:  # only when the DMS container was looked up
            data["target"] = dict(self.target)
        return redact_data(data)

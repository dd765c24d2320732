"""The typed desired state: what mailserver.yaml asks for, normalised and immutable.

Everything the planner consumes is here. Addresses are lowercase, target lists are deduplicated and
sorted, and collections are tuples sorted by key, so two files that mean the same thing give equal
models. `to_document` turns a model back into the YAML mapping (used by `export` and the round-trip
tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union

QUARANTINE_KINDS = ("spam", "virus", "banned", "bad_header")


@dataclass(frozen=True)
class PasswordHash:
    """A Dovecot hash written to postfix-accounts.cf as given."""

    value: str

    def __repr__(self) -> str:  # never let a hash reach a log through repr()
        return "PasswordHash(<sensitive>)"


@dataclass(frozen=True)
class PasswordFile:
    """Plaintext in a file (a Docker or Kubernetes secret); a trailing newline is ignored."""

    path: str


@dataclass(frozen=True)
class PasswordEnv:
    """Plaintext in an environment variable."""

    name: str


PasswordSource = Union[PasswordHash, PasswordFile, PasswordEnv]


@dataclass(frozen=True)
class Account:
    address: str
    password: PasswordSource | None  # None only while a file is being validated
    quota: str | None = None  # "0" or "<n>B|k|M|G|T"; None: the server default applies


@dataclass(frozen=True)
class Alias:
    address: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class CatchAll:
    domain: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Quarantine:
    mailbox: str
    kinds: tuple[str, ...] = QUARANTINE_KINDS


class Learn(str, Enum):
    SPAM = "spam"
    HAM = "ham"


@dataclass(frozen=True)
class SaLearnJob:
    schedule: str
    learn: Learn
    folder: str
    accounts: tuple[str, ...] | None = None
    domains: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Policy:
    prune: bool = False
    max_deletions: int | None = None


@dataclass(frozen=True)
class DesiredState:
    version: int
    domains: tuple[str, ...]
    accounts: tuple[Account, ...]
    aliases: tuple[Alias, ...] = ()
    catch_all: tuple[CatchAll, ...] = ()
    devnull: tuple[str, ...] = ()
    quarantine: Quarantine | None = None
    sa_learn: tuple[SaLearnJob, ...] = ()
    policy: Policy = field(default_factory=Policy)
    hostname: str | None = None

    def account_map(self) -> dict[str, Account]:
        return {a.address: a for a in self.accounts}

    def summary(self) -> str:
        parts = [
            _count(len(self.domains), "domain"),
            _count(len(self.accounts), "account"),
            _count(len(self.aliases), "alias", "aliases"),
            _count(len(self.catch_all), "catch-all"),
            _count(len(self.devnull), "devnull address", "devnull addresses"),
            _count(len(self.sa_learn), "sa-learn job"),
        ]
        if self.quarantine:
            parts.append("quarantine to " + self.quarantine.mailbox)
        return ", ".join(parts)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def normalise_targets(targets: Any) -> tuple[str, ...]:
    """One target or a list -> sorted, deduplicated tuple (order does not matter to Postfix)."""
    if isinstance(targets, str):
        targets = [targets]
    return tuple(sorted({t for t in targets if isinstance(t, str)}))


def to_document(state: DesiredState) -> dict[str, Any]:
    """The YAML mapping for `state`, in the canonical key order used by export."""
    doc: dict[str, Any] = {"version": state.version}
    if state.hostname:
        doc["hostname"] = state.hostname
    doc["domains"] = list(state.domains)
    accounts: dict[str, Any] = {}
    for account in state.accounts:
        entry: dict[str, Any] = {}
        pw = account.password
        if isinstance(pw, PasswordHash):
            entry["password_hash"] = pw.value
        elif isinstance(pw, PasswordFile):
            entry["password_file"] = pw.path
        elif isinstance(pw, PasswordEnv):
            entry["password_env"] = pw.name
        if account.quota is not None:
            entry["quota"] = account.quota
        accounts[account.address] = entry
    doc["accounts"] = accounts
    if state.aliases:
        doc["aliases"] = {a.address: _one_or_list(a.targets) for a in state.aliases}
    if state.catch_all:
        doc["catch_all"] = {c.domain: _one_or_list(c.targets) for c in state.catch_all}
    if state.devnull:
        doc["devnull"] = list(state.devnull)
    if state.quarantine:
        q: dict[str, Any] = {"mailbox": state.quarantine.mailbox}
        if tuple(state.quarantine.kinds) != QUARANTINE_KINDS:
            q["kinds"] = list(state.quarantine.kinds)
        doc["quarantine"] = q
    if state.sa_learn:
        jobs = []
        for job in state.sa_learn:
            j: dict[str, Any] = {
                "schedule": job.schedule,
                "learn": job.learn.value,
                "folder": job.folder,
            }
            if job.accounts is not None:
                j["accounts"] = list(job.accounts)
            if job.domains is not None:
                j["domains"] = list(job.domains)
            jobs.append(j)
        doc["sa_learn"] = jobs
    if state.policy != Policy():
        p: dict[str, Any] = {}
        if state.policy.prune:
            p["prune"] = True
        if state.policy.max_deletions is not None:
            p["max_deletions"] = state.policy.max_deletions
        doc["policy"] = p
    return doc


def _one_or_list(targets: tuple[str, ...]) -> str | list[str]:
    return targets[0] if len(targets) == 1 else list(targets)

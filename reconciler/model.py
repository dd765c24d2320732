"""The typed desired state: what mailserver.yaml asks for, normalised and immutable.

Everything the planner consumes is here. Addresses are lowercase, target lists are deduplicated and
sorted, and collections are tuples sorted by key, so two files that mean the same thing give equal
models. `to_document` turns a model back into the YAML mapping (used by `export` and the round-trip
tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeGuard, Union

if TYPE_CHECKING:
    from reconciler.passwords.sops import SopsFile

QUARANTINE_KINDS = ("spam", "virus", "banned", "bad_header")
# The keys a password source may be given under, in mailserver.yaml (accounts and masters).
PASSWORD_KEYS = ("password_hash", "password_file", "password_env", "password")  # password: SOPS
# How passwords are keyed between mailserver.yaml, the volume and the plan: an account by its
# address, a Dovecot master user as `master:<name>`, a relay's plaintext password as
# `relay:<domain>` (no address has a ':', so the keys never meet).
MASTER_KEY = "master:"
RELAY_KEY = "relay:"
RSPAMD_CONTROLLER_KEY = "rspamd:controller"  # the web UI password among the decided ones
# A value SOPS encrypted (`ENC[AES256_GCM,...]`): opaque until plan decrypts it (load/sops.py).
SOPS_VALUE = re.compile(
    r"ENC\[AES256_GCM,data:[A-Za-z0-9+/=]*,iv:[A-Za-z0-9+/=]+,tag:[A-Za-z0-9+/=]+,"
    r"type:(?P<type>[a-z]+)\]\Z"
)


def is_encrypted(value: Any) -> TypeGuard[str]:
    """An `ENC[AES256_GCM,...]` value as SOPS writes it."""
    return (
        isinstance(value, str) and value.startswith("ENC[") and SOPS_VALUE.match(value) is not None
    )


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


@dataclass(frozen=True)
class PasswordSops:
    """A password (`password`) or hash (`password_hash`) SOPS-encrypted in mailserver.yaml itself;
    decrypted at plan and apply from the file's `SopsFile` (`DesiredState.encrypted`)."""

    path: tuple[str, ...]  # in the document: ("accounts", "jane@example.org", "password")
    ciphertext: str  # the ENC[AES256_GCM,...] value: public, but changes when the secret does
    is_hash: bool = False

    def __repr__(self) -> str:
        return f"PasswordSops({'.'.join(self.path)})"


@dataclass(frozen=True)
class UserOwned:
    """An initial password (`update_password: on_create`): set when the account is created,
    owned by its user afterwards (webmail, `doveadm pw`, `setup email update`), never reverted."""

    initial: PasswordHash | PasswordFile | PasswordEnv | PasswordSops


PasswordSource = Union[PasswordHash, PasswordFile, PasswordEnv, PasswordSops, UserOwned]


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
class Master:
    """A Dovecot master user (dovecot-masters.cf): logs in as `user@domain*name`."""

    name: str
    password: PasswordSource | None


@dataclass(frozen=True)
class RegexpAlias:
    """A postfix-regexp.cf entry; the list order is the lookup order (first match wins)."""

    pattern: str  # PCRE, as written in mailserver.yaml (a `/` is escaped when written)
    targets: tuple[str, ...]  # in the order given: `$1` substitutions make order visible
    flags: str = ""


@dataclass(frozen=True)
class Restrict:
    """Addresses refused as senders / as recipients (postfix-send/receive-access.cf)."""

    send: tuple[str, ...] = ()
    receive: tuple[str, ...] = ()


@dataclass(frozen=True)
class Relay:
    """Relaying for one sender domain: a relay host, or an opt-out from RELAY_HOST."""

    domain: str
    host: str | None = None
    port: int = 25
    exclude: bool = False
    username: str | None = None
    password: PasswordFile | PasswordEnv | None = None


@dataclass(frozen=True)
class Dkim:
    """An OpenDKIM signing key for one domain, made once by apply."""

    domain: str
    selector: str = "mail"
    key_size: int = 2048


@dataclass(frozen=True)
class Rspamd:
    """`rspamd:` (DMS with ENABLE_RSPAMD=1): what Rspamd admins otherwise edit by hand in
    `rspamd/custom-commands.conf` and `rspamd/override.d/`. Every tuple is sorted by name."""

    actions: tuple[tuple[str, float], ...] = ()  # (greylist|add_header|reject, score)
    allow: tuple[str, ...] = ()  # sender addresses and `@domain`s never scored as spam
    deny: tuple[str, ...] = ()  # sender addresses and `@domain`s rejected
    enable: tuple[str, ...] = ()  # module names
    disable: tuple[str, ...] = ()
    common: tuple[tuple[str, str | int | float | bool], ...] = ()  # options.inc
    module_options: tuple[tuple[str, tuple[tuple[str, str | int | float | bool], ...]], ...] = ()
    controller_hash: str | None = None  # the web UI password as `rspamadm pw` prints it
    # or read from a secret (password_env / password_file) and hashed by apply
    controller_password: PasswordSource | None = None
    learn: tuple[SaLearnJob, ...] = ()  # rspamc learn_spam|learn_ham cron jobs

    def __bool__(self) -> bool:
        return self != Rspamd()


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
    masters: tuple[Master, ...] = ()
    regexp_aliases: tuple[RegexpAlias, ...] = ()
    restrict: Restrict = field(default_factory=Restrict)
    relay: tuple[Relay, ...] = ()
    dkim: tuple[Dkim, ...] = ()
    # who signs with the `dkim:` keys: OpenDKIM (opendkim/, DMS's default) or Rspamd
    # (rspamd/dkim/ and override.d/dkim_signing.conf, what `setup config dkim` writes when DMS runs
    # Rspamd with ENABLE_OPENDKIM=0)
    dkim_signer: str = "opendkim"
    rspamd: Rspamd = field(default_factory=Rspamd)
    # the SOPS-encrypted file the PasswordSops values are decrypted from (None: not encrypted)
    encrypted: SopsFile | None = field(default=None, compare=False, repr=False)

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
        extra: list[tuple[int, str, str | None]] = [
            (len(self.masters), "master user", None),
            (len(self.regexp_aliases), "regexp alias", "regexp aliases"),
            (len(self.restrict.send) + len(self.restrict.receive), "restriction", None),
            (len(self.relay), "relay domain", None),
            (len(self.dkim), "DKIM domain", None),
            (len(self.rspamd.learn), "Rspamd learn job", None),
        ]
        parts += [_count(n, one, many) for n, one, many in extra if n]
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
        entry: dict[str, Any] = _password_entry(account.password)
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
    _extras_to_document(state, doc)
    if state.policy != Policy():
        p: dict[str, Any] = {}
        if state.policy.prune:
            p["prune"] = True
        if state.policy.max_deletions is not None:
            p["max_deletions"] = state.policy.max_deletions
        doc["policy"] = p
    return doc


def _password_entry(pw: PasswordSource | None) -> dict[str, str]:
    if isinstance(pw, UserOwned):
        return {**_password_entry(pw.initial), "update_password": "on_create"}
    if isinstance(pw, PasswordSops):
        return {pw.path[-1]: pw.ciphertext}
    if isinstance(pw, PasswordHash):
        return {"password_hash": pw.value}
    if isinstance(pw, PasswordFile):
        return {"password_file": pw.path}
    if isinstance(pw, PasswordEnv):
        return {"password_env": pw.name}
    return {}


def _extras_to_document(state: DesiredState, doc: dict[str, Any]) -> None:
    """masters, regexp_aliases, restrict, relay and dkim, in that order."""
    if state.masters:
        doc["masters"] = {m.name: _password_entry(m.password) for m in state.masters}
    if state.regexp_aliases:
        doc["regexp_aliases"] = [
            {
                "pattern": r.pattern,
                **({"flags": r.flags} if r.flags else {}),
                "to": _one_or_list(r.targets),
            }
            for r in state.regexp_aliases
        ]
    if state.restrict != Restrict():
        doc["restrict"] = {
            name: list(values)
            for name, values in (("send", state.restrict.send), ("receive", state.restrict.receive))
            if values
        }
    if state.relay:
        relay: dict[str, Any] = {}
        for r in state.relay:
            entry: dict[str, Any] = {}
            if r.exclude:
                entry["exclude"] = True
            if r.host is not None:
                entry["host"] = r.host
                if r.port != 25:
                    entry["port"] = r.port
            if r.username is not None:
                entry["username"] = r.username
                entry.update(_password_entry(r.password))
            relay[r.domain] = entry
        doc["relay"] = relay
    if state.dkim:
        doc["dkim"] = {} if state.dkim_signer == "opendkim" else {"signer": state.dkim_signer}
        doc["dkim"] |= {
            d.domain: {
                **({"selector": d.selector} if d.selector != "mail" else {}),
                **({"key_size": d.key_size} if d.key_size != 2048 else {}),
            }
            for d in state.dkim
        }
    if state.rspamd:
        doc["rspamd"] = _rspamd_to_document(state.rspamd)


def _rspamd_to_document(r: Rspamd) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.actions:
        out["actions"] = {name: _number(score) for name, score in r.actions}
    senders = {k: list(v) for k, v in (("allow", r.allow), ("deny", r.deny)) if v}
    if senders:
        out["senders"] = senders
    modules = {k: list(v) for k, v in (("enable", r.enable), ("disable", r.disable)) if v}
    if modules:
        out["modules"] = modules
    options: dict[str, Any] = {}
    if r.common:
        options["common"] = dict(r.common)
    if r.module_options:
        options["module"] = {name: dict(opts) for name, opts in r.module_options}
    if options:
        out["options"] = options
    if r.controller_hash is not None:
        out["controller"] = {"password_hash": r.controller_hash}
    elif isinstance(r.controller_password, PasswordEnv):
        out["controller"] = {"password_env": r.controller_password.name}
    elif isinstance(r.controller_password, PasswordFile):
        out["controller"] = {"password_file": r.controller_password.path}
    if r.learn:
        out["learn"] = [_job_to_document(job) for job in r.learn]
    return out


def _number(score: float) -> int | float:
    return int(score) if float(score).is_integer() else score


def _job_to_document(job: SaLearnJob) -> dict[str, Any]:
    j: dict[str, Any] = {"schedule": job.schedule, "learn": job.learn.value, "folder": job.folder}
    if job.accounts is not None:
        j["accounts"] = list(job.accounts)
    if job.domains is not None:
        j["domains"] = list(job.domains)
    return j


def _one_or_list(targets: tuple[str, ...]) -> str | list[str]:
    return targets[0] if len(targets) == 1 else list(targets)

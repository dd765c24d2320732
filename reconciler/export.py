"""Adopt an existing config volume: Observed -> a DesiredState whose plan against it is empty.

Pure, like the planner. Whatever mailserver.yaml cannot express, or what would change how mail is
routed if adopted, is left out and stays unmanaged (kept untouched), with a warning saying why:
lines DMS cannot read, addresses outside the safe character set, aliases whose targets do not
resolve, and a catch-all that swallows the mail of real accounts (the DMS catch-all trap; adopting
it would add the self-aliases that fix it, which changes routing).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import yaml

from reconciler.addresses import (
    check_address,
    check_domain,
    check_password_hash,
    check_quota,
    domain_of,
    quota_bytes,
    split_hash,
)
from reconciler.desired import plain_ascii, schema
from reconciler.formats import cron
from reconciler.gcpause import paused
from reconciler.model import (
    QUARANTINE_KINDS,
    Account,
    Alias,
    CatchAll,
    DesiredState,
    Learn,
    PasswordHash,
    Quarantine,
    SaLearnJob,
    to_document,
)
from reconciler.observe import Observed
from reconciler.planner import DEVNULL_TARGET, cron_lines

_C_DUMPER: Any = getattr(yaml, "CSafeDumper", None)
# The schema's own `$id`: schema/mailserver.schema.json as served from the repository's main
# branch (one source for the URL; tests/test_export.py checks it names the real file).
SCHEMA_COMMENT = f"# yaml-language-server: $schema={schema()['$id']}"


@dataclass(frozen=True)
class Exported:
    state: DesiredState
    warnings: tuple[str, ...]


@paused
def export_state(observed: Observed, *, hostname: str | None = None) -> Exported:
    warnings: list[str] = []
    accounts = _accounts(observed, warnings)
    account_set = {a.address for a in accounts}
    devnull_on = (
        observed.local_aliases.entries.get("devnull") is not None
        and observed.local_aliases.entries["devnull"].normalised()[1] == "/dev/null"
    )

    aliases: dict[str, tuple[str, ...]] = {}
    catch_all: dict[str, tuple[str, ...]] = {}
    devnull: list[str] = []
    self_aliases: set[str] = set()
    for key, entry in observed.virtual.entries.items():
        targets = tuple(sorted({t.lower() for t in entry.targets}))
        if entry.key != key:
            warnings.append(
                f"postfix-virtual.cf: '{entry.key}' has uppercase letters; left unmanaged"
            )
            continue
        if key.startswith("@"):
            if check_domain(key[1:]) is None and all(check_address(t) is None for t in targets):
                catch_all[key[1:]] = targets
            else:
                warnings.append(
                    f"postfix-virtual.cf: catch-all '{key}' cannot be expressed; left unmanaged"
                )
            continue
        if targets == (DEVNULL_TARGET,):
            if devnull_on and check_address(key) is None:
                devnull.append(key)
            else:
                warnings.append(
                    f"postfix-virtual.cf: '{key} devnull' without `devnull: /dev/null` in "
                    "postfix-aliases.cf; left unmanaged"
                )
            continue
        if targets == (key,) and key in account_set:
            self_aliases.add(key)
            continue
        problem = check_address(key) or next(
            (check_address(t) for t in targets if check_address(t)), None
        )
        if problem:
            warnings.append(f"postfix-virtual.cf: alias '{key}' left unmanaged: {problem}")
            continue
        if key in account_set:
            warnings.append(
                f"postfix-virtual.cf: '{key}' is both an account and an alias; the "
                "alias is left unmanaged (Postfix delivers by it)"
            )
            continue
        aliases[key] = targets

    # A catch-all whose domain has accounts without a self-alias swallows their mail today.
    for domain in sorted(catch_all):
        trapped = sorted(a for a in account_set if domain_of(a) == domain and a not in self_aliases)
        if trapped:
            warnings.append(
                f"catch-all @{domain} takes the mail of account(s) {', '.join(trapped[:5])}"
                f"{' ...' if len(trapped) > 5 else ''} (no self-alias); left unmanaged so routing "
                f"does not change. Add `catch_all: {{{domain}: ...}}` to mailserver.yaml to fix it"
            )
            del catch_all[domain]

    aliases = _resolvable(aliases, account_set, set(devnull), set(catch_all), warnings)
    domains = sorted(
        {domain_of(a) for a in account_set}
        | {domain_of(a) for a in aliases}
        | set(catch_all)
        | {domain_of(a) for a in devnull}
    )
    if hostname:
        clash = [d for d in domains if d == hostname]
        if clash:
            warnings.append(
                f"domain {hostname} equals the hostname; hostname left out of the export"
            )
            hostname = None
    state = DesiredState(
        version=1,
        hostname=hostname,
        domains=tuple(domains),
        accounts=tuple(accounts),
        aliases=tuple(Alias(k, v) for k, v in sorted(aliases.items())),
        catch_all=tuple(CatchAll(k, v) for k, v in sorted(catch_all.items())),
        devnull=tuple(sorted(devnull)),
        quarantine=_quarantine(observed, account_set | set(aliases)),
        sa_learn=_sa_learn(observed, account_set, set(domains), warnings),
    )
    return Exported(state, tuple(warnings))


def _accounts(observed: Observed, warnings: list[str]) -> list[Account]:
    out = []
    for key, entry in observed.accounts.entries.items():
        if entry.address != key:
            warnings.append(
                f"postfix-accounts.cf: '{entry.address}' has uppercase letters; left unmanaged"
            )
            continue
        if problem := check_address(key):
            warnings.append(f"postfix-accounts.cf: account left unmanaged: {problem}")
            continue
        if not entry.password_hash:
            warnings.append(
                f"postfix-accounts.cf: '{key}' has an empty password hash; left unmanaged "
                "(set a password with password_file)"
            )
            continue
        value = _hash_for_yaml(entry.password_hash)
        if check_password_hash(value):
            warnings.append(
                f"postfix-accounts.cf: the password hash of '{key}' is in a form "
                "mailserver.yaml does not accept; left unmanaged"
            )
            continue
        quota_line = observed.quotas.entries.get(key)
        quota = (
            quota_line.size if quota_line is not None and _valid_quota(quota_line.size) else None
        )
        if quota_line is not None and quota_line.shadowed:
            # adopting it would change the quota DMS applies today: leave it unmanaged
            warnings.append(
                f"dovecot-quotas.cf: the quota of '{key}' is not what DMS applies "
                f"(it reads {quota_line.shadowed}); left unmanaged"
            )
            quota = None
        out.append(Account(key, PasswordHash(value), quota))
    return sorted(out, key=lambda a: a.address)


def _hash_for_yaml(stored: str) -> str:
    """A bare hash means DMS's default scheme, SHA512-CRYPT (libc crypt): spell it out."""
    scheme, body = split_hash(stored)
    if scheme is not None:
        return stored
    return ("{SHA512-CRYPT}" if body.startswith("$6$") else "{CRYPT}") + body


def _valid_quota(size: str) -> bool:
    return quota_bytes(size) is not None and check_quota(size) is None


def _resolvable(
    aliases: dict[str, tuple[str, ...]],
    accounts: set[str],
    devnull: set[str],
    catch_domains: set[str],
    warnings: list[str],
) -> dict[str, tuple[str, ...]]:
    """Drop aliases whose in-domain targets do not resolve (again and again: dropping one can
    break another)."""
    hosted = {domain_of(a) for a in accounts} | {domain_of(a) for a in aliases} | catch_domains
    hosted |= {domain_of(a) for a in devnull}
    kept = dict(aliases)
    changed = True
    while changed:
        changed = False
        known = accounts | devnull | set(kept)
        for key, targets in list(kept.items()):
            bad = [
                t
                for t in targets
                if domain_of(t) in hosted and t not in known and domain_of(t) not in catch_domains
            ]
            if bad or key in targets:
                warnings.append(
                    f"postfix-virtual.cf: alias '{key}' left unmanaged: target "
                    f"{(bad or [key])[0]} is no account or alias here"
                )
                del kept[key]
                changed = True
    return kept


def _quarantine(observed: Observed, hosted: set[str]) -> Quarantine | None:
    block = observed.amavis.block if observed.amavis else None
    if not block or len(set(block.values())) != 1:
        return None
    mailbox = next(iter(block.values()))
    if mailbox not in hosted:
        return None
    return Quarantine(mailbox, tuple(k for k in QUARANTINE_KINDS if k in block))


def _sa_learn(
    observed: Observed, accounts: set[str], domains: set[str], warnings: list[str]
) -> tuple[SaLearnJob, ...]:
    """Read our own cron lines back into jobs; any other line leaves the file unmanaged."""
    if observed.cron is None or not observed.cron.entries:
        return ()
    groups: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    jobs_on_volume = set()
    old_form = False
    for text in observed.cron.entries:
        line = cron.read_job_line(text)
        if line is None:
            warnings.append(
                "the sa-learn cron file has lines dms-reconciler did not write; "
                "sa_learn is left out and the file stays unmanaged"
            )
            return ()
        jobs_on_volume.add(line.job)
        old_form = old_form or line.old_form
        if line.domain == "*" and line.user == "*":
            scope, item = "all", ""
        elif line.user == "*":
            scope, item = "domains", line.domain
        else:
            scope, item = "accounts", f"{line.user}@{line.domain}"
        groups[(line.schedule, line.learn, line.folder, scope)].append(item)
    jobs = []
    for (schedule, learn, folder, scope), items in groups.items():
        jobs.append(
            SaLearnJob(
                schedule=schedule,
                learn=Learn(learn),
                folder=folder,
                accounts=tuple(sorted(items)) if scope == "accounts" else None,
                domains=tuple(sorted(items)) if scope == "domains" else None,
            )
        )
    candidate = DesiredState(1, tuple(sorted(domains)), (), sa_learn=tuple(jobs))
    rendered = [cron.read_job_line(line.key) for line in cron_lines(candidate)]
    if {line.job for line in rendered if line is not None} != jobs_on_volume or len(
        rendered
    ) != len(observed.cron.entries):
        warnings.append("the sa-learn cron file cannot be expressed exactly; left unmanaged")
        return ()
    if old_form:
        warnings.append(
            f"the sa-learn cron file learns into {cron.OLD_DBPATH}, which Amavis reads only "
            f"when /var/mail-state is mounted; the plan rewrites its lines to {cron.DBPATH}"
        )
    if any(a not in accounts for job in jobs for a in job.accounts or ()) or any(
        d not in domains for job in jobs for d in job.domains or ()
    ):
        warnings.append(
            "the sa-learn cron file names mailboxes that are not accounts here; left unmanaged"
        )
        return ()
    return tuple(jobs)


@paused
def dump_yaml(state: DesiredState) -> str:
    """mailserver.yaml text for `state`, with the schema comment editors use for completion."""
    doc: dict[str, Any] = to_document(state)
    # libyaml's emitter is 4-5x faster (2.4 s -> 0.55 s for 10,000 accounts) and writes the same
    # bytes for printable-ASCII text (60,000 random strings compared); for other characters its
    # escapes differ (it writes "\U0001F600" where PyYAML writes the emoji), so those files keep
    # the pure-Python emitter.
    dumper = _C_DUMPER if _C_DUMPER is not None and plain_ascii(doc) else yaml.SafeDumper
    body = yaml.dump(
        doc,
        Dumper=dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1000,
    )
    return (
        f"{SCHEMA_COMMENT}\n"
        "# Exported by dms-reconciler from an existing config volume. It holds password hashes:\n"
        "# keep it private, or move passwords to password_file / password_env.\n"
        f"{body}"
    )

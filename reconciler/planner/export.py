"""Adopt an existing config volume: Observed -> a DesiredState whose plan against it is empty.

Pure, like the planner. Whatever mailserver.yaml cannot express, or what would change how mail is
routed if adopted, is left out and stays unmanaged (kept untouched), with a warning saying why:
lines DMS cannot read, addresses outside the safe character set, aliases whose targets do not
resolve, and a catch-all that swallows the mail of real accounts (the DMS catch-all trap; adopting
it would add the self-aliases that fix it, which changes routing).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from reconciler import dkimkeys
from reconciler.addresses import (
    check_address,
    check_domain,
    check_password_hash,
    check_quota,
    domain_of,
    quota_bytes,
    split_hash,
)
from reconciler.errors import Diagnostic, InvalidDesiredState, ReconcilerError, Severity, printable
from reconciler.formats import access, cron, opendkim, regexp, relaymap
from reconciler.formats import accounts as accounts_file
from reconciler.formats import masters as masters_file
from reconciler.formats import virtual as virtual_file
from reconciler.formats._lines import ParsedFile
from reconciler.gcpause import paused
from reconciler.kinds.dkim import DKIM_KEY_SIZES
from reconciler.kinds.masters import check_master_name
from reconciler.kinds.regexp import pcre_problem, regexp_target_problem
from reconciler.kinds.relay import check_relay_host
from reconciler.kinds.sa_learn import cron_lines
from reconciler.kinds.virtual import DEVNULL_TARGET
from reconciler.load.desired import Loaded, load_desired_bytes, schema
from reconciler.load.yamlload import format_path, plain_ascii
from reconciler.model import (
    QUARANTINE_KINDS,
    Account,
    Alias,
    CatchAll,
    DesiredState,
    Dkim,
    Learn,
    Master,
    PasswordHash,
    Quarantine,
    RegexpAlias,
    Relay,
    Restrict,
    SaLearnJob,
    to_document,
)
from reconciler.volume.observe import Observed

_C_DUMPER: Any = getattr(yaml, "CSafeDumper", None)
# The schema's own `$id`: schema/mailserver.schema.json as served from the repository's main
# branch (one source for the URL; tests/kinds/test_export.py checks it names the real file).
SCHEMA_COMMENT = f"# yaml-language-server: $schema={schema()['$id']}"


@dataclass(frozen=True)
class Exported:
    state: DesiredState
    warnings: tuple[str, ...]


@paused
def export_state(observed: Observed, *, hostname: str | None = None) -> Exported:
    warnings: list[str] = observed.parse_problems()
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

    # A catch-all whose domain has accounts without a self-alias swallows their mail today. Its
    # own single target is not swallowed (its mail goes to it either way), and the planner wants
    # no self-alias for it (`planner._sole_catch_all_targets`): adopting changes nothing.
    for domain in sorted(catch_all):
        sole = catch_all[domain][0] if len(catch_all[domain]) == 1 else None
        trapped = sorted(
            a for a in account_set if domain_of(a) == domain and a not in self_aliases and a != sole
        )
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
    extras = _setup_exports(
        observed, set(domains), account_set, set(aliases) | set(devnull), set(catch_all), warnings
    )
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
        **extras,
    )
    return Exported(state, tuple(warnings))


def _setup_exports(
    observed: Observed,
    domains: set[str],
    accounts: set[str],
    others: set[str],
    catch_domains: set[str],
    warnings: list[str],
) -> dict[str, Any]:
    """masters, regexp_aliases, restrict, relay and dkim that adopt what the volume holds."""
    return {
        "masters": _masters(observed, accounts | others, warnings),
        "regexp_aliases": _regexp_aliases(
            observed, domains, accounts | others, catch_domains, warnings
        ),
        "restrict": _restrict(observed, domains, warnings),
        "relay": _relays(observed, domains, warnings),
        "dkim": _dkim(observed, domains, warnings),
    }


def _masters(observed: Observed, addresses: set[str], warnings: list[str]) -> tuple[Master, ...]:
    out = []
    for key, entry in observed.masters.entries.items():
        value = _hash_for_yaml(entry.password_hash) if entry.password_hash else ""
        problem = (
            check_master_name(entry.name)
            or ("its name is also an account or alias" if key in addresses else None)
            or (value and check_password_hash(value) and "its hash is in a form not accepted")
            or (not value and "it has an empty password hash")
        )
        if problem:
            warnings.append(f"dovecot-masters.cf: master user left unmanaged: {problem}")
            continue
        out.append(Master(key, PasswordHash(value)))
    return tuple(sorted(out, key=lambda m: m.name))


def _regexp_aliases(
    observed: Observed,
    domains: set[str],
    known: set[str],
    catch_domains: set[str],
    warnings: list[str],
) -> tuple[RegexpAlias, ...]:
    out = []
    for key, entry in observed.regexp.entries.items():
        problem = None
        if entry.delimiter != "/":
            problem = "it is not written between '/' delimiters"
        else:
            problem, groups = pcre_problem(entry.pattern, entry.flags)
            for target in entry.targets:
                problem = problem or regexp_target_problem(target, groups)
                if problem is None and "$" not in target:
                    domain = domain_of(target)
                    if domain in domains and target not in known and domain not in catch_domains:
                        problem = f"target {target} is no account or alias here"
        if problem:
            warnings.append(f"postfix-regexp.cf: {key} left unmanaged: {problem}")
            continue
        out.append(RegexpAlias(entry.pattern, tuple(dict.fromkeys(entry.targets)), entry.flags))
    return tuple(out)


def _restrict(observed: Observed, domains: set[str], warnings: list[str]) -> Restrict:
    found: dict[str, list[str]] = {"send": [], "receive": []}
    for direction, name in (("send", access.SEND), ("receive", access.RECEIVE)):
        for key, entry in (observed.access.get(name) or ParsedFile({})).entries.items():
            if entry.key != key or check_address(key) or domain_of(key) not in domains:
                warnings.append(f"{name}: '{entry.key}' left unmanaged: not a hosted address")
            elif entry.normalised()[1] != access.REJECT:
                warnings.append(f"{name}: '{key}' left unmanaged: its action is not REJECT")
            else:
                found[direction].append(key)
    return Restrict(tuple(sorted(found["send"])), tuple(sorted(found["receive"])))


def _relays(observed: Observed, domains: set[str], warnings: list[str]) -> tuple[Relay, ...]:
    out = []
    for key, entry in observed.relaymap.entries.items():
        domain = key[1:]
        hostport = entry.host_port()
        if entry.key != key or not key.startswith("@") or domain not in domains:
            warnings.append(
                f"postfix-relaymap.cf: '{entry.key}' left unmanaged: not @<hosted domain>"
            )
        elif entry.excluded:
            out.append(Relay(domain, exclude=True))
        elif hostport is None or check_relay_host(hostport[0]) or not 0 < hostport[1] < 65536:
            warnings.append(f"postfix-relaymap.cf: '{key}' left unmanaged: not [host]:port")
        else:
            out.append(Relay(domain, host=hostport[0], port=hostport[1]))
    if observed.sasl.entries:
        warnings.append(
            "postfix-sasl-password.cf: relay credentials are left unmanaged (their passwords "
            "cannot go into mailserver.yaml); declare username and password_file or password_env "
            "under relay to manage them"
        )
    return tuple(sorted(out, key=lambda r: r.domain))


def _dkim(observed: Observed, domains: set[str], warnings: list[str]) -> tuple[Dkim, ...]:
    """Domains whose KeyTable and SigningTable lines are exactly what open-dkim writes and
    whose private key is on the volume."""
    keys = observed.dkim_tables.get(opendkim.KEY_TABLE) or ParsedFile({})
    signing = observed.dkim_tables.get(opendkim.SIGNING_TABLE) or ParsedFile({})
    out = []
    for entry in keys.entries.values():
        selector, _, domain = entry.key.partition("._domainkey.")
        if not domain or domain not in domains:
            warnings.append(f"opendkim/KeyTable: '{entry.key}' left unmanaged: not a hosted domain")
            continue
        expected = opendkim.key_table_line(domain, selector)
        sign = signing.entries.get(f"*@{domain}")
        snap = observed.snapshots.get(opendkim.private_key_path(domain, selector))
        read = dkimkeys.read(snap.data) if snap is not None and snap.data is not None else None
        problem = (
            (entry.normalised() != expected.normalised() and "not the line open-dkim writes")
            or (
                (
                    sign is None
                    or sign.normalised()
                    != opendkim.signing_table_line(domain, selector).normalised()
                )
                and "its SigningTable line is missing or different"
            )
            or (read is None and "its private key file is missing or unreadable")
            or (read is not None and read[0] not in DKIM_KEY_SIZES and "its key size")
            or (
                not observed.snapshots[opendkim.TRUSTED_HOSTS].exists
                and "opendkim/TrustedHosts is missing"
            )
        )
        if problem or read is None:
            warnings.append(f"opendkim: DKIM for {domain} left unmanaged: {problem}")
            continue
        out.append(Dkim(domain, selector, read[0]))
    return tuple(sorted(out, key=lambda d: d.domain))


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


# A section of mailserver.yaml -> (its DesiredState field, an entry's key there (None: a list,
# keyed by position), the volume file it came from, the text its line starts with there).
_SECTIONS: dict[str, tuple[str, Callable[[Any], str] | None, str, Callable[[Any], str]]] = {
    "accounts": (
        "accounts",
        lambda a: a.address,
        accounts_file.FILENAME,
        lambda a: f"{a.address}|",
    ),
    "aliases": ("aliases", lambda a: a.address, virtual_file.FILENAME, lambda a: a.address),
    "catch_all": ("catch_all", lambda c: c.domain, virtual_file.FILENAME, lambda c: f"@{c.domain}"),
    "masters": ("masters", lambda m: m.name, masters_file.FILENAME, lambda m: f"{m.name}|"),
    "relay": ("relay", lambda r: r.domain, relaymap.FILENAME, lambda r: f"@{r.domain}"),
    "dkim": (
        "dkim",
        lambda d: d.domain,
        opendkim.KEY_TABLE,
        lambda d: f"{d.selector}._domainkey.{d.domain}",
    ),
    "regexp_aliases": ("regexp_aliases", None, regexp.FILENAME, lambda r: f"/{r.pattern}/"),
    "devnull": ("devnull", None, virtual_file.FILENAME, lambda a: a),
}
_MAX_ROUNDS = 50


def checked_yaml(
    exported: Exported, observed: Observed, filename: str
) -> tuple[Exported, str, Loaded]:
    """mailserver.yaml text for `exported`, loaded as `filename` as the next plan will load it.

    An entry the validator refuses (the volume holds it, DMS accepts it, mailserver.yaml cannot
    say it: a CR or NUL in a regexp pattern, a DKIM selector outside the schema) is left out, so it
    stays unmanaged and kept, with a warning naming the volume file and line; then the rest is
    checked again (leaving out an account can leave an alias to it unresolved). Anything else the
    validator refuses is raised as it is."""
    state, warnings = exported.state, list(exported.warnings)
    for _ in range(_MAX_ROUNDS):
        text = dump_yaml(state)
        try:
            loaded = load_desired_bytes(text.encode(), filename)
        except InvalidDesiredState as exc:
            errors = [d for d in exc.diagnostics if d.severity is Severity.ERROR]
            smaller = _leave_out(state, errors, observed, warnings)
            if smaller is None:
                raise
            state = smaller
            continue
        return Exported(state, tuple(warnings)), text, loaded
    raise ReconcilerError(f"export could not make a valid {filename}; please report this volume")


def _leave_out(
    state: DesiredState, errors: list[Diagnostic], observed: Observed, warnings: list[str]
) -> DesiredState | None:
    """`state` without the entries `errors` name (None when they name none)."""
    changes: dict[str, Any] = {}
    for section, (attr, key_of, filename, starts) in _SECTIONS.items():
        entries = getattr(state, attr)
        kept = []
        for index, entry in enumerate(entries):
            key: int | str = index if key_of is None else key_of(entry)
            where = format_path((section, key))
            found = [
                d
                for d in errors
                if d.path == where or d.path.startswith((where + ".", where + "["))
            ]
            if not found:
                kept.append(entry)
                continue
            line = _line_starting(observed, filename, starts(entry))
            place = f"{filename} line {line}" if line else filename
            shown = starts(entry) if key_of is None else str(key)
            warnings.append(f"{place}: '{printable(shown)}' left unmanaged: {found[0].message}")
        if len(kept) != len(entries):
            changes[attr] = tuple(kept)
    restrict = {"send": list(state.restrict.send), "receive": list(state.restrict.receive)}
    for direction, name in (("send", access.SEND), ("receive", access.RECEIVE)):
        for index, address in enumerate(getattr(state.restrict, direction)):
            found = [d for d in errors if d.path == format_path(("restrict", direction, index))]
            if found:
                restrict[direction].remove(address)
                warnings.append(f"{name}: '{address}' left unmanaged: {found[0].message}")
    if restrict != {"send": list(state.restrict.send), "receive": list(state.restrict.receive)}:
        changes["restrict"] = Restrict(tuple(restrict["send"]), tuple(restrict["receive"]))
    for attr, empty, what in (
        ("quarantine", None, "amavis.cf: the quarantine block"),
        ("sa_learn", (), "the sa-learn cron file"),
    ):
        found = [d for d in errors if d.path == attr or d.path.startswith((attr + ".", attr + "["))]
        if found and getattr(state, attr):
            changes[attr] = empty
            warnings.append(f"{what} left unmanaged: {found[0].message}")
    return dataclasses.replace(state, **changes) if changes else None


def _line_starting(observed: Observed, filename: str, start: str) -> int | None:
    snap = observed.snapshots.get(filename)
    for number, line in enumerate((snap.text or "").split("\n") if snap else (), start=1):
        if line.startswith(start):
            return number
    return None


def shown_warnings(warnings: tuple[str, ...], limit: int) -> list[str]:
    """The first `limit` warnings, then one line counting the rest by the file they name, as plan
    lists unmanaged entries: a hostile volume of 100,000 bad lines makes 27 lines, not 100,000."""
    if len(warnings) <= limit:
        return list(warnings)
    files: dict[str, int] = defaultdict(int)
    for warning in warnings[limit:]:
        head = warning.split(":", 1)[0].split(" line ", 1)[0]
        files[head if head and " " not in head else "other"] += 1
    counted = ", ".join(f"{name} {count:,}" for name, count in sorted(files.items()))
    return [
        *warnings[:limit],
        f"... and {len(warnings) - limit:,} more warnings ({counted}); each entry they name "
        "is left unmanaged: `dms-reconciler plan -f FILE --format json` lists them all",
    ]


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

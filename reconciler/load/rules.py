"""Mail-aware checks that JSON Schema cannot express (product.md, section 2).

Each rule reads the loaded document defensively (a part with the wrong type was already reported
by the schema and is skipped here) and reports through `Report.error` with the document path, so
the message lands on the right line. All rules run; every problem is reported at once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from reconciler.addresses import (
    check_address,
    check_domain,
    check_password_hash,
    check_quota,
    domain_of,
)
from reconciler.errors import Diagnostic, Severity
from reconciler.load import setup_rules
from reconciler.load.sops import is_encrypted
from reconciler.load.yamlload import Document, Path, format_path

CRON_MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly", "@reboot"}
)
PASSWORD_KEYS = ("password_hash", "password_file", "password_env", "password")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# The five fields as Debian cron (DMS's) reads them: name, range, names it takes.
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
# One element of a field's comma list: `*`, a value or a range, then an optional step. No
# croniter extensions (`L`, `W`, `#`, `?`): Debian cron refuses them and ignores the whole file.
_CRON_ELEMENT = re.compile(r"(\*|[0-9a-z]+(-[0-9a-z]+)?)(/[0-9]+)?\Z")


@dataclass
class Report:
    doc: Document
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, path: Path, message: str, *, key: bool = False) -> None:
        self._add(path, message, key, Severity.ERROR)

    def warning(self, path: Path, message: str, *, key: bool = False) -> None:
        self._add(path, message, key, Severity.WARNING)

    def _add(self, path: Path, message: str, key: bool, severity: Severity) -> None:
        line, column = self.doc.position(path, key=key)
        self.diagnostics.append(
            Diagnostic(self.doc.filename, line, column, format_path(path), message, severity)
        )


@dataclass
class _View:
    """The well-typed parts of the document, for rules to read without type checks everywhere."""

    domains: list[tuple[int, str]]
    accounts: dict[str, Any]
    aliases: dict[str, list[str]]
    catch_all: dict[str, list[str]]
    devnull: list[tuple[int, str]]
    quarantine: dict[str, Any]
    sa_learn: list[tuple[int, dict[str, Any]]]
    hostname: str | None

    # `check_address`, once per distinct address: most addresses appear several times (as a key,
    # as targets, in three rules), which made it a quarter of `check` on big files. The cache
    # outlives one check, so the sidecar's next load (one entry edited) checks only what is new;
    # it is bounded, so a long-running sidecar does not grow with every address ever seen.
    address_problem = staticmethod(lru_cache(maxsize=1 << 17)(check_address))
    # The same for password hashes, which the sidecar holds anyway as its last good state.
    hash_problem = staticmethod(lru_cache(maxsize=1 << 16)(check_password_hash))

    @classmethod
    def of(cls, doc: dict[str, Any]) -> _View:
        def mapping(name: str) -> dict[str, Any]:
            value = doc.get(name)
            return value if isinstance(value, dict) else {}

        def strings(value: Any) -> list[tuple[int, str]]:
            if not isinstance(value, list):
                return []
            return [(i, v) for i, v in enumerate(value) if isinstance(v, str)]

        def targets(value: Any) -> list[str]:
            if isinstance(value, str):
                return [value]
            if not isinstance(value, list):
                return []
            return [v for v in value if isinstance(v, str)]

        hostname = doc.get("hostname")
        quarantine = doc.get("quarantine")
        return cls(
            domains=strings(doc.get("domains")),
            accounts=mapping("accounts"),
            aliases={k: targets(v) for k, v in mapping("aliases").items()},
            catch_all={k: targets(v) for k, v in mapping("catch_all").items()},
            devnull=strings(doc.get("devnull")),
            quarantine=quarantine if isinstance(quarantine, dict) else {},
            sa_learn=[
                (i, job) for i, job in enumerate(doc.get("sa_learn") or []) if isinstance(job, dict)
            ]
            if isinstance(doc.get("sa_learn"), list)
            else [],
            hostname=hostname if isinstance(hostname, str) else None,
        )


def check(doc: Document) -> list[Diagnostic]:
    """Run every mail-aware rule on a loaded document; return all findings."""
    report = Report(doc)
    view = _View.of(doc.value)
    _check_syntax(report, view)
    _check_passwords(report, view)
    _check_quotas(report, view)
    _check_expansion(report, view)
    _check_hosted(report, view)
    _check_collisions(report, view)
    _check_targets_resolve(report, view)
    _check_loops(report, view)
    _check_hostname(report, view)
    _check_sa_learn(report, view)
    _check_unused_domains(report, view)
    setup_rules.check(report, view)
    return report.diagnostics


def _check_syntax(report: Report, view: _View) -> None:
    """Every address and domain must be safe on a DMS config line (lowercase, no separators)."""
    for i, domain in view.domains:
        if problem := check_domain(domain):
            report.error(("domains", i), problem)
    seen: dict[str, int] = {}
    for i, domain in view.domains:
        if domain in seen:
            report.warning(("domains", i), f"domain '{domain}' is listed twice")
        seen.setdefault(domain, i)
    if view.hostname is not None and (problem := check_domain(view.hostname)):
        report.error(
            ("hostname",),
            problem.replace("domain", "hostname", 1)
            + " (DMS needs a fully qualified hostname such as mail.example.com)",
        )
    for section in ("accounts", "aliases"):
        for key in getattr(view, section):
            if problem := view.address_problem(key):
                report.error((section, key), problem, key=True)
    for domain in view.catch_all:
        if problem := check_domain(domain):
            report.error(("catch_all", domain), problem, key=True)
    for path, target in _failing_targets(report.doc.value, view.address_problem):
        problem = view.address_problem(target) or ""
        report.error(path, f"target {problem}" if problem.startswith("address") else problem)
    for i, address in view.devnull:
        if problem := view.address_problem(address):
            report.error(("devnull", i), problem)
    mailbox = view.quarantine.get("mailbox")
    if isinstance(mailbox, str) and (problem := view.address_problem(mailbox)):
        report.error(("quarantine", "mailbox"), problem)
    for i, job in view.sa_learn:
        for j, address in _strings(job.get("accounts")):
            if problem := view.address_problem(address):
                report.error(("sa_learn", i, "accounts", j), problem)
        for j, domain in _strings(job.get("domains")):
            if problem := check_domain(domain):
                report.error(("sa_learn", i, "domains", j), problem)


def _failing_targets(
    doc: dict[str, Any], fails: Callable[[str], Any]
) -> Iterator[tuple[Path, str]]:
    """(path, target) for every alias and catch-all target that `fails`, with list indexes where
    written. Paths are made only for those: there are 80,000 targets at 10,000 accounts."""
    for section in ("aliases", "catch_all"):
        block = doc.get(section)
        if not isinstance(block, dict):
            continue
        for key, value in block.items():
            if isinstance(value, str):
                if fails(value):
                    yield (section, key), value
            elif isinstance(value, list):
                for i, target in enumerate(value):
                    if isinstance(target, str) and fails(target):
                        yield (section, key, i), target


def _strings(value: Any) -> list[tuple[int, str]]:
    if not isinstance(value, list):
        return []
    return [(i, v) for i, v in enumerate(value) if isinstance(v, str)]


def _check_passwords(report: Report, view: _View) -> None:
    """Exactly one password source per account; hashes in a form Dovecot reads."""
    for address, account in view.accounts.items():
        if not isinstance(account, dict):
            continue
        given = [k for k in PASSWORD_KEYS if k in account]
        if not given:
            report.error(
                ("accounts", address),
                f"account '{address}' has no password: give one of password_hash, "
                "password_file, password_env or password (SOPS-encrypted)",
                key=True,
            )
        elif len(given) > 1:
            report.error(
                ("accounts", address, given[1]),
                f"account '{address}' has {' and '.join(given)}; keep exactly one password source",
                key=True,
            )
        value = account.get("password_hash")
        if (
            isinstance(value, str)
            and not is_encrypted(value)  # SOPS: checked once decrypted, at plan
            and (problem := view.hash_problem(value))
        ):
            report.error(("accounts", address, "password_hash"), problem)
        path = account.get("password_file")
        if isinstance(path, str) and ("\n" in path or "\0" in path):
            report.error(
                ("accounts", address, "password_file"),
                "password_file must be a single path without line breaks or NUL bytes",
            )


def _check_quotas(report: Report, view: _View) -> None:
    """Quotas Dovecot can hold (the schema checks their form)."""
    for address, account in view.accounts.items():
        quota = account.get("quota") if isinstance(account, dict) else None
        if isinstance(quota, str) and (problem := check_quota(quota)):
            report.error(("accounts", address, "quota"), problem)


POSTFIX_EXPANSION_LIMIT = 1000  # virtual_alias_expansion_limit, Postfix's default (DMS keeps it)


def _check_expansion(report: Report, view: _View) -> None:
    """An alias that expands (through nested aliases too) to more addresses than Postfix's
    virtual_alias_expansion_limit makes cleanup refuse the mail with "unreasonable
    virtual_alias_maps map expansion size ... try again later": it is deferred, then bounced."""
    sizes: dict[str, int] = {}

    def size(root: str) -> int:
        """Addresses `root` expands to, capped just above the limit; iterative (long chains)."""
        stack, on_path = [root], {root}
        while stack:
            address = stack[-1]
            waiting = [
                t
                for t in dict.fromkeys(view.aliases[address])
                if t in view.aliases and t not in sizes and t not in on_path
            ]
            if waiting:
                stack.append(waiting[0])
                on_path.add(waiting[0])
                continue
            total = 0
            for target in dict.fromkeys(view.aliases[address]):
                total += sizes.get(target, 1)  # a final address, or a loop (reported elsewhere)
                if total > POSTFIX_EXPANSION_LIMIT:
                    break
            sizes[address] = total
            stack.pop()
            on_path.discard(address)
        return sizes[root]

    for address, targets in view.aliases.items():
        if len(targets) * 2 < POSTFIX_EXPANSION_LIMIT and not any(
            t in view.aliases for t in targets
        ):
            continue  # the common case: a short list of final addresses
        if size(address) > POSTFIX_EXPANSION_LIMIT:
            report.warning(
                ("aliases", address),
                f"alias '{address}' expands to more than {POSTFIX_EXPANSION_LIMIT} addresses, "
                "Postfix's default virtual_alias_expansion_limit: Postfix refuses such mail "
                "('unreasonable virtual_alias_maps map expansion size', deferred, then bounced); "
                "use a mailing list, or raise virtual_alias_expansion_limit in DMS's "
                "postfix-main.cf",
                key=True,
            )


def _hosted_addresses(view: _View) -> Iterator[tuple[Path, str, bool]]:
    """(path, address, is_key) of every address this server hosts."""
    for address in view.accounts:
        yield ("accounts", address), address, True
    for address in view.aliases:
        yield ("aliases", address), address, True
    for i, address in view.devnull:
        yield ("devnull", i), address, False
    mailbox = view.quarantine.get("mailbox")
    if isinstance(mailbox, str):
        yield ("quarantine", "mailbox"), mailbox, False
    for i, job in view.sa_learn:
        for j, address in _strings(job.get("accounts")):
            yield ("sa_learn", i, "accounts", j), address, False


def _check_hosted(report: Report, view: _View) -> None:
    """Every hosted address and domain must be in `domains` (a typo guard, and DMS's vhost)."""
    declared = {d for _, d in view.domains}

    def complain(path: Path, domain: str, what: str, key: bool) -> None:
        hint = _suggest(domain, declared)
        report.error(
            path,
            f"{what} is in domain '{domain}', which is not listed in `domains`; "
            f"add it there{hint or ' or fix the spelling'}",
            key=key,
        )

    for path, address, is_key in _hosted_addresses(view):
        if view.address_problem(address) is None and domain_of(address) not in declared:
            complain(path, domain_of(address), f"'{address}'", is_key)
    for domain in view.catch_all:
        if check_domain(domain) is None and domain not in declared:
            complain(("catch_all", domain), domain, f"the catch-all for '{domain}'", True)
    for i, job in view.sa_learn:
        for j, domain in _strings(job.get("domains")):
            if check_domain(domain) is None and domain not in declared:
                complain(("sa_learn", i, "domains", j), domain, "this sa_learn job", False)


def _check_collisions(report: Report, view: _View) -> None:
    """An address is one thing: an account, an alias or a devnull address (Postfix: alias wins)."""
    for address in view.aliases:
        if address in view.accounts:
            report.error(
                ("aliases", address),
                f"'{address}' is both an account and an alias; Postfix would deliver by the alias "
                "and the mailbox would never get mail: remove one",
                key=True,
            )
    for i, address in view.devnull:
        if address in view.accounts:
            report.error(
                ("devnull", i), f"'{address}' is both an account and a devnull address; remove one"
            )
        elif address in view.aliases:
            report.error(
                ("devnull", i), f"'{address}' is both an alias and a devnull address; remove one"
            )


def _check_targets_resolve(report: Report, view: _View) -> None:
    """A target inside a hosted domain must exist here; otherwise the mail bounces (typo guard)."""
    declared = {d for _, d in view.domains}
    devnull = {a for _, a in view.devnull}
    known = set(view.accounts) | set(view.aliases) | devnull

    def dangling(target: str) -> bool:
        if target in known or view.address_problem(target) is not None:
            return False  # most targets are accounts or aliases here
        domain = domain_of(target)
        return domain in declared and domain not in view.catch_all

    for path, target in _failing_targets(report.doc.value, dangling):
        report.error(
            path,
            f"target '{target}' is in hosted domain '{domain_of(target)}' but is no account, "
            f"alias or devnull address, so mail to it would bounce{_suggest(target, known) or ''}",
        )
    mailbox = view.quarantine.get("mailbox")
    if isinstance(mailbox, str) and view.address_problem(mailbox) is None:
        if mailbox not in view.accounts and mailbox not in view.aliases:
            report.error(
                ("quarantine", "mailbox"),
                f"quarantine mailbox '{mailbox}' is not an account or alias here"
                + (_suggest(mailbox, set(view.accounts) | set(view.aliases)) or ""),
            )


def _check_loops(report: Report, view: _View) -> None:
    """Alias chains must end: at an account, a devnull address or an outside forward.

    A target in a catch-all domain that is none of those resolves through the catch-all, so
    catch-alls are nodes of the graph too (`@domain`).
    """
    devnull = {a for _, a in view.devnull}
    terminal = set(view.accounts) | devnull

    def successors(node: str) -> list[str]:
        targets = (
            view.catch_all.get(node[1:], []) if node.startswith("@") else view.aliases.get(node, [])
        )
        out = []
        for target in targets:
            if target in terminal:
                continue
            if target in view.aliases:
                out.append(target)
            elif domain_of(target) in view.catch_all:
                out.append("@" + domain_of(target))
        return out

    nodes = list(view.aliases) + ["@" + d for d in view.catch_all]
    reported: set[frozenset[str]] = set()
    for cycle in _find_cycles(nodes, successors):
        members = frozenset(cycle)
        if members in reported:
            continue
        reported.add(members)
        start = cycle[0]
        path: Path = ("catch_all", start[1:]) if start.startswith("@") else ("aliases", start)
        if len(cycle) == 1 and start.startswith("@"):
            message = (
                f"the catch-all for '{start[1:]}' sends to an address of the same domain that is "
                "no account, alias or devnull address, so it resolves through the catch-all "
                "again: a mail loop; send it to an account"
            )
        else:
            shown = " -> ".join(_node_name(n) for n in cycle + [cycle[0]])
            message = (
                f"alias loop: {shown}; Postfix would bounce this mail with 'mail forwarding loop'"
            )
        report.error(path, message, key=True)


def _node_name(node: str) -> str:
    return f"catch-all {node}" if node.startswith("@") else node


def _find_cycles(nodes: Iterable[str], successors: Any) -> Iterator[list[str]]:
    """Yield one cycle per strongly connected loop, iteratively (no recursion on big files)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour: dict[str, int] = {}
    for root in nodes:
        if colour.get(root, WHITE) != WHITE:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(successors(root)))]
        on_path = [root]
        colour[root] = GREY
        while stack:
            node, children = stack[-1]
            advanced = False
            for child in children:
                state = colour.get(child, WHITE)
                if state == GREY:
                    yield on_path[on_path.index(child) :]
                elif state == WHITE:
                    colour[child] = GREY
                    stack.append((child, iter(successors(child))))
                    on_path.append(child)
                    advanced = True
                    break
            if not advanced:
                colour[node] = BLACK
                stack.pop()
                on_path.pop()


def _check_hostname(report: Report, view: _View) -> None:
    """Domains Postfix treats as local (mydestination) cannot host virtual mail."""
    hostname = view.hostname
    if hostname is None or check_domain(hostname) is not None:
        return
    labels = hostname.split(".")
    domainname = ".".join(labels[1:]) if len(labels) > 2 else hostname
    local = {hostname, f"localhost.{domainname}"}
    for i, domain in view.domains:
        if domain in local:
            fix = (
                f"host mail at '{domainname}' instead"
                if domain != domainname
                else f"give DMS a hostname such as mail.{domain}"
            )
            report.error(
                ("domains", i),
                f"domain '{domain}' is the server's own hostname ({hostname}): Postfix lists it in "
                "mydestination and rejects virtual mail there ('User unknown in local recipient "
                f"table'); {fix}",
            )


def _check_sa_learn(report: Report, view: _View) -> None:
    """Cron schedules must parse; folders are names inside a maildir; scopes must be accounts."""
    for i, job in view.sa_learn:
        schedule = job.get("schedule")
        if isinstance(schedule, str) and (problem := check_schedule(schedule)):
            report.error(("sa_learn", i, "schedule"), problem)
        folder = job.get("folder")
        if isinstance(folder, str) and (problem := check_folder(folder)):
            report.error(("sa_learn", i, "folder"), problem)
        for j, address in _strings(job.get("accounts")):
            if view.address_problem(address) is None and address not in view.accounts:
                what = "an alias" if address in view.aliases else "not an account here"
                report.error(
                    ("sa_learn", i, "accounts", j),
                    f"'{address}' is {what}; sa-learn reads an account's maildir"
                    + (_suggest(address, set(view.accounts)) or ""),
                )


def check_schedule(schedule: str) -> str | None:
    """Five cron fields (minute hour day month weekday) or a macro such as @daily."""
    text = schedule.strip()
    if any(c in schedule for c in "\n\r\0"):
        return "schedule must be one line"
    if text.startswith("@"):
        if text in CRON_MACROS:
            return None
        return f"unknown cron macro '{text}'; use one of {', '.join(sorted(CRON_MACROS))}"
    fields = text.split()
    if len(fields) != 5:
        return (
            f"schedule '{text}' has {len(fields)} fields; cron needs five "
            '(minute hour day-of-month month day-of-week), like "0 2 * * *"'
        )
    from croniter import croniter  # 15 ms of imports, only for files with sa_learn jobs

    for i, (name, low, high, names) in enumerate(_CRON_FIELDS):
        value = fields[i]
        probe = ["*"] * 5
        probe[i] = value
        if not _cron_field_ok(value.lower(), low, high, names) or not croniter.is_valid(
            " ".join(probe)
        ):
            also = f", or names like {names[0]} or {names[1]}-{names[3]}" if names else ""
            return (
                f"schedule '{text}' is not a valid cron expression: the {name} field "
                f"'{value}' is wrong; {name} takes {low}-{high}{also}, '*', lists (1,15), "
                "ranges (1-5) and steps (*/10)"
            )
    if not croniter.is_valid(text):
        return f"schedule '{text}' is not a valid cron expression (minute hour day month weekday)"
    return None


def _cron_field_ok(value: str, low: int, high: int, names: tuple[str, ...]) -> bool:
    """One cron field as Debian cron reads it: every list element in range, names only where
    the field takes them, steps of 1 or more."""
    for element in value.split(","):
        match = _CRON_ELEMENT.match(element)
        if match is None or (match.group(3) and int(match.group(3)[1:]) < 1):
            return False
        if match.group(1) == "*":
            continue
        for part in match.group(1).split("-"):
            if part.isdigit():
                if not low <= int(part) <= high:
                    return False
            elif part not in names:
                return False
    return True


def check_folder(folder: str) -> str | None:
    """A Maildir++ folder name (`.Junk`, `cur`, `.Archive*`), never a path."""
    if not folder:  # the cron line would name the whole maildir: every folder learned as spam
        return "folder is empty; give a folder name inside the maildir, like .Junk or cur"
    if "/" in folder or "\\" in folder:
        return f"folder '{folder}' is a path; give a folder name inside the maildir, like .Junk"
    if folder in (".", "..") or ".." in folder:
        return f"folder '{folder}' would leave the maildir; use a name like .Junk or cur"
    bad = sorted({c for c in folder if not (c.isascii() and (c.isalnum() or c in "._*-"))})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        return f"folder '{folder}' has {shown}; use letters, digits, '.', '_', '-' and '*'"
    return None


def _check_unused_domains(report: Report, view: _View) -> None:
    """A declared domain with nothing hosted is not accepted by DMS (vhost is derived)."""
    used = {domain_of(a) for a in view.accounts} | {domain_of(a) for a in view.aliases}
    used |= set(view.catch_all) | {domain_of(a) for _, a in view.devnull}
    for i, domain in view.domains:
        if domain not in used and check_domain(domain) is None:
            report.warning(
                ("domains", i),
                f"domain '{domain}' has no account, alias, catch-all or devnull address; DMS "
                "accepts mail only for domains that have one",
            )


def _suggest(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' hint; compares within the same domain so big files stay fast, then
    looks for the same name in another domain (`jane@example.com` for `jane@example.org`)."""
    if "@" in word:
        choices = list(choices)
        domain = "@" + domain_of(word)
        local = word[: -len(domain)]
        locals_ = {c[: -len(domain)]: c for c in choices if c.endswith(domain)}
        if len(locals_) > 5000 or len(local) < 2:
            return None
        close = difflib.get_close_matches(local, list(locals_), n=1, cutoff=0.75)
        if not close:
            elsewhere = sorted(c for c in choices if c.startswith(local + "@"))
            return f" (did you mean '{elsewhere[0]}'?)" if elsewhere else None
        return f" (did you mean '{locals_[close[0]]}'?)"
    candidates = list(choices)
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.85)
    return f" (did you mean '{close[0]}'?)" if close else None

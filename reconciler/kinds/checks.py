"""What every kind's mail rules read and report through, without knowing how a file is loaded.

A kind's `check(report, view)` reads the document through `DocView` (the well-typed parts; a part
with the wrong type was already reported by the schema and is skipped) and reports through a
`Reporter` with the document path, so the message lands on the right line. `load.rules.Report`
is the reporter a loaded file has.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from reconciler.addresses import check_address, check_password_hash, domain_of

Path = tuple[str | int, ...]  # a place in the document: ('accounts', 'a@b.c', 'quota')


class Reporter(Protocol):
    def error(self, path: Path, message: str, *, key: bool = False) -> None: ...

    def warning(self, path: Path, message: str, *, key: bool = False) -> None: ...


@dataclass
class DocView:
    """The well-typed parts of the document, for rules to read without type checks everywhere.

    `doc` is the whole document as loaded (each kind reads its own section from it); the other
    fields are the parts that several kinds cross-check (an alias target is an account, ...)."""

    doc: dict[str, Any]
    domains: list[tuple[int, str]]
    accounts: dict[str, Any]
    aliases: dict[str, list[str]]
    catch_all: dict[str, list[str]]
    devnull: list[tuple[int, str]]
    quarantine: dict[str, Any]
    sa_learn: list[tuple[int, dict[str, Any]]]
    hostname: str | None
    declared: set[str]  # the domains listed in `domains`

    # `check_address`, once per distinct address: most addresses appear several times (as a key,
    # as targets, in three rules), which made it a quarter of `check` on big files. The cache
    # outlives one check, so the sidecar's next load (one entry edited) checks only what is new;
    # it is bounded, so a long-running sidecar does not grow with every address ever seen.
    address_problem = staticmethod(lru_cache(maxsize=1 << 17)(check_address))
    # The same for password hashes, which the sidecar holds anyway as its last good state.
    hash_problem = staticmethod(lru_cache(maxsize=1 << 16)(check_password_hash))

    @classmethod
    def of(cls, doc: dict[str, Any]) -> DocView:
        def targets(value: Any) -> list[str]:
            if isinstance(value, str):
                return [value]
            if not isinstance(value, list):
                return []
            return [v for v in value if isinstance(v, str)]

        hostname = doc.get("hostname")
        quarantine = doc.get("quarantine")
        domains = strings(doc.get("domains"))
        return cls(
            doc=doc,
            domains=domains,
            accounts=section(doc, "accounts"),
            aliases={k: targets(v) for k, v in section(doc, "aliases").items()},
            catch_all={k: targets(v) for k, v in section(doc, "catch_all").items()},
            devnull=strings(doc.get("devnull")),
            quarantine=quarantine if isinstance(quarantine, dict) else {},
            sa_learn=[
                (i, job) for i, job in enumerate(doc.get("sa_learn") or []) if isinstance(job, dict)
            ]
            if isinstance(doc.get("sa_learn"), list)
            else [],
            hostname=hostname if isinstance(hostname, str) else None,
            declared={d for _, d in domains},
        )

    def known_addresses(self) -> set[str]:
        """Every address that receives mail here: accounts, aliases, devnull addresses."""
        return set(self.accounts) | set(self.aliases) | {a for _, a in self.devnull}


def section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """A top-level mapping of the document; empty when absent or not a mapping."""
    value = doc.get(name)
    return value if isinstance(value, dict) else {}


def strings(value: Any) -> list[tuple[int, str]]:
    """(index, item) of the strings in a list; empty when `value` is no list."""
    if not isinstance(value, list):
        return []
    return [(i, v) for i, v in enumerate(value) if isinstance(v, str)]


def report_undeclared(
    report: Reporter, view: DocView, path: Path, domain: str, what: str, *, key: bool
) -> None:
    """`what` is in `domain`, which `domains` does not list: say so, with a spelling hint."""
    hint = suggest(domain, view.declared)
    report.error(
        path,
        f"{what} is in domain '{domain}', which is not listed in `domains`; "
        f"add it there{hint or ' or fix the spelling'}",
        key=key,
    )


def not_declared(domain: str, what: str) -> str:
    """The message for `what` in (or, for `the ...` names, being) an undeclared domain."""
    if what.startswith("the "):
        return f"{what} '{domain}' is not listed in `domains`; add it there or fix the spelling"
    return (
        f"{what} is in domain '{domain}', which is not listed in `domains`; add it there or "
        "fix the spelling"
    )


def failing_targets(doc: dict[str, Any], fails: Callable[[str], Any]) -> Iterator[tuple[Path, str]]:
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


def suggest(word: str, choices: Iterable[str]) -> str | None:
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


def find_cycles(
    nodes: Iterable[str], successors: Callable[[str], Iterable[str]]
) -> Iterator[list[str]]:
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

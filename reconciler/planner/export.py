"""Adopt an existing config volume: Observed -> a DesiredState whose plan against it is empty.

Pure, like the planner. Each kind adopts its own entries (`export` in reconciler/kinds/, in
registry order); whatever mailserver.yaml cannot express, or what would change how mail is
routed if adopted, is left out and stays unmanaged (kept untouched), with a warning saying why.
Here the domains and hostname are settled, and `checked_yaml` loads the exported text as the
next plan will, leaving out (with a warning) any entry the validator refuses.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from reconciler.errors import Diagnostic, InvalidDesiredState, ReconcilerError, Severity, printable
from reconciler.formats import access, opendkim, regexp, relaymap
from reconciler.formats import accounts as accounts_file
from reconciler.formats import masters as masters_file
from reconciler.formats import virtual as virtual_file
from reconciler.gcpause import paused
from reconciler.kinds import KINDS
from reconciler.kinds.base import ExportContext
from reconciler.load.desired import Loaded, load_desired_bytes, schema
from reconciler.load.yamlload import format_path, plain_ascii
from reconciler.model import (
    DesiredState,
    Restrict,
    to_document,
)
from reconciler.observed import Observed

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
    """A DesiredState that adopts `observed`, each kind in registry order; the warnings say
    what stays unmanaged and why."""
    ctx = ExportContext(observed, observed.parse_problems())
    for kind in KINDS:
        kind.export(ctx)
    domains = sorted(ctx.domains())
    if hostname and hostname in domains:
        ctx.warnings.append(
            f"domain {hostname} equals the hostname; hostname left out of the export"
        )
        hostname = None
    state = DesiredState(version=1, hostname=hostname, domains=tuple(domains), **ctx.fields)
    return Exported(state, tuple(ctx.warnings))


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

"""Sender allow and deny lists: `rspamd.senders` in mailserver.yaml, Rspamd multimap rules in
`rspamd/override.d/multimap.conf` and their map files `rspamd/override.d/dms-sender-*.map`.

Four rules at most, one per list and per kind of entry (a full address is matched with the
multimap filter `email:addr`, an `@domain` with `email:domain`), each a prefilter on the SMTP
envelope sender: an allowed sender's mail is accepted before any scoring (`action = "accept"`,
symbol DMS_SENDER_ALLOW or DMS_SENDER_ALLOW_DOMAIN), a denied sender's is rejected at SMTP time
(`action = "reject"`). The rules are keyed by their symbol in multimap.conf; other rules there
are the user's and are kept. The map files are ours whole; they lie in override.d/ because DMS
copies that folder to /etc/rspamd/override.d/, where the rules name them.
"""

from __future__ import annotations

from dataclasses import replace

from reconciler.addresses import check_address, check_domain
from reconciler.formats import rspamd_map, rspamd_ucl
from reconciler.formats._lines import ParsedFile
from reconciler.kinds import rspamd_files
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext, Want
from reconciler.kinds.checks import DocView, Reporter, section, strings
from reconciler.model import Rspamd
from reconciler.plan import Kind

NAME = "rspamd_senders"
FILE = rspamd_ucl.file_name("multimap.conf")
ETC = "/etc/rspamd/override.d"  # where DMS copies the volume's override.d/
# (list, entries are domains) -> (symbol, map file, filter, action)
RULES = {
    ("allow", False): ("DMS_SENDER_ALLOW", "dms-sender-allow.map", "email:addr", "accept"),
    ("allow", True): (
        "DMS_SENDER_ALLOW_DOMAIN",
        "dms-sender-allow-domain.map",
        "email:domain",
        "accept",
    ),
    ("deny", False): ("DMS_SENDER_DENY", "dms-sender-deny.map", "email:addr", "reject"),
    ("deny", True): (
        "DMS_SENDER_DENY_DOMAIN",
        "dms-sender-deny-domain.map",
        "email:domain",
        "reject",
    ),
}
SYMBOLS = {symbol for symbol, *_ in RULES.values()}
WORDS = {"allow": "allowed", "deny": "denied"}


def rule(symbol: str, map_file: str, filter_: str, action: str, listed: str) -> rspamd_ucl.Item:
    return rspamd_ucl.block(
        symbol,
        (
            ("type", "from"),
            ("extract_from", "smtp"),
            ("filter", filter_),
            ("map", f"{ETC}/{map_file}"),
            ("prefilter", True),
            ("action", action),
            ("description", f"sender {listed} by dms-reconciler (rspamd.senders)"),
        ),
    )


def wanted(r: Rspamd) -> dict[tuple[str, bool], list[str]]:
    """(list, domains?) -> the map file's entries (a domain without its @)."""
    out: dict[tuple[str, bool], list[str]] = {}
    for listed, entries in (("allow", r.allow), ("deny", r.deny)):
        for entry in entries:
            is_domain = entry.startswith("@")
            out.setdefault((listed, is_domain), []).append(entry[1:] if is_domain else entry)
    return out


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    lists = wanted(ctx.desired.rspamd)
    want_rules = {}
    for key in lists:
        symbol, map_file, filter_, action = RULES[key]
        want_rules[symbol] = rule(
            symbol, map_file, filter_, action, "allowed" if key[0] == "allow" else "denied"
        )
    written = []
    for key, (_symbol, map_file, _filter, _action) in RULES.items():
        name = rspamd_ucl.file_name(map_file)
        entries = lists.get(key, [])
        fp = _plan_map(ctx, out, name, entries)
        if fp is not None and fp.write:
            written.append(name)
    # The map files first: a rule never names a map file that is not there yet (write order).
    fp = rspamd_files.plan_override(
        ctx,
        out,
        FILE,
        want_rules,
        Kind.RSPAMD_SENDER,
        show=lambda item: {"value": _describe(item.key)},
    )
    if (fp is not None and fp.write) or written:
        out.notes.append(
            f"{FILE} and its map files: {rspamd_files.RELOAD}; from the next message on mail "
            "from an allowed sender (SMTP envelope) is accepted before scoring, with the symbol "
            "DMS_SENDER_ALLOW(_DOMAIN), and mail from a denied sender is rejected at SMTP time"
        )
    return out


def _describe(symbol: str) -> str:
    for (listed, is_domain), (name, map_file, _f, action) in RULES.items():
        if name == symbol:
            what = "domains" if is_domain else "addresses"
            return f"multimap rule: {action} {WORDS[listed]} sender {what} in {map_file}"
    return "multimap rule (not ours)"


def _plan_map(ctx: PlanContext, out: KindPlan, name: str, entries: list[str]):  # type: ignore[no-untyped-def]
    parsed = ctx.observed.rspamd_files.get(name) or ParsedFile({})
    exists = name in ctx.observed.snapshots and ctx.observed.snapshots[name].exists
    if not entries and not exists:
        return None
    diff = ctx.diff(
        name,
        {e: Want(Kind.RSPAMD_SENDER, rspamd_map.MapLine(e)) for e in entries},
        parsed,
        same=lambda have, want: bool(have == want),
        show=lambda e: {"value": "allowed" if "-allow" in name else "denied"},
        kind_of=lambda key, e: Kind.RSPAMD_SENDER,
    )
    # the whole file is ours: what we did not declare goes (it is named for dms-reconciler)
    final = list(diff.final)
    for u in diff.unmanaged:
        diff.changes.append(
            rspamd_files.deleted(
                name, Kind.RSPAMD_SENDER, u.key, "the map file is dms-reconciler's"
            )
        )
        final = [e for e in final if e.key != u.key]
    out.changes.extend(diff.changes)
    out.owned[name] = frozenset(diff.owned)
    content = (
        rspamd_map.render(final, comments=parsed.comments, filename=name)
        if diff.changes or parsed.invalid
        else None
    )
    fp = rspamd_files.file_plan(ctx, name, content)
    out.files.append(fp)
    return fp


def check(report: Reporter, view: DocView) -> None:
    """Entries are addresses or @domain, never both lists, never a `#` (a map comment)."""
    senders = section(section(view.doc, "rspamd"), "senders")
    seen: dict[str, str] = {}
    for listed in ("allow", "deny"):
        for j, entry in strings(senders.get(listed)):
            path = ("rspamd", "senders", listed, j)
            if problem := sender_problem(entry):
                report.error(path, problem)
                continue
            if entry in seen and seen[entry] != listed:
                report.error(path, f"'{entry}' is in both allow and deny; keep it in one")
            seen.setdefault(entry, listed)


def sender_problem(entry: str) -> str | None:
    if "#" in entry:
        return (
            f"'{entry}' holds '#', which starts a comment in Rspamd's map files: the entry "
            "would be cut there"
        )
    if any(c.isspace() for c in entry):
        return f"'{entry}' holds a blank; give one address or @domain"
    if entry.startswith("@"):
        problem = check_domain(entry[1:])
        return f"'{entry}': {problem}" if problem else None
    if "@" not in entry:
        return f"'{entry}' is neither an address nor an @domain (write @{entry} for a domain)"
    return check_address(entry)


def export(ctx: ExportContext) -> None:
    """Our rules' map files back into the lists; other rules stay unmanaged."""
    lists: dict[str, list[str]] = {"allow": [], "deny": []}
    parsed = ctx.observed.rspamd_files.get(FILE)
    if parsed is not None:
        ours = {RULES[k][0]: (k, RULES[k]) for k in RULES}
        for key, item in parsed.entries.items():
            found = ours.get(key)
            if found is None:
                ctx.warnings.append(f"{FILE}: rule '{key}' left unmanaged: not one of ours")
                continue
            (listed, is_domain), (symbol, map_file, filter_, action) = found
            if item != rule(
                symbol, map_file, filter_, action, "allowed" if listed == "allow" else "denied"
            ):
                ctx.warnings.append(f"{FILE}: rule '{key}' left unmanaged: changed by hand")
                continue
            entries = ctx.observed.rspamd_files.get(rspamd_ucl.file_name(map_file))
            for value in entries.entries if entries is not None else {}:
                lists[listed].append(f"@{value}" if is_domain else value)
    ctx.fields["rspamd"] = replace(
        ctx.fields.get("rspamd") or Rspamd(),
        allow=tuple(sorted(lists["allow"])),
        deny=tuple(sorted(lists["deny"])),
    )

"""The Amavis quarantine mailbox: `quarantine:` in mailserver.yaml, a marked block in `amavis.cf`.

Only the lines between the dms-reconciler markers are ours (`$spam_quarantine_to = "..."` per
kind); the rest of the file is the user's and is kept byte for byte. A block with a BEGIN marker
and no END marker is left alone until fixed by hand. Amavis reads the file at start only.
"""

from __future__ import annotations

from reconciler.addresses import domain_of
from reconciler.formats import amavis
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext, explain_fields
from reconciler.kinds.checks import DocView, Reporter, report_undeclared, suggest
from reconciler.model import QUARANTINE_KINDS, Quarantine
from reconciler.plan import Action, Change, FilePlan, Kind

NAME = "quarantine"
FILE = amavis.FILENAME
BLOCK_KEY = "block"  # the key of an amavis.cf change about the marked block as a whole
BLOCK_REPAIR = "lines inside the dms-reconciler block that are not quarantine settings are removed"


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    desired, observed = ctx.desired, ctx.observed
    snap = observed.snapshots[FILE]
    current = observed.amavis
    have = (current.block if current else None) or {}
    want = (
        {k: desired.quarantine.mailbox for k in desired.quarantine.kinds}
        if desired.quarantine
        else {}
    )
    changes: list[Change] = []
    for kind in amavis.KINDS:
        key = f"{kind}_quarantine_to"
        before = {"mailbox": have[kind]} if kind in have else None
        after = {"mailbox": want[kind]} if kind in want else None
        if before == after:
            continue
        if before is None:
            changes.append(Change(FILE, Kind.QUARANTINE, key, Action.CREATE, None, after))
        elif after is None:
            changes.append(
                Change(
                    FILE,
                    Kind.QUARANTINE,
                    key,
                    Action.DELETE,
                    before,
                    None,
                    reason="quarantine kind removed from mailserver.yaml",
                )
            )
        else:
            changes.append(
                Change(
                    FILE,
                    Kind.QUARANTINE,
                    key,
                    Action.UPDATE,
                    before,
                    after,
                    details=explain_fields(key, before, after),
                )
            )
    if current is not None and current.broken_markers:
        out.files.append(FilePlan(FILE, False, snap.exists, snap.sha256))
        out.warnings.append(
            f"{FILE} has the dms-reconciler BEGIN marker but no END marker; "
            "it is left untouched until the markers are fixed by hand"
        )
        return out
    # Lines inside our block that we do not understand are ours to repair; that is a change the
    # plan shows (else it would say "No changes" and still rewrite the file).
    if current is not None and current.unreadable_block:
        changes.append(
            Change(
                FILE,
                Kind.QUARANTINE,
                BLOCK_KEY,
                Action.UPDATE,
                {"lines": "quarantine settings and other lines"},
                {"lines": "quarantine settings only"},
                details=(BLOCK_REPAIR,),
            )
        )
    write = bool(changes)
    content = amavis.with_block(current, want or None) if write else None
    out.changes = changes
    out.files.append(FilePlan(FILE, write, snap.exists, snap.sha256, content))
    if write:
        out.notes.append(
            "amavis.cf is read when the DMS container starts: the sidecar installs it and "
            "restarts Amavis; by hand run `docker compose up -d --force-recreate`"
        )
        if desired.quarantine:
            out.notes.append(quarantine_note(desired.quarantine.mailbox))
    return out


def quarantine_note(mailbox: str) -> str:
    """What `quarantine:` gives with DMS's defaults, seen on DMS v15.1.0 (docs/real-dms.md)."""
    return (
        "with DMS's defaults (SPAMASSASSIN_SPAM_TO_INBOX=1, MOVE_SPAM_TO_JUNK=1) Amavis delivers "
        f"spam tagged: the recipient still gets it in .Junk, and {mailbox} gets a copy, which "
        "DMS's sieve files into its .Junk too (docs/real-dms.md)"
    )


def check(report: Reporter, view: DocView) -> None:
    """The quarantine mailbox is an account or alias of a declared domain here."""
    mailbox = view.quarantine.get("mailbox")
    if not isinstance(mailbox, str):
        return
    if problem := view.address_problem(mailbox):
        report.error(("quarantine", "mailbox"), problem)
        return
    if domain_of(mailbox) not in view.declared:
        report_undeclared(
            report, view, ("quarantine", "mailbox"), domain_of(mailbox), f"'{mailbox}'", key=False
        )
    if mailbox not in view.accounts and mailbox not in view.aliases:
        report.error(
            ("quarantine", "mailbox"),
            f"quarantine mailbox '{mailbox}' is not an account or alias here"
            + (suggest(mailbox, set(view.accounts) | set(view.aliases)) or ""),
        )


def export(ctx: ExportContext) -> None:
    """The marked block, when it sends every kind to one mailbox that is hosted here."""
    ctx.fields["quarantine"] = None
    block = ctx.observed.amavis.block if ctx.observed.amavis else None
    if not block or len(set(block.values())) != 1:
        return
    mailbox = next(iter(block.values()))
    if mailbox in ctx.accounts() | ctx.aliases():
        ctx.fields["quarantine"] = Quarantine(
            mailbox, tuple(k for k in QUARANTINE_KINDS if k in block)
        )

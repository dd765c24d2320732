"""SpamAssassin Bayes training: `sa_learn:` jobs in mailserver.yaml, lines of the sa-learn cron
file (`--cron-file`, a single-file bind mount next to the config volume, rewritten in place).

Once a job is declared the file is owned whole; before that its lines are unmanaged and kept.
Jobs learn into the Bayes database Amavis reads; lines of the old form (the DMS FAQ's --dbpath)
are upgraded in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.addresses import domain_of, local_of
from reconciler.formats import cron
from reconciler.kinds.base import KindPlan, PlanContext
from reconciler.model import DesiredState
from reconciler.observed import CRON
from reconciler.plan import Action, Change, FilePlan, Kind, Unmanaged

NAME = "sa_learn"
UPGRADE_REASON = (
    f"learns into {cron.DBPATH}, the Bayes database Amavis reads, "
    "skips a folder that does not exist yet and leaves the files to amavis"
)


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    desired, observed = ctx.desired, ctx.observed
    snap = observed.snapshots[CRON]
    have = observed.cron.entries if observed.cron else {}
    comments = observed.cron.comments if observed.cron else ()
    want = {line.key: line for line in cron_lines(desired)}
    if not want and not observed.ownership.owns_cron:
        for key in have:
            if ctx.prune:
                out.changes.append(
                    Change(
                        CRON,
                        Kind.SA_LEARN,
                        key,
                        Action.DELETE,
                        {"line": key},
                        None,
                        reason="not in mailserver.yaml and prune is on",
                    )
                )
            else:
                out.unmanaged.append(Unmanaged(CRON, Kind.SA_LEARN, key))
        write = bool(out.changes)
        emptied = ((), comments) if write else None
        out.files.append(
            FilePlan(CRON, snap.path, write, snap.exists, snap.sha256, emptied, in_place=True)
        )
        return out
    # Our own lines in the old form (the DMS FAQ's --dbpath) are the same jobs: shown as updates.
    upgraded = _old_form_lines(have, want)
    for key in want:
        if key in upgraded:
            out.changes.append(
                Change(
                    CRON,
                    Kind.SA_LEARN,
                    key,
                    Action.UPDATE,
                    {"line": upgraded[key]},
                    {"line": key},
                    reason=UPGRADE_REASON,
                )
            )
        elif key not in have:
            out.changes.append(Change(CRON, Kind.SA_LEARN, key, Action.CREATE, None, {"line": key}))
    reason = (
        "the sa-learn cron file is owned whole by `sa_learn` in mailserver.yaml"
        if want
        else "sa_learn removed from mailserver.yaml"
    )
    replaced = set(upgraded.values())
    for key in have:
        if key not in want and key not in replaced:
            out.changes.append(
                Change(CRON, Kind.SA_LEARN, key, Action.DELETE, {"line": key}, None, reason=reason)
            )
    write = bool(out.changes)
    content = (tuple(want.values()), comments) if write else None
    out.files.append(
        FilePlan(CRON, snap.path, write, snap.exists, snap.sha256, content, in_place=True)
    )
    out.owns_cron = bool(want)
    if write and desired.sa_learn:
        out.notes.append(
            f"sa-learn jobs learn into {cron.DBPATH}, the Bayes database Amavis reads (DMS "
            "links it to /var/mail-state/lib-amavis when /var/mail-state is mounted), skip a "
            "folder that does not exist yet and chown the database back to amavis"
        )
    return out


def cron_lines(desired: DesiredState) -> list[cron.CronLine]:
    """The cron lines for the declared sa_learn jobs, in job order, without duplicates."""
    lines: dict[str, cron.CronLine] = {}
    for job in desired.sa_learn:
        if job.accounts is not None:
            scopes = [(domain_of(a), local_of(a)) for a in job.accounts]
        elif job.domains is not None:
            scopes = [(d, "*") for d in job.domains]
        else:
            scopes = [("*", "*")]
        for domain, user in scopes:
            text = cron.job_line(job.schedule, job.learn.value, domain, user, job.folder)
            lines.setdefault(text, cron.CronLine(text))
    return list(lines.values())


def _old_form_lines(have: Mapping[str, Any], want: Mapping[str, Any]) -> dict[str, str]:
    """{wanted line: the old-form line on the volume that does the same job}."""
    wanted_jobs = {}
    for key in want:
        if key not in have:
            line = cron.read_job_line(key)
            if line is not None:
                wanted_jobs[line.job] = key
    out: dict[str, str] = {}
    for key in have:
        line = cron.read_job_line(key)
        if line is not None and line.old_form and line.job in wanted_jobs:
            out.setdefault(wanted_jobs[line.job], key)
    return out

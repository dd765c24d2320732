"""SpamAssassin Bayes training: `sa_learn:` jobs in mailserver.yaml, lines of the sa-learn cron
file (`--cron-file`, a single-file bind mount next to the config volume, rewritten in place).

Once a job is declared the file is owned whole; before that its lines are unmanaged and kept.
Jobs learn into the Bayes database Amavis reads; lines of the old form (the DMS FAQ's --dbpath)
are upgraded in place.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from reconciler.addresses import check_domain, domain_of
from reconciler.formats import cron
from reconciler.formats.cron import check_folder, check_schedule
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext, learn_lines
from reconciler.kinds.checks import DocView, Reporter, report_undeclared, strings, suggest
from reconciler.model import DesiredState, Learn, SaLearnJob
from reconciler.observed import CRON, Observed
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
    # lines other kinds want in this file (rspamd.learn's rspamc jobs), with their kind
    kinds = {line.key: kind for r in ctx.results.values() for kind, line in r.cron}
    for result in ctx.results.values():
        want.update((line.key, line) for _kind, line in result.cron)

    def kind_of(key: str) -> Kind:
        if key in kinds or cron.read_rspamc_line(key) is not None:
            return kinds.get(key, Kind.RSPAMD_LEARN)
        return Kind.SA_LEARN

    if not want and not observed.ownership.owns_cron:
        for key in have:
            if ctx.prune:
                out.changes.append(
                    Change(
                        CRON,
                        kind_of(key),
                        key,
                        Action.DELETE,
                        {"line": key},
                        None,
                        reason="not in mailserver.yaml and prune is on",
                    )
                )
            else:
                out.unmanaged.append(Unmanaged(CRON, kind_of(key), key))
        write = bool(out.changes)
        emptied = ((), comments) if write else None
        out.files.append(FilePlan(CRON, write, snap.exists, snap.sha256, emptied, in_place=True))
        return out
    # Our own lines in the old form (the DMS FAQ's --dbpath) are the same jobs: shown as updates.
    upgraded = _old_form_lines(have, want)
    for key in want:
        if key in upgraded:
            out.changes.append(
                Change(
                    CRON,
                    kind_of(key),
                    key,
                    Action.UPDATE,
                    {"line": upgraded[key]},
                    {"line": key},
                    reason=UPGRADE_REASON,
                )
            )
        elif key not in have:
            out.changes.append(Change(CRON, kind_of(key), key, Action.CREATE, None, {"line": key}))
    reason = (
        "the sa-learn cron file is owned whole by `sa_learn` in mailserver.yaml"
        if want
        else "sa_learn removed from mailserver.yaml"
    )
    replaced = set(upgraded.values())
    for key in have:
        if key not in want and key not in replaced:
            out.changes.append(
                Change(CRON, kind_of(key), key, Action.DELETE, {"line": key}, None, reason=reason)
            )
    write = bool(out.changes)
    content = (tuple(want.values()), comments) if write else None
    out.files.append(FilePlan(CRON, write, snap.exists, snap.sha256, content, in_place=True))
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
    return learn_lines(desired.sa_learn, cron.job_line)


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


# --- mail rules ---------------------------------------------------------------------------------


def check(report: Reporter, view: DocView) -> None:
    """Scopes are accounts and declared domains; cron schedules parse; folders are names inside
    a maildir."""
    for i, job in view.sa_learn:
        for j, address in strings(job.get("accounts")):
            path = ("sa_learn", i, "accounts", j)
            if problem := view.address_problem(address):
                report.error(path, problem)
                continue
            if domain_of(address) not in view.declared:
                report_undeclared(report, view, path, domain_of(address), f"'{address}'", key=False)
            if address not in view.accounts:
                what = "an alias" if address in view.aliases else "not an account here"
                report.error(
                    path,
                    f"'{address}' is {what}; sa-learn reads an account's maildir"
                    + (suggest(address, set(view.accounts)) or ""),
                )
        for j, domain in strings(job.get("domains")):
            path = ("sa_learn", i, "domains", j)
            if problem := check_domain(domain):
                report.error(path, problem)
            elif domain not in view.declared:
                report_undeclared(report, view, path, domain, "this sa_learn job", key=False)
        schedule = job.get("schedule")
        if isinstance(schedule, str) and (problem := check_schedule(schedule)):
            report.error(("sa_learn", i, "schedule"), problem)
        folder = job.get("folder")
        if isinstance(folder, str) and (problem := check_folder(folder)):
            report.error(("sa_learn", i, "folder"), problem)


# --- export -------------------------------------------------------------------------------------


def export(ctx: ExportContext) -> None:
    """Read our own cron lines back into jobs; any other line leaves the file unmanaged."""
    ctx.fields["sa_learn"] = _adopt(ctx.observed, ctx.accounts(), ctx.domains(), ctx.warnings)


def _adopt(
    observed: Observed, accounts: set[str], domains: set[str], warnings: list[str]
) -> tuple[SaLearnJob, ...]:
    if observed.cron is None or not observed.cron.entries:
        return ()
    groups: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    jobs_on_volume = set()
    old_form = False
    ours = [t for t in observed.cron.entries if cron.read_rspamc_line(t) is None]  # not rspamd's
    for text in ours:
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
    ) != len(ours):
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

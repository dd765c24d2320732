"""Rspamd Bayes training: `rspamd.learn` jobs in mailserver.yaml, `rspamc learn_spam|learn_ham`
lines in the cron file (`--cron-file`, bind-mounted to /etc/cron.d/sa-learn), next to any
sa_learn lines.

The lines are planned here and written by the sa_learn kind, which owns the cron file: this
kind hands them over in `KindPlan.cron` (it runs before sa_learn). Like sa_learn's, each line
does nothing, silently and successfully, while its folder does not exist (a new mailbox has no
.Junk yet). Rspamd's Bayes lives in Redis (DMS's rspamd-redis), learned through the controller
on 127.0.0.1:11334, which trusts local clients without the web UI password.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from reconciler.addresses import check_domain, domain_of
from reconciler.formats import cron
from reconciler.formats.cron import check_folder, check_schedule
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext, learn_lines
from reconciler.kinds.checks import DocView, Reporter, report_undeclared, section, strings, suggest
from reconciler.model import DesiredState, Learn, Rspamd, SaLearnJob
from reconciler.plan import Kind

NAME = "rspamd_learn"


def lines(desired: DesiredState) -> list[cron.CronLine]:
    return learn_lines(desired.rspamd.learn, cron.rspamc_line)


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    out.cron = [(Kind.RSPAMD_LEARN, line) for line in lines(ctx.desired)]
    have = ctx.observed.cron.entries if ctx.observed.cron else {}
    if any(line.key not in have for _kind, line in out.cron):
        out.notes.append(
            "rspamd.learn: cron runs `rspamc learn_spam|learn_ham` on the folders; Rspamd's "
            "Bayes (in Redis) counts each learned message (`rspamc stat`: Messages learned); "
            "a folder that does not exist yet is skipped silently"
        )
    return out


def check(report: Reporter, view: DocView) -> None:
    jobs = section(view.doc, "rspamd").get("learn")
    for i, job in enumerate(jobs if isinstance(jobs, list) else []):
        if not isinstance(job, dict):
            continue
        base = ("rspamd", "learn", i)
        for j, address in strings(job.get("accounts")):
            path = (*base, "accounts", j)
            if problem := view.address_problem(address):
                report.error(path, problem)
            elif domain_of(address) not in view.declared:
                report_undeclared(report, view, path, domain_of(address), f"'{address}'", key=False)
            elif address not in view.accounts:
                report.error(
                    path,
                    f"'{address}' is not an account here; rspamc reads an account's maildir"
                    + (suggest(address, set(view.accounts)) or ""),
                )
        for j, domain in strings(job.get("domains")):
            path = (*base, "domains", j)
            if problem := check_domain(domain):
                report.error(path, problem)
            elif domain not in view.declared:
                report_undeclared(report, view, path, domain, "this learn job", key=False)
        schedule = job.get("schedule")
        if isinstance(schedule, str) and (problem := check_schedule(schedule)):
            report.error((*base, "schedule"), problem)
        folder = job.get("folder")
        if isinstance(folder, str) and (problem := check_folder(folder)):
            report.error((*base, "folder"), problem)


def export(ctx: ExportContext) -> None:
    """Our rspamc lines back into jobs (grouped as sa_learn's are)."""
    groups: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    entries = ctx.observed.cron.entries if ctx.observed.cron else {}
    for text in entries:
        line = cron.read_rspamc_line(text)
        if line is None:
            continue
        if line.domain == "*" and line.user == "*":
            scope, item = "all", ""
        elif line.user == "*":
            scope, item = "domains", line.domain
        else:
            scope, item = "accounts", f"{line.user}@{line.domain}"
        groups[(line.schedule, line.learn, line.folder, scope)].append(item)
    jobs = tuple(
        SaLearnJob(
            schedule=schedule,
            learn=Learn(learn),
            folder=folder,
            accounts=tuple(sorted(items)) if scope == "accounts" else None,
            domains=tuple(sorted(items)) if scope == "domains" else None,
        )
        for (schedule, learn, folder, scope), items in groups.items()
    )
    ctx.fields["rspamd"] = replace(ctx.fields.get("rspamd") or Rspamd(), learn=jobs)

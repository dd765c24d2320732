"""One module per DMS object kind, and the ordered registry the pipeline loops over.

A kind module owns one kind of thing mailserver.yaml declares and the DMS files that hold it:
which entries it wants and how they compare, show and explain (`plan`), its mail rules
(`check`) and how an existing volume's entries become mailserver.yaml (`export`). The planner,
the rule checker (load/rules.py) and export (planner/export.py) loop over `KINDS`, in its order:
the order of the plan's changes, files, warnings and notes. A kind may read what the kinds
before it produced (from the context, by file name or field), never import another kind.
Adding a kind is one new module here and one line in `KINDS`. Beside the kinds: base.py (the
keyed diff, the plan and export contexts), checks.py (what rules read and report through) and
routing.py (the rules that span the accounts and the virtual routing).
"""

from __future__ import annotations

from typing import Protocol

from reconciler.kinds import (
    accounts,
    dkim,
    masters,
    quarantine,
    quotas,
    regexp,
    relay,
    restrict,
    rspamd_actions,
    rspamd_commands,
    rspamd_controller,
    rspamd_dkim,
    rspamd_learn,
    rspamd_modules,
    rspamd_options,
    rspamd_senders,
    sa_learn,
    virtual,
)
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext
from reconciler.kinds.checks import DocView, Reporter


class KindModule(Protocol):
    """What a kind module provides (a module satisfies it by its top-level names)."""

    NAME: str

    def plan(self, ctx: PlanContext) -> KindPlan: ...

    def check(self, report: Reporter, view: DocView) -> None: ...

    def export(self, ctx: ExportContext) -> None: ...


KINDS: tuple[KindModule, ...] = (
    accounts,
    virtual,  # reads the accounts that stay
    quotas,
    quarantine,
    rspamd_learn,  # hands its cron lines to sa_learn, which writes the cron file
    sa_learn,
    masters,
    regexp,
    restrict,
    relay,
    dkim,
    rspamd_dkim,  # `dkim:` with signer rspamd: rspamd/dkim/ and override.d/dkim_signing.conf
    rspamd_actions,
    rspamd_senders,
    rspamd_modules,
    rspamd_options,
    rspamd_controller,
    rspamd_commands,  # reads what the Rspamd kinds before it declare
)

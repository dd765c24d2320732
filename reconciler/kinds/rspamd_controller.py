"""The Rspamd web UI password: `rspamd.controller.password_hash` in mailserver.yaml, `password` in
`rspamd/override.d/worker-controller.inc` (what DMS's docs have `set-option-for-controller
password "<hash>"` write at start-up).

The hash is declared as `rspamadm pw` prints it (`$2$<salt>$<hash>`, Rspamd's catena PBKDF, or
`$1$` PBKDF2-BLAKE2b): Rspamd verifies it as given, and no secret reaches mailserver.yaml or the
volume. The plan never shows it.
"""

from __future__ import annotations

import re
from dataclasses import replace

from reconciler.formats import rspamd_ucl
from reconciler.kinds import rspamd_files
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext
from reconciler.kinds.checks import DocView, Reporter, section
from reconciler.model import Rspamd
from reconciler.plan import SENSITIVE, Kind

NAME = "rspamd_controller"
FILE = rspamd_ucl.file_name("worker-controller.inc")
PASSWORD = "password"
# `rspamadm pw` output: $<id>$<salt in Rspamd's base32>$<hash in base32>
HASH = re.compile(r"^\$[12]\$[13-9a-km-uw-z]{20,64}\$[13-9a-km-uw-z]{40,128}$")


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    declared = ctx.desired.rspamd.controller_hash
    want = {} if declared is None else {PASSWORD: rspamd_ucl.Item(PASSWORD, f'"{declared}"')}
    fp = rspamd_files.plan_override(
        ctx,
        out,
        FILE,
        want,
        Kind.RSPAMD_CONTROLLER,
        show=lambda item: {
            "value": SENSITIVE if item.key == PASSWORD else rspamd_files.show_item(item)["value"]
        },
    )
    if fp is not None and fp.write:
        out.notes.append(
            f"{FILE}: {rspamd_files.RELOAD}; the web UI and `rspamc` from other hosts ask for "
            "the new password after that reload"
        )
    return out


def check(report: Reporter, view: DocView) -> None:
    controller = section(section(view.doc, "rspamd"), "controller")
    value = controller.get("password_hash")
    if isinstance(value, str) and not HASH.match(value):
        report.error(
            ("rspamd", "controller", "password_hash"),
            "not a hash as `rspamadm pw` prints it ($2$...$...); run `docker exec -it "
            "<container> rspamadm pw` and paste its output",
        )


def export(ctx: ExportContext) -> None:
    parsed = ctx.observed.rspamd_files.get(FILE)
    found = None
    if parsed is not None:
        for key, item in parsed.entries.items():
            text = rspamd_ucl.unquote(item.value) if item.value is not None else None
            if key == PASSWORD and text is not None and HASH.match(text):
                found = text
            else:
                ctx.warnings.append(f"{FILE}: '{key}' left unmanaged: not a hashed password")
    ctx.fields["rspamd"] = replace(ctx.fields.get("rspamd") or Rspamd(), controller_hash=found)

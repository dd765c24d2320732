"""The Rspamd web UI password: `rspamd.controller` in mailserver.yaml, `password` in
`rspamd/override.d/worker-controller.inc` (what DMS's docs have `set-option-for-controller
password "<hash>"` write at start-up).

Either a hash declared as `rspamadm pw` prints it (`password_hash`: `$2$<salt>$<hash>`, Rspamd's
catena PBKDF, or `$1$` PBKDF2-BLAKE2b), or the password itself from `password_env` /
`password_file`, hashed here as `rspamadm pw --type pbkdf2` does (passwords/rspamd_pw.py): the
hash on the volume is kept while it verifies the secret (passwords.sources decides, KEPT or
NEW), so an unchanged secret never rewrites the file. Rspamd verifies the hash as given; no
secret reaches mailserver.yaml or the volume. The plan never shows the hash.
"""

from __future__ import annotations

import re
from dataclasses import replace

from reconciler.formats import rspamd_ucl
from reconciler.kinds import rspamd_files
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext
from reconciler.kinds.checks import DocView, Reporter, section
from reconciler.model import RSPAMD_CONTROLLER_KEY, Rspamd
from reconciler.observed import Observed
from reconciler.passwords import rspamd_pw
from reconciler.passwords.sources import Status, source_id
from reconciler.plan import SENSITIVE, Kind

NAME = "rspamd_controller"
FILE = rspamd_ucl.file_name("worker-controller.inc")
PASSWORD = "password"
SOURCES = ("password_hash", "password_env", "password_file")
# `rspamadm pw` output: $<id>$<salt in Rspamd's base32>$<hash in base32>
HASH = re.compile(r"^\$[12]\$[13-9a-km-uw-z]{20,64}\$[13-9a-km-uw-z]{40,128}$")


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    declared = wanted_hash(ctx)
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


def stored_hash(observed: Observed) -> str | None:
    """The hashed password worker-controller.inc holds now (None: none, or not a plain one)."""
    parsed = observed.rspamd_files.get(FILE)
    item = parsed.entries.get(PASSWORD) if parsed is not None else None
    if item is None or item.value is None:
        return None
    return rspamd_ucl.unquote(item.value)


def wanted_hash(ctx: PlanContext) -> str | None:
    """The hash to write: the declared one, the volume's while it verifies the secret, a new
    one for a new or changed secret, or (--offline, the secret unreadable) the volume's hash or
    a placeholder derived from the secret's source."""
    r = ctx.desired.rspamd
    if r.controller_hash is not None or r.controller_password is None:
        return r.controller_hash
    decided = ctx.passwords.get(RSPAMD_CONTROLLER_KEY)
    if decided is None or decided.status is Status.UNRESOLVED:
        current = stored_hash(ctx.observed)
        return current or rspamd_pw.placeholder(source_id(r.controller_password))
    if decided.status is Status.KEPT and decided.hash is not None:
        return decided.hash
    return rspamd_pw.PENDING  # a new or changed secret: apply hashes it (volume.executor)


def check(report: Reporter, view: DocView) -> None:
    controller = section(section(view.doc, "rspamd"), "controller")
    given = [k for k in SOURCES if k in controller]
    if "controller" in section(view.doc, "rspamd") and len(given) != 1:
        report.error(
            ("rspamd", "controller"),
            "the web UI password "
            + (f"has {' and '.join(given)}" if given else "has no source")
            + ": give exactly one of password_hash, password_env or password_file",
            key=True,
        )
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

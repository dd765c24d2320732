"""DKIM signing with OpenDKIM: `dkim:` in mailserver.yaml; `opendkim/KeyTable`,
`opendkim/SigningTable`, `opendkim/TrustedHosts` and the keys under
`opendkim/keys/<domain>/<selector>.private` (+ `.txt`, the DNS record) on the volume.

The same files DMS's `setup config dkim` writes. A key is made once, at apply, and never replaced
or deleted (rotate by declaring a new selector). OpenDKIM reads the files at start only.
"""

from __future__ import annotations

import os

from reconciler import dkimkeys
from reconciler.formats import opendkim
from reconciler.formats._lines import ParsedFile
from reconciler.kinds.base import KindPlan, PlanContext, Want
from reconciler.observed import Observed
from reconciler.plan import Action, Change, FilePlan, Kind, PendingKey

NAME = "dkim"
KEYS_FILE = "opendkim/keys"  # the logical file of key changes: one folder per domain
NOTE = (
    "OpenDKIM's files are read when DMS starts: the sidecar copies opendkim/ to /etc/opendkim and "
    "restarts OpenDKIM (as setup.d/dmarc_dkim_spf.sh does); by hand `docker compose up -d "
    "--force-recreate`. Publish the TXT records shown by `dms-reconciler dns` first"
)


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    desired, observed = ctx.desired, ctx.observed
    key_table: dict[str, Want] = {}
    signing: dict[str, Want] = {}
    for dkim in desired.dkim:
        line = opendkim.key_table_line(dkim.domain, dkim.selector)
        key_table[line.key.lower()] = Want(Kind.DKIM, line)
        sign = opendkim.signing_table_line(dkim.domain, dkim.selector)
        signing[sign.key.lower()] = Want(Kind.DKIM, sign)
    declared = bool(desired.dkim)
    written = False
    for name, want in ((opendkim.KEY_TABLE, key_table), (opendkim.SIGNING_TABLE, signing)):
        parsed = observed.dkim_tables.get(name) or ParsedFile({})
        diff = ctx.diff(
            name,
            want,
            parsed,
            same=lambda a, b: a.normalised() == b.normalised(),
            show=lambda e: {"value": e.value},
            kind_of=lambda key, e: Kind.DKIM,
        )
        written |= out.add_file(ctx, name, diff, parsed, listed=declared, guarded=True).write
        for change in diff.changes:
            if change.action is Action.DELETE and name == opendkim.KEY_TABLE:
                domain = change.key.partition("._domainkey.")[2] or change.key
                out.notes.append(
                    f"the DKIM key files of {domain} are kept in opendkim/keys/{domain}/ (a key "
                    "is never deleted by apply); OpenDKIM stops signing with it"
                )
    trusted = observed.snapshots[opendkim.TRUSTED_HOSTS]
    if declared and not trusted.exists:
        out.changes.append(
            Change(
                opendkim.TRUSTED_HOSTS,
                Kind.DKIM,
                "TrustedHosts",
                Action.CREATE,
                None,
                {"value": "127.0.0.1, localhost"},
            )
        )
        out.files.append(
            FilePlan(
                opendkim.TRUSTED_HOSTS, trusted.path, True, False, None, opendkim.TRUSTED_DEFAULT
            )
        )
        written = True
    elif trusted.exists:
        out.files.append(
            FilePlan(opendkim.TRUSTED_HOSTS, trusted.path, False, True, trusted.sha256)
        )
    for dkim in desired.dkim:
        written |= _plan_key(dkim.domain, dkim.selector, dkim.key_size, observed, out)
    if written:
        out.notes.append(NOTE)
    return out


def _plan_key(domain: str, selector: str, bits: int, observed: Observed, out: KindPlan) -> bool:
    """A key is made once: an existing private key file is never replaced (whatever its size)."""
    private_name = opendkim.private_key_path(domain, selector)
    txt_name = opendkim.txt_path(domain, selector)
    key_dir = os.path.join(observed.config_dir, private_name.rpartition("/")[0])
    private = observed.snapshots.get(private_name)
    txt = observed.snapshots.get(txt_name)
    key = f"{domain} ({selector})"
    if private is None or private.data is None:
        out.changes.append(
            Change(
                KEYS_FILE,
                Kind.DKIM_KEY,
                key,
                Action.CREATE,
                None,
                {"key": f"RSA {bits} bits, made at apply; the private key is never shown"},
            )
        )
        for name, part in ((private_name, "private"), (txt_name, "txt")):
            snap = observed.snapshots.get(name)
            path = f"{key_dir}/{name.rpartition('/')[2]}"
            out.files.append(
                FilePlan(
                    name,
                    path,
                    True,
                    snap is not None and snap.exists,
                    None,
                    PendingKey(domain, selector, bits, part),
                )
            )
        return True
    out.files.append(FilePlan(private_name, private.path, False, True, private.sha256))
    if exposed := dkimkeys.unsafe_mode_warning(private_name, domain, private.mode):
        out.warnings.append(exposed)
    read = dkimkeys.read(private.data)
    if read is None:
        out.warnings.append(
            f"{private_name} is not a readable RSA private key: OpenDKIM cannot sign with it; "
            "it is kept (apply never replaces a key): remove it to have a new one made"
        )
        return False
    size, public = read
    if size != bits:
        out.warnings.append(
            f"the DKIM key {private_name} has {size} bits, not the {bits} declared: it is kept "
            "(keys are never rotated by accident); to rotate, declare a new selector"
        )
    if txt is None or txt.data is None:
        text = opendkim.render_txt(domain, selector, public)
        out.changes.append(
            Change(KEYS_FILE, Kind.DKIM_KEY, key, Action.CREATE, None, {"key": "DNS record file"})
        )
        out.files.append(FilePlan(txt_name, f"{key_dir}/{selector}.txt", True, False, None, text))
        return True
    out.files.append(FilePlan(txt_name, txt.path, False, True, txt.sha256))
    return False

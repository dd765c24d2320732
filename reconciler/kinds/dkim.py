"""DKIM signing with OpenDKIM: `dkim:` in mailserver.yaml; `opendkim/KeyTable`,
`opendkim/SigningTable`, `opendkim/TrustedHosts` and the keys under
`opendkim/keys/<domain>/<selector>.private` (+ `.txt`, the DNS record) on the volume.

The same files DMS's `setup config dkim` writes. A key is made once, at apply, and never replaced
or deleted (rotate by declaring a new selector). OpenDKIM reads the files at start only.
"""

from __future__ import annotations

import re
from typing import Any

from reconciler import dkimkeys
from reconciler.formats import opendkim
from reconciler.formats._lines import ParsedFile
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext, Want, same_normalised
from reconciler.kinds.checks import DocView, Reporter, not_declared, section
from reconciler.model import Dkim
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
    # with `signer: rspamd` the keys are Rspamd's (kinds/rspamd_dkim.py): none declared here
    declared_dkim = desired.dkim if desired.dkim_signer == "opendkim" else ()
    key_table: dict[str, Want] = {}
    signing: dict[str, Want] = {}
    for dkim in declared_dkim:
        line = opendkim.key_table_line(dkim.domain, dkim.selector)
        key_table[line.key.lower()] = Want(Kind.DKIM, line)
        sign = opendkim.signing_table_line(dkim.domain, dkim.selector)
        signing[sign.key.lower()] = Want(Kind.DKIM, sign)
    declared = bool(declared_dkim)
    written = False
    for name, want in ((opendkim.KEY_TABLE, key_table), (opendkim.SIGNING_TABLE, signing)):
        parsed = observed.dkim_tables.get(name) or ParsedFile({})
        diff = ctx.diff(
            name,
            want,
            parsed,
            same=same_normalised,
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
            FilePlan(opendkim.TRUSTED_HOSTS, True, False, None, opendkim.TRUSTED_DEFAULT)
        )
        written = True
    elif trusted.exists:
        out.files.append(FilePlan(opendkim.TRUSTED_HOSTS, False, True, trusted.sha256))
    for dkim in declared_dkim:
        written |= _plan_key(dkim.domain, dkim.selector, dkim.key_size, observed, out)
    if written:
        out.notes.append(NOTE)
    return out


def _plan_key(domain: str, selector: str, bits: int, observed: Observed, out: KindPlan) -> bool:
    """A key is made once: an existing private key file is never replaced (whatever its size)."""
    private_name = opendkim.private_key_path(domain, selector)
    txt_name = opendkim.txt_path(domain, selector)
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
            out.files.append(
                FilePlan(
                    name,
                    True,
                    snap is not None and snap.exists,
                    None,
                    PendingKey(domain, selector, bits, part),
                )
            )
        return True
    out.files.append(FilePlan(private_name, False, True, private.sha256))
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
        out.files.append(FilePlan(txt_name, True, False, None, text))
        return True
    out.files.append(FilePlan(txt_name, False, True, txt.sha256))
    return False


# --- mail rules ---------------------------------------------------------------------------------

DKIM_KEY_SIZES = (1024, 2048, 3072, 4096)
# A DKIM selector: dot-separated DNS labels of at most 63 characters, lowercase letters, digits,
# '-' inside a label and '_' anywhere (`setup config dkim selector mail_2024` is what DMS takes;
# a TXT record's owner name may hold '_', as `_domainkey` itself does).
_SELECTOR_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_SELECTOR = re.compile(rf"{_SELECTOR_LABEL}(?:\.{_SELECTOR_LABEL})*\Z")
# The selector is also a file name: apply stages `<selector>.private` beside itself as
# `.<selector>.private.dms-reconciler-<12 hex>.tmp`, which must fit NAME_MAX (255 bytes).
NAME_MAX = 255
DKIM_TEMP_EXTRA = len(".") + len(".dms-reconciler-") + 12 + len(".tmp")
SELECTOR_MAX = NAME_MAX - len(".private") - DKIM_TEMP_EXTRA  # 214
DNS_NAME_MAX = 253  # a domain name in text form, without the final dot (RFC 1035)


def check(report: Reporter, view: DocView) -> None:
    for domain, spec in section(view.doc, "dkim").items():
        if domain == "signer":  # who signs (schema: opendkim|rspamd), not a domain
            continue
        if domain not in view.declared:
            report.error(("dkim", domain), not_declared(domain, "the DKIM domain"), key=True)
        if not isinstance(spec, dict):
            continue
        selector = spec.get("selector")
        if isinstance(selector, str) and (problem := selector_problem(selector, domain)):
            report.error(("dkim", domain, "selector"), problem)
        size = spec.get("key_size")
        if "key_size" in spec and (isinstance(size, bool) or not isinstance(size, int)):
            # JSON Schema counts 2048.0 as an integer (and as equal to 2048); apply cannot
            report.error(
                ("dkim", domain, "key_size"),
                "key_size must be a whole number of bits: 1024, 2048, 3072 or 4096, "
                f"not {_shown_value(size)}",
            )
        elif isinstance(size, int) and size not in DKIM_KEY_SIZES:
            report.error(
                ("dkim", domain, "key_size"),
                f"key_size {size} is out of range: use 1024, 2048, 3072 or 4096 bits (2048 is "
                "DMS's default; below 1024 verifiers reject the key, above 4096 many DNS "
                "servers cannot serve the record)",
            )


def _shown_value(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return "the string '" + value.encode("unicode_escape").decode()[:20] + "'"
    if isinstance(value, float):
        return repr(value)
    return "a list" if isinstance(value, list) else "a mapping"


def selector_problem(selector: str, domain: str) -> str | None:
    """Why `selector` cannot be a DKIM selector of `domain` (None: it can): it must be a DNS
    name that fits in `<selector>._domainkey.<domain>` and a file name apply can write."""
    shown = selector.encode("unicode_escape").decode()
    shown = shown if len(shown) <= 60 else shown[:60] + "..."
    if not _SELECTOR.match(selector):
        return (
            f"selector '{shown}' must be lowercase letters, digits, '_' and '-' in dot-separated "
            "labels of at most 63 characters ('-' not first or last): it becomes a DNS name and "
            "a file name"
        )
    if len(selector) > SELECTOR_MAX:
        return (
            f"selector '{shown}' has {len(selector)} characters, more than {SELECTOR_MAX}: "
            f"the key file {selector[:20]}....private could not be written (file names stop at "
            f"{NAME_MAX} bytes)"
        )
    name = f"{selector}._domainkey.{domain}"
    if len(name) > DNS_NAME_MAX:
        return (
            f"selector '{shown}' is too long for {domain}: the DKIM record name "
            f"<selector>._domainkey.{domain} would have {len(name)} characters, more than the "
            f"{DNS_NAME_MAX} a DNS name may have"
        )
    return None


# --- export -------------------------------------------------------------------------------------


def export(ctx: ExportContext) -> None:
    """Domains whose KeyTable and SigningTable lines are exactly what open-dkim writes and
    whose private key is on the volume."""
    ctx.fields["dkim"] = _adopt(ctx.observed, ctx.domains(), ctx.warnings)


def _adopt(observed: Observed, domains: set[str], warnings: list[str]) -> tuple[Dkim, ...]:
    keys = observed.dkim_tables.get(opendkim.KEY_TABLE) or ParsedFile({})
    signing = observed.dkim_tables.get(opendkim.SIGNING_TABLE) or ParsedFile({})
    out = []
    for entry in keys.entries.values():
        selector, _, domain = entry.key.partition("._domainkey.")
        if not domain or domain not in domains:
            warnings.append(f"opendkim/KeyTable: '{entry.key}' left unmanaged: not a hosted domain")
            continue
        expected = opendkim.key_table_line(domain, selector)
        sign = signing.entries.get(f"*@{domain}")
        snap = observed.snapshots.get(opendkim.private_key_path(domain, selector))
        read = dkimkeys.read(snap.data) if snap is not None and snap.data is not None else None
        problem = (
            (entry.normalised() != expected.normalised() and "not the line open-dkim writes")
            or (
                (
                    sign is None
                    or sign.normalised()
                    != opendkim.signing_table_line(domain, selector).normalised()
                )
                and "its SigningTable line is missing or different"
            )
            or (read is None and "its private key file is missing or unreadable")
            or (read is not None and read[0] not in DKIM_KEY_SIZES and "its key size")
            or (
                not observed.snapshots[opendkim.TRUSTED_HOSTS].exists
                and "opendkim/TrustedHosts is missing"
            )
        )
        if problem or read is None:
            warnings.append(f"opendkim: DKIM for {domain} left unmanaged: {problem}")
            continue
        out.append(Dkim(domain, selector, read[0]))
    return tuple(sorted(out, key=lambda d: d.domain))

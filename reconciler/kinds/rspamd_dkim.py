"""DKIM signing by Rspamd: `dkim:` with `signer: rspamd` in mailserver.yaml; the keys in
`rspamd/dkim/` and `rspamd/override.d/dkim_signing.conf` on the volume.

What DMS's `setup config dkim` writes when DMS runs Rspamd with ENABLE_OPENDKIM=0
(target/bin/rspamd-dkim, v15.1.0 and v16): per domain `rsa-<bits>-<selector>-<domain>.private.txt`
(0600), `.public.txt` and `.public.dns.txt` (formats/rspamdkeys.py), and a dkim_signing.conf
with DMS's settings and a `domain { <domain> { path = ...; selector = ...; } }` block. DMS's
script writes that file once, for its first domain; here the block names every declared domain.
A key is made once, at apply, and never replaced or deleted (rotate by declaring a new
selector); an existing key of the same selector is used whatever its size. DMS's settings are
written when the file lacks them; a value the admin changed is kept (`sign_local = true;`).
Who signs is declared (`dkim.signer`), not read from the container: the plan is the same in CI
as in the sidecar, and a plan that reads DMS's settings warns when they disagree (planner.target).
"""

from __future__ import annotations

import re
from typing import Any

from reconciler import dkimkeys, rspamdkeys
from reconciler.formats import opendkim, rspamd_ucl
from reconciler.kinds import rspamd_files
from reconciler.kinds.base import ExportContext, KindPlan, PlanContext
from reconciler.kinds.checks import DocView, Reporter, section
from reconciler.model import Dkim
from reconciler.observed import Observed
from reconciler.plan import Action, Change, FilePlan, Kind, PendingKey

NAME = "rspamd_dkim"
SIGNER = "rspamd"
CONF = rspamd_ucl.file_name("dkim_signing.conf")
KEYS_FILE = rspamdkeys.DIRECTORY  # the logical file of key changes
DOMAIN = "domain"
# rspamd-dkim's dkim_signing.conf settings, in its order (`enabled` is always ours)
DEFAULTS = (
    ("enabled", "true"),
    ("sign_authenticated", "true"),
    ("sign_local", "false"),
    ("try_fallback", "false"),
    ("use_domain", '"header"'),
    ("use_redis", "false"),
    ("use_esld", "true"),
    ("allow_username_mismatch", "true"),
    ("check_pubkey", "true"),
)
_COMMENT = re.compile(r"\s*;?\s*#.*\Z")
_ENTRY = re.compile(r'\s*(path|selector)\s*=\s*"([^"]*)"\s*;\s*\Z')
_OPEN = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*\{\s*\Z")


def signs(desired: Any) -> bool:
    return bool(desired.dkim_signer == SIGNER)


def domain_block(keys: dict[str, tuple[str, str]]) -> rspamd_ucl.Item:
    """`domain { <d> { path = "..."; selector = "..."; } }` as rspamd-dkim indents it."""
    lines = [f"{DOMAIN} {{"]
    for domain, (path, selector) in sorted(keys.items()):
        lines += [
            f"    {domain} {{",
            f'        path = "{path}";',
            f'        selector = "{selector}";',
            "    }",
        ]
    return rspamd_ucl.Item(DOMAIN, None, (*lines, "}"))


def read_domains(item: rspamd_ucl.Item | None) -> dict[str, tuple[str, str]] | None:
    """The domain block read back: domain -> (path, selector); None when it is anything else
    (more settings in a domain, nested selectors, ...)."""
    if item is None or item.value is not None or len(item.body) < 2:
        return None
    out: dict[str, tuple[str, str]] = {}
    current: str | None = None
    fields: dict[str, str] = {}
    for line in item.body[1:-1]:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if current is None:
            opened = _OPEN.match(line)
            if opened is None:
                return None
            current, fields = opened[1], {}
        elif text == "}":
            if set(fields) != {"path", "selector"} or current in out:
                return None
            out[current] = (fields["path"], fields["selector"])
            current = None
        elif entry := _ENTRY.match(line):
            fields[entry[1]] = entry[2]
        else:
            return None
    return out if current is None else None


def _same(have: rspamd_ucl.Item, want: rspamd_ucl.Item) -> bool:
    if want.key == DOMAIN:
        return read_domains(have) == read_domains(want) is not None or have == want
    if have.value is None or want.value is None:
        return have == want
    return _COMMENT.sub("", have.value) == want.value


def plan(ctx: PlanContext) -> KindPlan:
    out = KindPlan()
    desired, observed = ctx.desired, ctx.observed
    want: dict[str, rspamd_ucl.Item] = {}
    if signs(desired) and desired.dkim:
        parsed = observed.rspamd_files.get(CONF)
        have = parsed.entries if parsed is not None else {}
        for key, value in DEFAULTS:
            kept = have.get(key)
            keep = key != "enabled"
            if keep and kept is not None and kept.value is not None:  # the admin's value
                value = _COMMENT.sub("", kept.value)
            want[key] = rspamd_ucl.Item(key, value)
        keys: dict[str, tuple[str, str]] = {}
        for dkim in desired.dkim:
            private = _plan_key(dkim, observed, out)
            keys[dkim.domain] = (rspamdkeys.container_path(private), dkim.selector)
        want[DOMAIN] = domain_block(keys)
    fp = rspamd_files.plan_override(ctx, out, CONF, want, Kind.DKIM, same=_same)
    for change in out.changes:
        if change.file == CONF and change.key == DOMAIN and change.action is Action.DELETE:
            out.notes.append(
                "Rspamd stops signing: the DKIM key files in rspamd/dkim/ are kept (a key is "
                "never deleted by apply)"
            )
    if fp is not None and fp.write or any(c.file == KEYS_FILE for c in out.changes):
        out.notes.append(
            f"{CONF} and rspamd/dkim/: {rspamd_files.RELOAD}; Rspamd signs mail from "
            "authenticated senders of the declared domains from then on. Publish the TXT "
            "records shown by `dms-reconciler dns` first"
        )
    return out


def current_key(dkim: Dkim, observed: Observed) -> str | None:
    """The logical name of the private key Rspamd signs `dkim`'s domain with: the declared
    size's file, else one of the same selector of another size (a key once made is the key)."""
    found = rspamdkeys.find_private(
        (n for n, s in observed.snapshots.items() if s.data is not None),
        dkim.domain,
        dkim.selector,
    )
    exact = [name for bits, name in found if bits == dkim.key_size]
    return exact[0] if exact else (found[0][1] if found else None)


def _selector_taken_by_opendkim(dkim: Dkim, observed: Observed) -> str | None:
    """A new Rspamd key under a selector OpenDKIM already has a key for: the published record is
    the OpenDKIM key's, so mail Rspamd signs fails DKIM until that record is replaced."""
    name = opendkim.private_key_path(dkim.domain, dkim.selector)
    snap = observed.snapshots.get(name)
    if snap is None or snap.data is None:
        return None
    record = f"{dkim.selector}._domainkey.{dkim.domain}"
    return (
        f"{dkim.domain}: selector {dkim.selector} already has an OpenDKIM key ({name}), and "
        f"the TXT record {record} in DNS is that key's. Rspamd gets a new key under the same "
        f"selector: the mail it signs fails DKIM until {record} holds the record "
        "`dms-reconciler dns` prints after apply. Declare a new selector to publish the new "
        "record beside the old one first"
    )


def _plan_key(dkim: Dkim, observed: Observed, out: KindPlan) -> str:
    """Plan `dkim`'s key files; returns the private key's logical name."""
    domain, selector, bits = dkim.domain, dkim.selector, dkim.key_size
    key = f"{domain} ({selector})"
    private = current_key(dkim, observed)
    if private is None:
        private = rspamdkeys.private_path(domain, selector, bits)
        if warning := _selector_taken_by_opendkim(dkim, observed):
            out.warnings.append(warning)
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
        parts = (
            (private, "rspamd-private"),
            (rspamdkeys.public_path(private), "rspamd-public"),
            (rspamdkeys.dns_path(private), "rspamd-dns"),
        )
        for name, part in parts:
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
        return private
    snap = observed.snapshots[private]
    out.files.append(FilePlan(private, False, True, snap.sha256))
    if exposed := dkimkeys.unsafe_mode_warning(private, domain, snap.mode):
        out.warnings.append(exposed.replace("opendkim-genkey", "rspamadm dkim_keygen"))
    read = dkimkeys.read(snap.data or b"")
    if read is None:
        out.warnings.append(
            f"{private} is not a readable RSA private key: Rspamd cannot sign with it; it is "
            "kept (apply never replaces a key): remove it to have a new one made"
        )
        return private
    size, public = read
    if size != bits:
        out.warnings.append(
            f"the DKIM key {private} has {size} bits, not the {bits} declared: it is kept "
            "(keys are never rotated by accident); to rotate, declare a new selector"
        )
    for name, text in (
        (rspamdkeys.public_path(private), rspamdkeys.render_public(selector, public)),
        (rspamdkeys.dns_path(private), rspamdkeys.render_dns(public)),
    ):
        have = observed.snapshots.get(name)
        if have is not None and have.data is not None:
            out.files.append(FilePlan(name, False, True, have.sha256))
            continue
        out.changes.append(
            Change(KEYS_FILE, Kind.DKIM_KEY, key, Action.CREATE, None, {"key": name})
        )
        out.files.append(FilePlan(name, True, False, None, text))
    return private


# --- mail rules ---------------------------------------------------------------------------------


def check(report: Reporter, view: DocView) -> None:
    """With `signer: rspamd` this kind writes override.d/dkim_signing.conf: `rspamd.modules`
    and `rspamd.options.module` may not write the same file."""
    if section(view.doc, "dkim").get("signer") != SIGNER:
        return
    rspamd = section(view.doc, "rspamd")
    modules = section(rspamd, "modules")
    for switch in ("enable", "disable"):
        names = modules.get(switch)
        if isinstance(names, list) and "dkim_signing" in names:
            report.error(
                ("rspamd", "modules", switch, names.index("dkim_signing")),
                "dkim_signing is switched on by `dkim: {signer: rspamd}` (which writes "
                "override.d/dkim_signing.conf); remove it here, or the signer",
            )
    if "dkim_signing" in section(section(rspamd, "options"), "module"):
        report.error(
            ("rspamd", "options", "module", "dkim_signing"),
            "dkim_signing's options are written from `dkim:` when Rspamd signs "
            "(override.d/dkim_signing.conf); edit that file's other settings by hand",
            key=True,
        )


# --- export -------------------------------------------------------------------------------------


def export(ctx: ExportContext) -> None:
    """The domains of a dkim_signing.conf as rspamd-dkim writes it (its domain block naming a
    readable RSA key in rspamd/dkim/ by its container path) become `dkim:` with
    `signer: rspamd`, unless OpenDKIM's files were adopted already (then they stay unmanaged)."""
    parsed = ctx.observed.rspamd_files.get(CONF)
    if parsed is None or DOMAIN not in parsed.entries:
        return
    domains = read_domains(parsed.entries[DOMAIN])
    if domains is None:
        ctx.warnings.append(
            f"{CONF}: its domain block left unmanaged: not one path and selector per domain"
        )
        return
    if ctx.fields.get("dkim"):
        ctx.warnings.append(
            f"{CONF}: left unmanaged: OpenDKIM's keys were adopted (one signer per file)"
        )
        return
    hosted = ctx.domains()
    out: list[Dkim] = []
    for domain, (path, selector) in sorted(domains.items()):
        name = rspamdkeys.logical_name(path)
        snap = ctx.observed.snapshots.get(name) if name is not None else None
        read = dkimkeys.read(snap.data) if snap is not None and snap.data is not None else None
        problem = (
            (domain not in hosted and "not a hosted domain")
            or (name is None and f"its key {path} is not in rspamd/dkim/")
            or (read is None and f"its key {path} is missing or not a readable RSA key")
            or (
                name not in [n for _, n in rspamdkeys.find_private([name], domain, selector)]
                and "its key file name is not rsa-<bits>-<selector>-<domain>.private.txt"
            )
        )
        if problem or read is None:
            ctx.warnings.append(f"{CONF}: DKIM for {domain} left unmanaged: {problem}")
            continue
        out.append(Dkim(domain, selector, read[0]))
    if out:
        ctx.fields["dkim"] = tuple(out)
        ctx.fields["dkim_signer"] = SIGNER

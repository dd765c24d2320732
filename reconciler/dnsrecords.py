"""The DNS records a mail domain needs: the DKIM TXT record of the key on the volume (what
`setup config dkim` leaves in `<selector>.txt`), and MX, SPF and DMARC suggestions in the form
DMS's docs give (docs/content/config/best-practices/dkim_dmarc_spf.md: `v=spf1 mx ~all`, a
DMARC policy of `p=none` with reports to start with). Pure: the volume's key files are read by
`observe`; only public keys are shown, never a private one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from reconciler import dkimkeys, rspamdkeys
from reconciler.formats import opendkim
from reconciler.model import DesiredState
from reconciler.observed import Observed

TXT_STRING_MAX = 255  # one character-string in a TXT record (RFC 1035)
NAME_MAX = 253  # a domain name in text form, without the final dot (RFC 1035)
# Where DMARC aggregate reports could go, first that receives mail wins: RFC 5321's postmaster,
# then the address DMS's docs use (docs/content/config/best-practices/dkim_dmarc_spf.md).
REPORT_LOCALS = ("postmaster", "dmarc.report", "dmarc")


@dataclass(frozen=True)
class Record:
    domain: str
    kind: str  # dkim | mx | spf | dmarc
    name: str  # the owner name, fully qualified with a final dot
    type: str  # MX | TXT
    value: str  # the record data (a TXT record's text joined)
    suggestion: bool  # True: a starting point to adapt; False: must be published as it is
    note: str = ""

    def zone_line(self) -> str:
        data = txt_strings(self.value) if self.type == "TXT" else self.value
        return f"{self.name}\tIN\t{self.type}\t{data}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def txt_strings(text: str) -> str:
    """A TXT value as zone-file strings of at most 255 characters, in parentheses when split."""
    parts = [text[i : i + TXT_STRING_MAX] for i in range(0, len(text), TXT_STRING_MAX)] or [""]
    quoted = [f'"{part}"' for part in parts]
    return quoted[0] if len(quoted) == 1 else "( " + "\n\t\t".join(quoted) + " )"


def records(desired: DesiredState, observed: Observed) -> tuple[list[Record], list[str], list[str]]:
    """(records, problems, warnings): a problem is a record that cannot be shown (a DKIM key
    not on the volume yet, a name too long for DNS); a warning, a key others can read."""
    out: list[Record] = []
    problems: list[str] = []
    warnings: list[str] = []
    dkim = {d.domain: d for d in desired.dkim}
    mx_host = desired.hostname
    for domain in desired.domains:
        out.append(
            Record(
                domain,
                "mx",
                f"{domain}.",
                "MX",
                f"10 {mx_host}." if mx_host else "10 <the DMS hostname>.",
                True,
                "" if mx_host else "give `hostname:` in mailserver.yaml to fill in the MX host",
            )
        )
        out.append(
            Record(
                domain,
                "spf",
                f"{domain}.",
                "TXT",
                "v=spf1 mx ~all",
                True,
                "tighten to -all once all mail for the domain leaves through DMS",
            )
        )
        out.append(_dmarc(desired, domain))
        if domain not in dkim:
            continue
        selector = dkim[domain].selector
        name = opendkim.private_key_path(domain, selector)
        if desired.dkim_signer == "rspamd":  # rspamd/dkim/rsa-<bits>-<selector>-<domain>...
            found = rspamdkeys.find_private(
                (n for n, s in observed.snapshots.items() if s.data is not None), domain, selector
            )
            exact = [n for bits, n in found if bits == dkim[domain].key_size]
            name = (
                exact
                or [n for _, n in found]
                or [rspamdkeys.private_path(domain, selector, dkim[domain].key_size)]
            )[0]
        snap = observed.snapshots.get(name)
        read = dkimkeys.read(snap.data) if snap is not None and snap.data is not None else None
        if snap is not None and (exposed := dkimkeys.unsafe_mode_warning(name, domain, snap.mode)):
            warnings.append(exposed)
        if read is None:
            why = (
                "not made yet: run `dms-reconciler apply`"
                if snap is None or snap.data is None
                else "not a readable RSA private key"
            )
            problems.append(f"{domain}: the DKIM key {name} is {why}")
            continue
        out.append(
            Record(
                domain,
                "dkim",
                f"{opendkim.record_name(domain, selector)}.",
                "TXT",
                (
                    rspamdkeys.record_value(read[1])
                    if desired.dkim_signer == "rspamd"
                    else opendkim.txt_value(read[1])
                ),
                False,
                f"RSA {read[0]} bits, from {name}",
            )
        )
    return (*_refuse_long_names(out, problems), warnings)


def _dmarc(desired: DesiredState, domain: str) -> Record:
    """The DMARC suggestion; its `rua=` names only an address mailserver.yaml makes receive mail
    (reports sent to an address that does not exist bounce back to every reporter)."""
    receiving = {a.address for a in desired.accounts} | {a.address for a in desired.aliases}
    caught = any(c.domain == domain for c in desired.catch_all)
    report_to = next(
        (
            f"{local}@{domain}"
            for local in REPORT_LOCALS
            if caught or f"{local}@{domain}" in receiving
        ),
        None,
    )
    advice = "start with p=none and read the reports, then p=quarantine"
    if report_to is None:
        return Record(
            domain,
            "dmarc",
            f"_dmarc.{domain}.",
            "TXT",
            "v=DMARC1; p=none",
            True,
            f"{advice}; rua= (where reports go) left out: none of "
            + ", ".join(f"{local}@{domain}" for local in REPORT_LOCALS)
            + " is an account, alias or catch-all in mailserver.yaml. Declare "
            f"postmaster@{domain} (RFC 5321 wants one) and add rua=mailto:postmaster@{domain}",
        )
    return Record(
        domain,
        "dmarc",
        f"_dmarc.{domain}.",
        "TXT",
        f"v=DMARC1; p=none; rua=mailto:{report_to}",
        True,
        advice,
    )


def _refuse_long_names(found: list[Record], problems: list[str]) -> tuple[list[Record], list[str]]:
    """A record whose owner name is longer than a DNS name may be cannot be published: it is
    left out and named as a problem (validate refuses such a DKIM selector already; a domain of
    more than 246 characters still leaves no room for `_dmarc.`)."""
    kept = []
    for record in found:
        name = record.name.rstrip(".")
        if len(name) > NAME_MAX:
            problems.append(
                f"{record.domain}: the {record.kind} record name {name[:40]}... has {len(name)} "
                f"characters, more than the {NAME_MAX} a DNS name may have: it cannot be "
                "published (use a shorter domain"
                + (" or selector)" if record.kind == "dkim" else ")")
            )
            continue
        kept.append(record)
    return kept, problems


def text(found: list[Record], problems: list[str], warnings: list[str] | None = None) -> str:
    lines: list[str] = []
    for domain in dict.fromkeys(r.domain for r in found):
        lines.append(f"; {domain}")
        for record in (r for r in found if r.domain == domain):
            label = "publish as it is" if not record.suggestion else "suggestion"
            note = f": {record.note}" if record.note else ""
            lines.append(f"; {record.kind} ({label}{note})")
            lines.append(record.zone_line())
        lines.append("")
    for problem in [*problems, *(warnings or ())]:
        lines.append(f"; warning: {problem}")
    return "\n".join(lines).rstrip("\n") + "\n"

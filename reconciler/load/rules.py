"""Mail-aware checks that JSON Schema cannot express (product.md, section 2).

Each kind checks what it declares (`check` in its module under reconciler/kinds/, in registry
order), and kinds/routing.py how the accounts and the virtual routing work together (collisions,
loops, targets that resolve); this module runs them and keeps the rules about the document as a
whole: the `domains` list and the `hostname`. Every rule reads the loaded document defensively
(a part with the wrong type was already reported by the schema and is skipped) and reports
through `Report.error` with the document path, so the message lands on the right line. All rules
run; every problem is reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.addresses import check_domain, domain_of
from reconciler.errors import Diagnostic, Severity
from reconciler.kinds import KINDS, routing
from reconciler.kinds.checks import DocView
from reconciler.load.yamlload import Document, Path, format_path


@dataclass
class Report:
    doc: Document
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, path: Path, message: str, *, key: bool = False) -> None:
        self._add(path, message, key, Severity.ERROR)

    def warning(self, path: Path, message: str, *, key: bool = False) -> None:
        self._add(path, message, key, Severity.WARNING)

    def _add(self, path: Path, message: str, key: bool, severity: Severity) -> None:
        line, column = self.doc.position(path, key=key)
        self.diagnostics.append(
            Diagnostic(self.doc.filename, line, column, format_path(path), message, severity)
        )


def check(doc: Document) -> list[Diagnostic]:
    """Run every mail-aware rule on a loaded document; return all findings."""
    report = Report(doc)
    view = DocView.of(doc.value)
    _check_domains(report, view)
    for kind in KINDS:
        kind.check(report, view)
    routing.check(report, view)
    _check_hostname(report, view)
    _check_unused_domains(report, view)
    return report.diagnostics


def _check_domains(report: Report, view: DocView) -> None:
    """Every domain and the hostname must be safe on a DMS config line; no domain twice."""
    for i, domain in view.domains:
        if problem := check_domain(domain):
            report.error(("domains", i), problem)
    seen: dict[str, int] = {}
    for i, domain in view.domains:
        if domain in seen:
            report.warning(("domains", i), f"domain '{domain}' is listed twice")
        seen.setdefault(domain, i)
    if view.hostname is not None and (problem := check_domain(view.hostname)):
        report.error(
            ("hostname",),
            problem.replace("domain", "hostname", 1)
            + " (DMS needs a fully qualified hostname such as mail.example.com)",
        )


def _check_hostname(report: Report, view: DocView) -> None:
    """Domains Postfix treats as local (mydestination) cannot host virtual mail."""
    hostname = view.hostname
    if hostname is None or check_domain(hostname) is not None:
        return
    labels = hostname.split(".")
    domainname = ".".join(labels[1:]) if len(labels) > 2 else hostname
    local = {hostname, f"localhost.{domainname}"}
    for i, domain in view.domains:
        if domain in local:
            fix = (
                f"host mail at '{domainname}' instead"
                if domain != domainname
                else f"give DMS a hostname such as mail.{domain}"
            )
            report.error(
                ("domains", i),
                f"domain '{domain}' is the server's own hostname ({hostname}): Postfix lists it in "
                "mydestination and rejects virtual mail there ('User unknown in local recipient "
                f"table'); {fix}",
            )


def _check_unused_domains(report: Report, view: DocView) -> None:
    """A declared domain with nothing hosted is not accepted by DMS (vhost is derived)."""
    used = {domain_of(a) for a in view.accounts} | {domain_of(a) for a in view.aliases}
    used |= set(view.catch_all) | {domain_of(a) for _, a in view.devnull}
    for i, domain in view.domains:
        if domain not in used and check_domain(domain) is None:
            report.warning(
                ("domains", i),
                f"domain '{domain}' has no account, alias, catch-all or devnull address; DMS "
                "accepts mail only for domains that have one",
            )

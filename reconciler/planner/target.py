"""The DMS a plan is for: its release and settings, and what they mean for the declared file.

Where the DMS container is visible (the sidecar; `plan`/`apply` given `--container` or
`--container-label`) its environment (`docker inspect` Config.Env) is read into `DmsFacts`, with
DMS's own defaults for the settings it leaves unset (target/scripts/startup/variables-stack.sh,
the same in v15.1.0 and v16). `warnings()` is the pure decision: facts + desired state -> what the
plan warns about. Nothing here talks to Docker.

Releases: `DMS_RELEASE` is `v15.1.0`-style for tagged images and `edge` for images built from
DMS's master branch (the Dockerfile's default). `edge` is treated as the newest release line this
tool knows (v16), without the version-specific traps: which commit an edge image was built from
cannot be told from it. A release older than v15 or newer than the v16 line is reported as not
tested, and the plan is still made.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.model import DesiredState
from reconciler.plan import Plan


def bash_is_one(value: str) -> bool:
    """DMS's `[[ ${SETTING} -eq 1 ]]`: bash compares arithmetically, so 1 is also written 01, +1,
    0x1 or with spaces around it; anything else (2, yes, 08, empty) is not 1."""
    return re.fullmatch(r"\s*\+?(0*|0[xX]0*)1\s*", value) is not None


# The settings that decide what the declared file can do, with DMS's defaults for unset ones.
DEFAULTS: dict[str, str] = {
    "ENABLE_AMAVIS": "1",
    "ENABLE_SPAMASSASSIN": "0",
    "ENABLE_RSPAMD": "0",
    "ENABLE_OPENDKIM": "1",
    "ENABLE_QUOTAS": "1",  # 0 when ACCOUNT_PROVISIONER is not FILE or SMTP_ONLY=1: see below
    "ACCOUNT_PROVISIONER": "FILE",
    "SPAMASSASSIN_SPAM_TO_INBOX": "1",
    "MOVE_SPAM_TO_JUNK": "1",
    "RSPAMD_LEARN": "0",
}
SETTINGS = tuple(DEFAULTS)
TESTED = "v15.1.0 and v16"  # the releases the real-DMS tests run (docs/real-dms.md)
_RELEASE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")


@dataclass(frozen=True)
class DmsFacts:
    """What is known about the DMS container. `error` is set when it could not be read (then
    `release` is None and `settings` empty); `defaulted` names the settings left unset there."""

    container: str = ""
    release: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    defaulted: tuple[str, ...] = ()
    error: str = ""

    @property
    def version(self) -> tuple[int, int, int] | None:
        match = _RELEASE.match(self.release or "")
        return (int(match[1]), int(match[2]), int(match[3])) if match else None

    @property
    def edge(self) -> bool:
        return self.release == "edge"

    @property
    def line(self) -> str:
        """`v15`, `v16` (edge included), or `unknown`."""
        if self.edge:
            return "v16"
        version = self.version
        return f"v{version[0]}" if version and version[0] in (15, 16) else "unknown"

    def on(self, name: str) -> bool:
        return bash_is_one(self.settings.get(name, DEFAULTS[name]))

    def to_dict(self) -> dict[str, Any]:
        """The plan JSON's `target` (docs/plan-json.md)."""
        if self.error:
            return {"found": False, "container": self.container, "reason": self.error}
        return {
            "found": True,
            "container": self.container,
            "release": self.release,
            "release_line": self.line,
            "settings": dict(self.settings),
            "defaulted": list(self.defaulted),
        }

    def info_labels(self) -> dict[str, str]:
        """Labels of the `dms_reconciler_dms_info` metric."""
        if self.error:
            return {"found": "false", "container": self.container, "release": "unknown"}
        labels = {
            "found": "true",
            "container": self.container,
            "release": self.release or "unset",
            "release_line": self.line,
        }
        return {**labels, **{k.lower(): v for k, v in self.settings.items()}}

    def summary(self) -> str:
        """One line for logs: `DMS v16.0.1 (container mailserver): ENABLE_AMAVIS=1 ...`."""
        if self.error:
            return f"DMS settings unknown: {self.error}"
        settings = " ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"DMS {self.release} (container {self.container}): {settings}"


def facts_from_env(env: Mapping[str, str], container: str) -> DmsFacts:
    """The facts from a container's environment, DMS's defaults filling the unset settings."""
    settings: dict[str, str] = {}
    defaulted: list[str] = []
    for name, default in DEFAULTS.items():
        value = env.get(name)
        if value is None or value == "":
            # DMS: `${VAR:=default}`, so an empty value takes the default too
            if name == "ENABLE_QUOTAS" and (
                (env.get("ACCOUNT_PROVISIONER") or "FILE").strip() != "FILE"
                or env.get("SMTP_ONLY", "0").strip() == "1"
            ):
                default = "0"
            settings[name] = default
            defaulted.append(name)
        else:
            settings[name] = value.strip()
    release = env.get("DMS_RELEASE", "").strip() or None
    return DmsFacts(container, release, settings, tuple(defaulted))


def unreadable(container: str, reason: str) -> DmsFacts:
    return DmsFacts(container=container, error=reason)


def warnings(facts: DmsFacts, desired: DesiredState) -> list[str]:
    """What the plan warns about on this DMS: parts of the file without effect there, and the
    known traps of its release."""
    if facts.error:
        return [
            f"could not read the DMS container's settings ({facts.error}): the plan does not "
            "know which DMS release and features it is for"
        ]
    out: list[str] = []
    release = facts.release or "(DMS_RELEASE unset)"
    version = facts.version
    if not facts.edge and (version is None or version[0] not in (15, 16)):
        out.append(
            f"DMS release {release} is not one dms-reconciler was tested with ({TESTED}): "
            "the files are written as for v16; check the plan against its documentation"
        )
    provisioner = facts.settings.get("ACCOUNT_PROVISIONER", "FILE")
    if provisioner != "FILE":
        out.append(
            f"ACCOUNT_PROVISIONER={provisioner}: DMS takes accounts and aliases from "
            f"{provisioner}, not from the config volume; what mailserver.yaml declares has no "
            "effect there"
        )
    if any(a.quota is not None for a in desired.accounts) and not facts.on("ENABLE_QUOTAS"):
        out.append(
            "quotas are declared but ENABLE_QUOTAS=0: DMS ignores dovecot-quotas.cf (no limits)"
        )
    if facts.on("ENABLE_RSPAMD") and not facts.on("ENABLE_AMAVIS"):
        pass  # quarantine on Rspamd: said by rspamd_warnings
    elif desired.quarantine is not None and not facts.on("ENABLE_AMAVIS"):
        out.append(
            "quarantine is declared but ENABLE_AMAVIS=0: DMS never reads amavis.cf, "
            "so nothing reaches the quarantine mailbox"
        )
    elif desired.quarantine is not None and not facts.on("ENABLE_SPAMASSASSIN"):
        out.append(
            "quarantine is declared but ENABLE_SPAMASSASSIN=0: Amavis finds no spam, "
            "so no spam reaches the quarantine mailbox"
        )
    if desired.sa_learn and not (facts.on("ENABLE_SPAMASSASSIN") and facts.on("ENABLE_AMAVIS")):
        off = "ENABLE_AMAVIS=0" if not facts.on("ENABLE_AMAVIS") else "ENABLE_SPAMASSASSIN=0"
        out.append(
            f"sa_learn is declared but {off}: the jobs learn into a SpamAssassin database "
            "no filter reads"
        )
    out += rspamd_warnings(facts, desired)
    if version == (16, 0, 0) and facts.on("ENABLE_QUOTAS"):
        refused = _without_userdb_entry(desired)
        if refused:
            more = len(refused) - 5
            shown = ", ".join(refused[:5]) + (f" and {more} more" if more > 0 else "")
            out.append(
                "DMS v16.0.0 with ENABLE_QUOTAS=1 refuses mail to every address that has no "
                "Dovecot userdb entry ('554 5.7.1 ... Recipient address rejected: Unknown "
                f"user'): {shown}. Fixed in v16.0.1 (DMS #4769): update DMS, or set "
                "ENABLE_QUOTAS=0"
            )
    return out


def rspamd_warnings(facts: DmsFacts, desired: DesiredState) -> list[str]:
    """What `rspamd:`, `quarantine:` and learning mean on this DMS's spam filter."""
    out: list[str] = []
    if facts.on("ENABLE_RSPAMD") and desired.quarantine is not None:
        out.append(
            "quarantine is declared but this DMS runs Rspamd (ENABLE_RSPAMD=1): quarantine has no "
            "Rspamd equivalent (Rspamd rejects at SMTP time or adds headers, and DMS's sieve files "
            "tagged mail into Junk); only Amavis reads amavis.cf"
            + (
                ""
                if facts.on("ENABLE_AMAVIS")
                else ", and ENABLE_AMAVIS=0: nothing reaches the mailbox"
            )
        )
    if desired.rspamd and not facts.on("ENABLE_RSPAMD"):
        out.append(
            "rspamd is declared but ENABLE_RSPAMD=0: DMS neither reads rspamd/ nor runs the "
            "rspamc learn jobs' Rspamd; the files are written for when it does"
        )
    if desired.dkim:
        # DMS's own rule (target/bin/open-dkim): Rspamd's keys only with ENABLE_RSPAMD=1 and
        # ENABLE_OPENDKIM=0; otherwise OpenDKIM signs from opendkim/
        rspamd_signs = facts.on("ENABLE_RSPAMD") and not facts.on("ENABLE_OPENDKIM")
        if desired.dkim_signer == "rspamd" and not rspamd_signs:
            out.append(
                "dkim.signer is rspamd but this DMS has "
                + ("ENABLE_RSPAMD=0" if not facts.on("ENABLE_RSPAMD") else "ENABLE_OPENDKIM=1")
                + ": the keys in rspamd/dkim/ are written, but "
                + (
                    "nothing signs with them"
                    if not facts.on("ENABLE_OPENDKIM")
                    else "OpenDKIM signs (from opendkim/, where nothing is declared) and Rspamd "
                    "signs too"
                )
                + "; set ENABLE_RSPAMD=1 ENABLE_OPENDKIM=0, or drop `signer: rspamd`"
            )
        elif desired.dkim_signer == "opendkim" and not facts.on("ENABLE_OPENDKIM"):
            out.append(
                "dkim: keys are declared for OpenDKIM but ENABLE_OPENDKIM=0: nothing signs with "
                "them"
                + (
                    "; this DMS runs Rspamd: declare `dkim: {signer: rspamd}` to have it sign"
                    if facts.on("ENABLE_RSPAMD")
                    else ""
                )
            )
    if desired.rspamd.learn and facts.on("RSPAMD_LEARN"):
        out.append(
            "RSPAMD_LEARN=1 and rspamd.learn jobs: DMS already learns mail moved into or out of "
            "Junk (its sieve scripts run `rspamc learn_spam|learn_ham`), so a job on .Junk trains "
            "the same mail twice (Rspamd refuses a message it learned already, but a message "
            "moved back out of Junk is learned as both); drop the jobs or set RSPAMD_LEARN=0"
        )
    return out


def _without_userdb_entry(desired: DesiredState) -> list[str]:
    """Declared recipients Dovecot's userdb does not know on DMS v16: v16 adds an alias to the
    userdb only when one of its targets is an account (the first one, DMS #4581); catch-alls,
    devnull addresses, regexp aliases and aliases to forwards or to other aliases get none."""
    accounts = {a.address.lower() for a in desired.accounts}
    out = [f"@{c.domain} (catch-all)" for c in desired.catch_all]
    out += [a.address for a in desired.aliases if not any(t.lower() in accounts for t in a.targets)]
    out += [f"{address} (devnull)" for address in desired.devnull]
    out += [f"/{r.pattern}/ (regexp alias)" for r in desired.regexp_aliases]
    return out


def notes(facts: DmsFacts) -> list[str]:
    if facts.edge:
        return [
            "DMS_RELEASE is 'edge' (an image built from DMS's master branch): planned as for "
            "the newest release line known (v16); release-specific traps are not checked"
        ]
    return []


def annotate(plan: Plan, facts: DmsFacts, desired: DesiredState) -> Plan:
    """The plan with its `target` and what this DMS means for it (the planner's one call)."""
    return dataclasses.replace(
        plan,
        target_warnings=tuple(warnings(facts, desired)),
        notes=(*plan.notes, *notes(facts)),
        target=facts.to_dict(),
    )

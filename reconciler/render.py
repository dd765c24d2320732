"""Show a plan to people: Terraform-style text and a Markdown form for pull-request comments.

Both read the plan's JSON dictionary (`Plan.to_dict`), never the internal objects, so what a human
sees is exactly what a machine gets. Neither can show a secret: the dictionary has none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from reconciler.errors import printable

SYMBOLS = {"create": "+", "update": "~", "delete": "-"}
COLOURS = {"create": "green", "update": "yellow", "delete": "red"}
LEGEND = {"create": "create", "update": "update in place", "delete": "destroy"}
FILE_ORDER = ("postfix-accounts.cf", "dovecot-quotas.cf", "postfix-virtual.cf",
              "postfix-aliases.cf", "amavis.cf", "cron")
MAX_LISTED = 25  # unmanaged entries listed by name before "... and N more"


def entry_text(change: dict[str, Any]) -> str:
    """One line for one entry: kind, key and value (never a secret: the dict holds none).

    Keys and values can come from files on the volume, so control characters are made visible.
    """
    return printable(_entry_text(change))


def _entry_text(change: dict[str, Any]) -> str:
    kind, key = change["kind"], change["key"]
    value = change["after"] if change["after"] is not None else change["before"]
    value = value or {}
    if kind == "account":
        return f"account {key}  password = {value.get('password')}"
    if kind == "quota":
        return f"quota {key} = {value.get('quota')}"
    if kind in ("alias", "catch_all", "devnull", "self_alias"):
        label = {"catch_all": "catch-all", "self_alias": "self-alias", "devnull": "devnull"}.get(kind, kind)
        targets = ", ".join(value.get("targets", []))
        extra = "  (keeps its own mail in a catch-all domain)" if kind == "self_alias" else ""
        return f"{label} {key} -> {targets}{extra}"
    if kind == "local_alias":
        return f"local alias {key}: {value.get('target')}"
    if kind == "quarantine":
        return f"quarantine ${key} = {value.get('mailbox')}"
    if kind == "sa_learn":
        return key
    return f"{kind} {key}"


def text(plan: dict[str, Any], *, colour: bool = False) -> str:
    """The Terraform-like plan: legend, entries grouped by file, unmanaged, summary line."""
    style: Callable[..., str] = click.style if colour else (lambda s, **_: s)
    out: list[str] = []
    changes = plan["changes"]
    paths = {f["name"]: f["path"] for f in plan["files"]}
    if changes:
        used = [a for a in ("create", "update", "delete") if any(c["actions"][0] == a for c in changes)]
        out.append("dms-reconciler will perform the following actions:")
        out.append("  " + "   ".join(style(f"{SYMBOLS[a]} {LEGEND[a]}", fg=COLOURS[a]) for a in used))
        for name in FILE_ORDER:
            group = [c for c in changes if c["file"] == name]
            if not group:
                continue
            title = name if name != "cron" else printable(
                f"{paths.get('cron', 'cron')} (sa-learn cron file)")
            out.append("")
            out.append(style(f"# {title}", bold=True))
            for c in group:
                action = c["actions"][0]
                line = f"  {SYMBOLS[action]} {entry_text(c)}"
                if c["reason"]:
                    line += f"  # {c['reason']}"
                out.append(style(line, fg=COLOURS[action]))
                for detail in c["details"]:
                    out.append(printable(f"      {detail}"))
    unmanaged = plan["unmanaged"]
    if unmanaged:
        out.append("")
        out.append(
            f"{len(unmanaged)} unmanaged entr{'y' if len(unmanaged) == 1 else 'ies'} kept (not in "
            "mailserver.yaml and not written by dms-reconciler; --prune deletes them):"
        )
        for u in unmanaged[:MAX_LISTED]:
            out.append(printable(f"  {u['file']}: {u['kind'].replace('_', '-')} {u['key']}"))
        if len(unmanaged) > MAX_LISTED:
            out.append(f"  ... and {len(unmanaged) - MAX_LISTED} more (see --format json)")
    if plan["unresolved_secrets"]:
        n = len(plan["unresolved_secrets"])
        out.append("")
        out.append(printable(f"{n} password(s) could not be read offline and are {RESOLVED}: "
                             + ", ".join(plan["unresolved_secrets"][:MAX_LISTED])))
    for title, items, colour_name in (("Warning", plan["warnings"], "yellow"), ("Note", plan["notes"], None)):
        for item in items:
            line = printable(f"{title}: {item}")
            out.append("")
            out.append(style(line, fg=colour_name) if colour_name else line)
    deletions = plan["deletions"]
    if deletions["over_limit"]:
        out.append("")
        out.append(style(
            f"Refused at apply: {deletions['accounts']} account deletion(s) exceed the limit of "
            f"{deletions['limit']} ({deletions['limit_source']}); apply needs "
            f"--allow-deletions {deletions['accounts']}", fg="red", bold=True))
    out.append("")
    out.append(summary_line(plan))
    return "\n".join(out) + "\n"


RESOLVED = "resolved at apply"


def summary_line(plan: dict[str, Any]) -> str:
    s = plan["summary"]
    if not plan["changes"]:
        return "No changes. The config volume matches mailserver.yaml."
    return f"Plan: {s['add']} to add, {s['change']} to change, {s['destroy']} to destroy."


def _code(text: str) -> str:
    """Text for an inline code span: a backtick would end the span early."""
    return printable(text).replace("`", "\\x60")


def markdown(plan: dict[str, Any]) -> str:
    """A pull-request comment: summary first, each file's entries folded, deletes called out."""
    out = ["### dms-reconciler plan", "", f"**{summary_line(plan)}**", ""]
    changes = plan["changes"]
    deletes = [c for c in changes if c["actions"][0] == "delete"]
    if deletes:
        accounts = [c for c in deletes if c["kind"] == "account"]
        out.append(f"> [!WARNING]\n> This change deletes {len(deletes)} entr"
                   f"{'y' if len(deletes) == 1 else 'ies'}"
                   + (f", including {len(accounts)} account(s) (their maildirs are kept)" if accounts else "")
                   + ".")
        out.append("")
    if plan["deletions"]["over_limit"]:
        d = plan["deletions"]
        out.append(f"> [!CAUTION]\n> {d['accounts']} account deletions exceed the limit of {d['limit']} "
                   f"({d['limit_source']}): apply will refuse without `--allow-deletions`.")
        out.append("")
    for name in FILE_ORDER:
        group = [c for c in changes if c["file"] == name]
        if not group:
            continue
        counts = {a: sum(c["actions"][0] == a for c in group) for a in SYMBOLS}
        label = "sa-learn cron file" if name == "cron" else f"`{name}`"
        badge = ", ".join(f"{n} {LEGEND[a].split()[0]}" for a, n in counts.items() if n)
        out.append(f"<details><summary>{label}: {badge}</summary>")
        out.append("")
        out.append("```diff")
        for c in group:
            line = f"{SYMBOLS[c['actions'][0]]} {entry_text(c)}"
            if c["reason"]:
                line += f"  # {c['reason']}"
            out.append(line.replace("```", "'''"))
            out.extend(printable(f"{' ' if c['actions'][0] != 'delete' else '-'}     {d}")
                       .replace("```", "'''") for d in c["details"])
        out.append("```")
        out.append("</details>")
        out.append("")
    if plan["unmanaged"]:
        out.append(f"<details><summary>{len(plan['unmanaged'])} unmanaged entries kept</summary>")
        out.append("")
        for u in plan["unmanaged"][:100]:
            out.append(f"- `{u['file']}`: {u['kind'].replace('_', '-')} `{_code(u['key'])}`")
        if len(plan["unmanaged"]) > 100:
            out.append(f"- ... and {len(plan['unmanaged']) - 100} more")
        out.append("</details>")
        out.append("")
    for title, items in (("Warnings", plan["warnings"]), ("Notes", plan["notes"])):
        if items:
            out.append(f"**{title}**")
            out.append("")
            out.extend(f"- {printable(item)}" for item in items)
            out.append("")
    if plan["unresolved_secrets"]:
        out.append(f"_{len(plan['unresolved_secrets'])} password(s) are {RESOLVED} (no secrets in CI)._")
        out.append("")
    return "\n".join(out)

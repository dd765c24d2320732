"""Show a plan to people: Terraform-style text and a Markdown form for pull-request comments.

Both read the plan's JSON dictionary (`Plan.to_dict`), never the internal objects, so what a human
sees is exactly what a machine gets. Neither can show a secret: the dictionary has none.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click

from reconciler.errors import printable

SYMBOLS = {"create": "+", "update": "~", "delete": "-"}
COLOURS = {"create": "green", "update": "yellow", "delete": "red"}
LEGEND = {"create": "create", "update": "update in place", "delete": "destroy"}
FILE_ORDER = (
    "postfix-accounts.cf",
    "dovecot-quotas.cf",
    "postfix-virtual.cf",
    "postfix-aliases.cf",
    "amavis.cf",
    "cron",
    "dovecot-masters.cf",
    "postfix-regexp.cf",
    "postfix-send-access.cf",
    "postfix-receive-access.cf",
    "postfix-relaymap.cf",
    "postfix-sasl-password.cf",
    "opendkim/keys",
    "opendkim/TrustedHosts",
    "opendkim/KeyTable",
    "opendkim/SigningTable",
)
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
        label = {"catch_all": "catch-all", "self_alias": "self-alias", "devnull": "devnull"}.get(
            kind, kind
        )
        targets = ", ".join(value.get("targets", []))
        keeps = kind == "self_alias" and change["after"] is not None
        extra = "  (keeps its own mail in a catch-all domain)" if keeps else ""
        return f"{label} {key} -> {targets}{extra}"
    if kind == "self_route":
        targets = value.get("targets", [])
        extension = any("+${1}@" in t for t in targets)
        why = "and its +extension addresses" if extension else "keeps its own mail"
        return f"self-route {key} -> {', '.join(targets)}  ({why} in a catch-all domain)"
    if kind == "local_alias":
        return f"local alias {key}: {value.get('target')}"
    if kind == "quarantine" and key == "block":
        return "quarantine block (marked dms-reconciler) in amavis.cf"
    if kind == "quarantine":
        return f"quarantine ${key} = {value.get('mailbox')}"
    if kind == "sa_learn":
        return key
    return _setup_entry_text(kind, key, value)


def _setup_entry_text(kind: str, key: str, value: dict[str, Any]) -> str:
    """Entries of dovecot-masters.cf, postfix-regexp.cf, the access, relay and OpenDKIM files."""
    if kind == "master":
        return f"master user {key}  password = {value.get('password')}"
    if kind == "regexp_alias" and key == "(order)":
        return "regexp alias order: " + " , ".join(value.get("order", []))
    if kind == "regexp_alias":
        return f"regexp alias {key} -> {', '.join(value.get('targets', []))}"
    if kind == "restrict":
        return f"restrict {key}: {value.get('action')}"
    if kind == "relay":
        return f"relay {key} via {value.get('relay')}"
    if kind == "relay_auth":
        return f"relay credentials {key}: {value.get('username')}:{value.get('password')}"
    if kind == "dkim_key":
        return f"DKIM key {key}: {value.get('key')}"
    if kind == "dkim":
        return f"DKIM {key} {value.get('value')}"
    if kind == "rspamd_directive":
        return f"directive {key}  ({value.get('value')})"
    if kind in ("rspamd_learn",):
        return key
    if kind.startswith("rspamd_"):
        return f"{_kind_label(kind)} {key} = {value.get('value')}"
    return f"{kind} {key}"


def text(plan: dict[str, Any], *, colour: bool = False) -> str:
    """The Terraform-like plan: legend, entries grouped by file, unmanaged, summary line."""
    style: Callable[..., str] = click.style if colour else (lambda s, **_: s)
    out: list[str] = []
    changes = plan["changes"]
    paths = {f["name"]: f["path"] for f in plan["files"]}
    if changes:
        used = [
            a for a in ("create", "update", "delete") if any(c["actions"][0] == a for c in changes)
        ]
        out.append("dms-reconciler will perform the following actions:")
        out.append(
            "  " + "   ".join(style(f"{SYMBOLS[a]} {LEGEND[a]}", fg=COLOURS[a]) for a in used)
        )
        for name in _file_order(changes):
            group = [c for c in changes if c["file"] == name]
            if not group:
                continue
            title = (
                name
                if name != "cron"
                else printable(f"{paths.get('cron', 'cron')} (sa-learn cron file)")
            )
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
        out.append(
            printable(
                f"{n} password(s) could not be read offline and are {RESOLVED}: "
                + ", ".join(plan["unresolved_secrets"][:MAX_LISTED])
            )
        )
    for title, items, colour_name in (
        ("Warning", plan["warnings"], "yellow"),
        ("Note", plan["notes"], None),
    ):
        for item in items:
            line = printable(f"{title}: {item}")
            out.append("")
            out.append(style(line, fg=colour_name) if colour_name else line)
    deletions = plan["deletions"]
    if deletions["accounts"] > deletions["limit"]:
        out.append("")
        out.append(
            style(
                f"Refused at apply: {deletions['accounts']} account deletion(s) exceed the "
                f"limit of {deletions['limit']} ({deletions['limit_source']}); apply needs "
                f"--allow-deletions {deletions['accounts']}",
                fg="red",
                bold=True,
            )
        )
    for guard in deletions.get("files", ()):  # the guards of the other files, when over
        out.append("")
        out.append(
            style(
                printable(
                    f"Refused at apply: {guard['deletions']} deletion(s) in {guard['file']} "
                    f"exceed the limit of {guard['limit']} ({guard['limit_source']}); apply "
                    f"needs --allow-deletions {guard['deletions']}"
                ),
                fg="red",
                bold=True,
            )
        )
    if out:  # a blank line before the summary, but none before a lone "No changes." line
        out.append("")
    out.append(style(summary_line(plan), bold=True))
    while out[0] == "":  # a plan without changes starts with its unmanaged list or warnings
        out.pop(0)
    revision = revision_line(plan)
    if revision:
        out[:0] = [revision, ""]
    return "\n".join(out) + "\n"


def revision_line(plan: dict[str, Any]) -> str | None:
    """`Desired state: FILE at git commit 0123456789ab` (and whether it has uncommitted changes),
    when the file is in a git work tree (`desired.revision`)."""
    desired = plan.get("desired")
    if not isinstance(desired, dict):
        return None
    revision = desired.get("revision")
    if not isinstance(revision, str) or not revision:
        return None
    commit = revision.removesuffix("-dirty")
    dirty = " (with changes not committed)" if revision.endswith("-dirty") else ""
    return printable(f"Desired state: {desired.get('file', '')} at git commit {commit[:12]}{dirty}")


RESOLVED = "resolved at apply"


def _file_order(changes: list[dict[str, Any]]) -> list[str]:
    """FILE_ORDER, then any other file the plan names (a newer plan format's), as they come."""
    return [*FILE_ORDER, *dict.fromkeys(c["file"] for c in changes if c["file"] not in FILE_ORDER)]


def summary_line(plan: dict[str, Any]) -> str:
    s = plan["summary"]
    if not plan["changes"]:
        return "No changes. The config volume matches mailserver.yaml."
    return f"Plan: {s['add']} to add, {s['change']} to change, {s['destroy']} to destroy."


# --- Markdown, for a pull-request comment ------------------------------------------------------
#
# Everything that comes from a file (addresses, alias targets, unmanaged lines, warning text) is
# put inside code spans or fenced code blocks, or escaped: none of it can open HTML, close a
# <details>, mention a GitHub user (`@example.com`), link an issue (`#12`) or autolink an address.

MARKDOWN_MAX_CHARS = 60_000  # GitHub refuses comments over 65,536 characters
VERBS = {"create": "add", "update": "change", "delete": "destroy"}  # the summary line's words
MD_SYMBOLS = {"create": "+", "update": "!", "delete": "-"}  # `!` is GitHub's orange "changed" line
MASS_CHANGE = 50  # entries; a plan this big gets a call-out of its own
KIND_ORDER = (
    "account",
    "quota",
    "alias",
    "catch_all",
    "devnull",
    "self_alias",
    "self_route",
    "local_alias",
    "quarantine",
    "sa_learn",
    "master",
    "regexp_alias",
    "restrict",
    "relay",
    "relay_auth",
    "dkim",
    "dkim_key",
    "rspamd_action",
    "rspamd_sender",
    "rspamd_module",
    "rspamd_option",
    "rspamd_controller",
    "rspamd_learn",
    "rspamd_directive",
)
MAX_NAMED = 10  # accounts named in a call-out before "and N more"
MAX_SHOWN_CHARS = 300  # one value in a comment; longer ones are cut
FULL_PLAN_HINT = (
    "the full plan is in the JSON form: `dms-reconciler plan --format json` (the CI "
    "example uploads it as the `dms-reconciler-plan` artifact)"
)
_MD_SPECIAL = set("\\`*_{}[]()#+-.!|~>")
_SUSPECT = ("@", "#", ":", "/", "www.")


def _clean(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """One printable line: control characters made visible, length capped."""
    text = "".join(ch if ch.isprintable() else "\ufffd" for ch in str(value).replace("\t", " "))
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _longest_backticks(text: str) -> int:
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return longest


def md_code(value: Any) -> str:
    """An inline code span that no content can break out of."""
    text = _clean(value)
    fence = "`" * (_longest_backticks(text) + 1)
    edge_space = text.startswith(" ") and text.endswith(" ") and text.strip() != ""
    pad = " " if text.startswith("`") or text.endswith("`") or edge_space else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_text(value: Any) -> str:
    """Prose with Markdown and HTML neutralised; tokens that GitHub would link become code, and
    the code spans our own messages write (`docker compose up -d`) stay one code span each."""
    text = _clean(value, 2000)
    out, pos = [], 0
    for span in _CODE_SPAN.finditer(text):
        out += [_md_words(text[pos : span.start()]), md_code(span.group(2))]
        pos = span.end()
    out.append(_md_words(text[pos:]))
    return "".join(out)


_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")


def _md_words(text: str) -> str:
    out = []
    for token in text.split(" "):
        bare = token.removesuffix(":")  # "changed:" links nothing; "https://" does
        if any(mark in bare for mark in _SUSPECT) or "`" in token:
            # prose parentheses around a path or address stay outside its code span:
            # "(see docs/real-dms.md)" -> \(see `docs/real-dms.md`\)
            opened = len(token) - len(token.lstrip("("))
            closed = len(token) - len(token.rstrip(")"))
            lead = min(opened, max(0, token.count("(") - token.count(")")))
            tail = min(closed, max(0, token.count(")") - token.count("(")))
            core = token[lead : len(token) - tail]
            out.append("\\(" * lead + md_code(core) + "\\)" * tail if core else md_code(token))
        else:
            escaped = "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in token)
            out.append(escaped.replace("&", "&amp;").replace("<", "&lt;"))
    return " ".join(out)


def _fence(lines: list[str], info: str = "") -> list[str]:
    """A fenced code block longer than any backtick run inside it."""
    fence = "`" * max(3, max((_longest_backticks(line) for line in lines), default=0) + 1)
    return [fence + info, *lines, fence]


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _named(keys: list[str]) -> str:
    shown = ", ".join(md_code(k) for k in keys[:MAX_NAMED])
    return shown + (f" and {len(keys) - MAX_NAMED} more" if len(keys) > MAX_NAMED else "")


def _kind_label(kind: str) -> str:
    return {
        "catch_all": "catch-all",
        "self_alias": "self-alias",
        "self_route": "self-route",
        "local_alias": "local alias",
        "sa_learn": "sa-learn job",
        "devnull": "devnull address",
        "master": "master user",
        "regexp_alias": "regexp alias",
        "relay_auth": "relay credential",
        "dkim": "DKIM table entry",
        "dkim_key": "DKIM key",
        "rspamd_action": "Rspamd threshold",
        "rspamd_sender": "Rspamd sender",
        "rspamd_module": "Rspamd module",
        "rspamd_option": "Rspamd option",
        "rspamd_controller": "Rspamd controller",
        "rspamd_learn": "Rspamd learn job",
        "rspamd_directive": "custom-commands.conf directive",
    }.get(kind, kind)


def _baseline_line(plan: dict[str, Any]) -> str | None:
    base = plan.get("baseline")
    if not isinstance(base, dict):
        return None
    if base.get("kind") == "git":
        where = (
            f"{md_code(base.get('path', ''))} at {md_code(base.get('ref', ''))} "
            f"({md_code(str(base.get('commit', ''))[:12])})"
        )
        if not base.get("found"):
            return f"Compared with {where}, where the file does not exist yet: everything is new."
        return (
            f"Compared with {where}. Secrets are not read here: passwords from files and "
            "variables are compared by their source."
        )
    if base.get("kind") == "dir":
        return f"Compared with a copy of a config volume, {md_code(base.get('config_dir', ''))}."
    return None


def _callouts(plan: dict[str, Any]) -> list[str]:
    changes = plan["changes"]
    out: list[str] = []
    deletions = plan["deletions"]
    if deletions["accounts"] > deletions["limit"]:
        refused = (
            f"> Apply will refuse this plan: it deletes "
            f"{_plural(deletions['accounts'], 'account')}, more than the limit of "
            f"{deletions['limit']} ({md_text(deletions['limit_source'])}). After review, "
            f"apply it with `--allow-deletions {deletions['accounts']}`."
        )
        out += ["> [!CAUTION]", refused, ""]
    for guard in deletions.get("files", ()):  # the guards of the other files, when over
        entries = _plural(guard["deletions"], "entry", "entries")
        refused = (
            f"> Apply will refuse this plan: it deletes {entries} "
            f"of {md_text(guard['file'])}, more than the limit of {guard['limit']} "
            f"({md_text(guard['limit_source'])}). After review, apply it with "
            f"`--allow-deletions {guard['deletions']}`."
        )
        out += ["> [!CAUTION]", refused, ""]
    deletes = [c for c in changes if c["actions"][0] == "delete"]
    if deletes:
        by_kind: dict[str, int] = {}
        for c in sorted(
            deletes,
            key=lambda c: (
                KIND_ORDER.index(c["kind"]) if c["kind"] in KIND_ORDER else len(KIND_ORDER)
            ),
        ):
            by_kind[c["kind"]] = by_kind.get(c["kind"], 0) + 1
        kinds = ", ".join(
            _plural(n, _kind_label(k), _kind_label(k) + ("es" if k.endswith("s") else "s"))
            for k, n in by_kind.items()
        )
        destroys = f"> This change destroys {_plural(len(deletes), 'entry', 'entries')}: {kinds}."
        out += ["> [!WARNING]", destroys]
        accounts = [c["key"] for c in deletes if c["kind"] == "account"]
        if accounts:
            out.append(
                f"> Accounts deleted: {_named(accounts)}. Their mail under `/var/mail` is kept."
            )
        out.append("")
    if len(changes) >= MASS_CHANGE:
        touched = sum(c["kind"] == "account" for c in changes)
        large = (
            f"> A large change: {_plural(len(changes), 'entry', 'entries')}, "
            f"{_plural(touched, 'account')} among them. Review it in full before merging."
        )
        out += ["> [!IMPORTANT]", large, ""]
    return out


def _table(plan: dict[str, Any]) -> list[str]:
    rows = ["| file | to add | to change | to destroy |", "|---|--:|--:|--:|"]
    for name in _file_order(plan["changes"]):
        group = [c for c in plan["changes"] if c["file"] == name]
        if not group:
            continue
        label = md_code(name) if name != "cron" else "sa-learn cron file"
        counts = [sum(c["actions"][0] == a for c in group) for a in ("create", "update", "delete")]
        rows.append(f"| {label} | " + " | ".join(str(n) for n in counts) + " |")
    return rows + [""]


def _entry_lines(change: dict[str, Any]) -> list[str]:
    action = change["actions"][0]
    line = f"{MD_SYMBOLS[action]} {_clean(entry_text(change), 1000)}"
    if change["reason"]:
        line += f"  # {_clean(change['reason'])}"
    return [line] + [f"#     {_clean(d)}" for d in change["details"]]


def markdown(plan: dict[str, Any], *, max_chars: int = MARKDOWN_MAX_CHARS) -> str:
    """A pull-request comment: summary first, each file's entries folded, deletes called out.

    The result never exceeds `max_chars`: entries that do not fit are counted, not shown, with a
    pointer to the JSON form.
    """
    changes = plan["changes"]
    head = ["### dms-reconciler plan", "", f"**{summary_line(plan)}**", ""]
    base = _baseline_line(plan)
    if base:
        head += [base, ""]
    revision = plan.get("desired", {}).get("revision")
    if isinstance(revision, str) and revision:
        dirty = " with changes not committed" if revision.endswith("-dirty") else ""
        commit = revision.removesuffix("-dirty")
        head += [f"Desired state at git commit {md_code(commit[:12])}{dirty}.", ""]
    head += _callouts(plan)
    if changes:
        head += _table(plan)
        passwords = [
            c["key"] for c in changes if c["kind"] == "account" and c["actions"][0] == "update"
        ]
        if passwords:
            head += [f"Password changes: {_named(passwords)} (values are never shown).", ""]
    tail: list[str] = []
    if plan["unresolved_secrets"]:
        n = len(plan["unresolved_secrets"])
        unresolved = (
            f"_{_plural(n, 'password')} from a file or variable that cannot be read "
            f"here {'is' if n == 1 else 'are'} {RESOLVED}._"
        )
        tail += [unresolved, ""]

    body: list[str] = []
    budget = max_chars - len("\n".join(head + tail)) - 1000  # room for the cut notice
    shown = 0
    cut = False

    def fits(lines: list[str]) -> bool:
        return len("\n".join(body + lines)) < budget

    for name in _file_order(changes):
        group = [c for c in changes if c["file"] == name]
        if not group or cut:
            continue
        counts = {a: sum(c["actions"][0] == a for c in group) for a in SYMBOLS}
        badge = ", ".join(f"{n} to {VERBS[a]}" for a, n in counts.items() if n)
        label = "sa-learn cron file" if name == "cron" else f"<code>{name}</code>"
        opening = [f"<details><summary>{label}: {badge}</summary>", ""]
        entries: list[str] = []
        for c in group:
            lines = _entry_lines(c)
            if not fits(opening + _fence(entries + lines, "diff") + ["</details>"]):
                cut = True
                break
            entries += lines
            shown += 1
        if entries:
            body += opening + _fence(entries, "diff") + ["", "</details>", ""]
    body += _other_sections(plan, fits)
    notice: list[str] = []
    if cut:
        cut_text = (
            f"> This plan is too long for one comment: {shown} of {len(changes)} entries "
            f"are shown; {FULL_PLAN_HINT}."
        )
        notice = ["> [!NOTE]", cut_text, ""]
    text = "\n".join(head + notice + body + tail).rstrip("\n") + "\n"
    if len(text) > max_chars:  # a pathological header (thousands of long warnings): hard cut
        text = text[: max_chars - 200].rsplit("\n", 1)[0] + f"\n\n_(cut: {FULL_PLAN_HINT})_\n"
    return text


def _other_sections(plan: dict[str, Any], fits: Callable[[list[str]], bool]) -> list[str]:
    """Unmanaged entries, warnings and notes: each folded, and left out when there is no room."""
    out: list[str] = []
    unmanaged = plan["unmanaged"]
    if unmanaged:
        lines = [
            f"{u['file']}: {_kind_label(u['kind'])} {_clean(u['key'])}" for u in unmanaged[:100]
        ]
        if len(unmanaged) > 100:
            lines.append(f"... and {len(unmanaged) - 100} more")
        title = _plural(len(unmanaged), "unmanaged entry", "unmanaged entries")
        summary = (
            f"<details><summary>{title} kept (not in mailserver.yaml, not written by "
            "dms-reconciler; <code>--prune</code> deletes them)</summary>"
        )
        section = [summary, "", *_fence(lines, "text"), "", "</details>", ""]
        if fits(out + section):
            out += section
    for title, items, box in (
        ("Warnings", plan["warnings"], "WARNING"),
        ("Notes", plan["notes"], "NOTE"),
    ):
        if not items:
            continue
        section = [f"> [!{box}]", f"> **{title}**", ">"]
        section += [f"> - {md_text(item)}" for item in items[:50]]
        if len(items) > 50:
            section.append(f"> - ... and {len(items) - 50} more")
        section.append("")
        if fits(out + section):
            out += section
    return out


def markdown_error(report: dict[str, Any]) -> str:
    """A failed plan or apply as a pull-request comment: the error and, for an invalid file,
    every positioned diagnostic in a code block (their text comes from the file)."""
    out = ["### dms-reconciler plan", "", f"**Failed:** {md_text(report['error'])}", ""]
    lines = []
    for d in report["errors"] + report["warnings"]:
        where = d["file"] + (f":{d['line']}:{d['column'] or 1}" if d["line"] is not None else "")
        path = f"{d['path']}: " if d["path"] else ""
        lines.append(_clean(f"{where}: {d['severity']}: {path}{d['message']}", 2000))
    if lines:
        out += _fence(lines, "text") + [""]
    return "\n".join(out)

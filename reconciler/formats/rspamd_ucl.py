"""Rspamd override files (`rspamd/override.d/*.conf|*.inc` on the volume), read at the top level.

DMS copies the volume's `rspamd/override.d/` to /etc/rspamd/override.d/ at start-up and, on any
change there, empties /etc/rspamd/override.d/ and copies the folder again (v16's change detector,
`_rspamd_changes`); Rspamd includes `override.d/<name>` for the names in `OVERRIDE_FILES`, with
the highest priority. What lives there lasts; what custom-commands.conf made at start-up does not.

Only the top level is read: an item is a setting `name = value;` on one line, or a block
`name { ... }` (or `name = [ ... ]`) kept as its lines, braces counted outside quoted strings. A
line that is neither, a block that never closes and a second item with the same name (UCL would
merge it into an implicit array) are kept as they are, after the items, and reported: a file
holding such lines is not rewritten by the kinds. What we write is simple, canonical UCL: one
`name = value;` per line, strings double-quoted, and blocks of such lines indented by two.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.formats._lines import HEADER, ParsedFile, Problem, RenderRefused

DIRECTORY = "rspamd/override.d"
# Every name Rspamd 3.12.1 (DMS v16's) includes from override.d (`grep -rh '^[^#]*\.include.*
# override\.d/' /etc/rspamd/` in the image): a file by any other name is never read.
OVERRIDE_FILES = frozenset(
    """actions.conf antivirus.conf antivirus_group.conf arc.conf asn.conf aws_s3.conf
    bayes_expiry.conf bimi.conf chartable.conf classifier-bayes.conf clickhouse.conf
    composites.conf content_group.conf contextal.conf dcc.conf dkim.conf dkim_signing.conf
    dmarc.conf elastic.conf emails.conf excessb64_group.conf excessqp_group.conf
    external_relay.conf external_services.conf external_services_group.conf fann_redis.conf
    force_actions.conf forged_recipients.conf fuzzy_check.conf fuzzy_group.conf gpt.conf
    greylist.conf groups.conf headers_group.conf hfilter.conf hfilter_group.conf
    history_redis.conf http_headers.conf known_senders.conf lang_detection.inc logging.inc
    maillist.conf metadata_exporter.conf metric_exporter.conf metrics.conf mid.conf
    milter_headers.conf mime_types.conf mime_types_group.conf mua_group.conf multimap.conf
    mx_check.conf neural.conf neural_group.conf once_received.conf options.inc p0f.conf
    phishing.conf phishing_group.conf policies_group.conf ratelimit.conf rbl.conf rbl_group.conf
    redis.conf regexp.conf replies.conf reputation.conf rmilter_headers.conf rspamd_update.conf
    senderscore_group.conf settings.conf spamassassin.conf spamtrap.conf spf.conf statistic.conf
    statistics_group.conf subject_group.conf surbl.conf surbl_group.conf trie.conf
    url_redirector.conf whitelist.conf whitelist_group.conf worker-controller.inc
    worker-fuzzy.inc worker-normal.inc worker-proxy.inc""".split()
)
# Rspamd 3.12.1's modules that read `enabled` from override.d/<module>.conf (`rspamadm configdump
# --modules-state` in the image, those with an override.d include). `multimap` is left out: its
# override file holds the sender lists (rspamd.senders).
MODULES = frozenset(
    """antivirus arc asn aws_s3 bayes_expiry bimi chartable clickhouse contextal dcc dkim
    dkim_signing dmarc elastic emails external_relay external_services force_actions
    forged_recipients fuzzy_check gpt greylist history_redis http_headers known_senders maillist
    metadata_exporter metric_exporter mid milter_headers mime_types mx_check neural
    once_received p0f phishing ratelimit rbl regexp replies reputation rspamd_update settings
    spamassassin spamtrap spf trie url_redirector whitelist""".split()
)
# Sections that take `set-option-for-module NAME ...` (override.d/NAME.conf) beyond the modules:
# the Bayes classifier (DMS's own example) and the statistic section.
OPTION_SECTIONS = MODULES | {"classifier-bayes", "statistic"}

_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_SETTING = re.compile(rf"\s*(?P<key>{_NAME})\s*[=:]\s*(?P<value>[^\s{{\[].*?)\s*;?\s*\Z")
_OPEN = re.compile(rf"\s*(?P<key>{_NAME})\s*(=\s*)?[{{\[]")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True)
class Item:
    """A top-level item: a setting (`value` is its UCL text, without the `;`) or a block (`body`:
    its lines, from the one that opens it to the one that closes it)."""

    key: str
    value: str | None = None
    body: tuple[str, ...] = ()

    def lines(self) -> tuple[str, ...]:
        return self.body if self.value is None else (f"{self.key} = {self.value};",)


def file_name(name: str) -> str:
    """`rspamd/override.d/<name>`: the logical name of an override file."""
    return f"{DIRECTORY}/{name}"


def is_override_file(name: str) -> bool:
    """A logical name of a file in rspamd/override.d/ (not a map file)."""
    return name.startswith(DIRECTORY + "/") and name.endswith((".conf", ".inc"))


def ucl_value(value: str | int | float | bool) -> str:
    """A scalar as canonical UCL: booleans, numbers as written, strings double-quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + value + '"'


def value_problem(value: str) -> str | None:
    """Why a string cannot be a quoted UCL value that stays one line and one value."""
    bad = sorted({c for c in value if ord(c) < 32 or ord(c) == 127 or c in '"\\;{}'})
    if bad:
        shown = ", ".join("a line break" if c == "\n" else repr(c) for c in bad[:4])
        return f"holds {shown}, which would end the value or the line in Rspamd's UCL file"
    if not value.isascii():
        return "holds characters outside ASCII; give them as plain ASCII text"
    return None


def _depth(line: str) -> int:
    """Brace and bracket balance of a line, outside quoted strings and `#` comments."""
    text = _STRING.sub('""', line)
    text = text.split("#", 1)[0]
    return text.count("{") + text.count("[") - text.count("}") - text.count("]")


def _breaks(value: str) -> bool:
    """A setting's value that would not stay one value: a line break, or outside its quoted
    strings an unbalanced quote, a `;`, a brace or bracket."""
    if any(c in value for c in "\n\r\0"):
        return True
    outside = _STRING.sub("", value)
    return any(c in outside for c in '";{}[]')


def parse(text: str) -> ParsedFile[Item]:
    entries: dict[str, Item] = {}
    comments: list[str] = []
    invalid: list[str] = []
    problems: list[Problem] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].rstrip("\r")
        i += 1
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if stripped != HEADER:
                comments.append(line.rstrip())
            continue
        item: Item | None = None
        kept = [line]
        opened = _OPEN.match(line)
        if opened and _depth(line) > 0:
            depth = _depth(line)
            while depth > 0 and i < len(lines):
                kept.append(lines[i].rstrip("\r"))
                depth += _depth(lines[i])
                i += 1
            if depth == 0:
                item = Item(opened["key"], None, tuple(kept))
            else:
                while kept and not kept[-1].strip():
                    kept.pop()
                problems.append(Problem(number, "block never closes; kept as it is"))
        elif (setting := _SETTING.match(line)) and _depth(line) == 0 and "\0" not in line:
            item = Item(setting["key"], setting["value"])
        else:
            problems.append(Problem(number, "not a top-level `name = value;` or block; kept"))
        if item is not None and item.key in entries:
            problems.append(
                Problem(number, f"'{item.key}' again: UCL merges the two; kept as it is")
            )
            item = None
        if item is None:
            invalid.extend(kept)
        else:
            entries[item.key] = item
    return ParsedFile(entries, tuple(comments), tuple(invalid), tuple(problems))


def render(
    items: Iterable[Item],
    *,
    comments: Iterable[str] = (),
    invalid: Iterable[str] = (),
    filename: str = "override file",
) -> str:
    """Header, comments, items, kept lines; read back and refused unless the same."""
    items = list(items)
    comments = list(comments)
    invalid = list(invalid)
    for item in items:
        if item.value is not None and _breaks(item.value):
            raise RenderRefused(filename, item.key, "a value holds a quote, `;` or brace")
    out = [HEADER, *comments, *(line for item in items for line in item.lines()), *invalid]
    text = "\n".join(out) + "\n"
    again = parse(text)
    if list(again.entries.values()) != items:
        for n, item in enumerate(items):
            got = list(again.entries.values())
            if n >= len(got) or got[n] != item:
                raise RenderRefused(filename, item.key, "a value holds a line break or `;`")
        raise RenderRefused(filename, None, "a kept line would read as an item")
    if list(again.comments) != comments:
        raise RenderRefused(filename, None, "a comment would read differently")
    return text


def block(key: str, settings: Iterable[tuple[str, str | int | float | bool]]) -> Item:
    """A block of settings, canonical: `key {`, two-space indented `name = value;`, `}`."""
    inner = [f"  {name} = {ucl_value(value)};" for name, value in settings]
    return Item(key, None, (f"{key} {{", *inner, "}"))


def block_settings(item: Item) -> dict[str, str] | None:
    """A block of one-line settings read back (None: a setting block it is not)."""
    if item.value is not None or len(item.body) < 2:
        return None
    out: dict[str, str] = {}
    for line in item.body[1:-1]:
        if not line.strip() or line.strip().startswith("#"):
            continue
        setting = _SETTING.match(line)
        if setting is None or _depth(line) != 0:
            return None
        out[setting["key"]] = setting["value"]
    return out


def unquote(value: str) -> str | None:
    """A UCL scalar's text -> the string it holds (None: not a plain quoted/bare string)."""
    if len(value) >= 2 and value[0] == value[-1] == '"' and "\\" not in value:
        return value[1:-1]
    if re.fullmatch(r"[A-Za-z0-9_./:@-]+", value):
        return value
    return None


def scalar(value: str) -> str | int | float | bool | None:
    """A UCL scalar's text as the YAML value export writes (None: not one we can say)."""
    if value in ("true", "yes", "on"):
        return True
    if value in ("false", "no", "off"):
        return False
    if re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    if re.fullmatch(r"-?[0-9]+\.[0-9]+", value):
        return float(value)
    text = unquote(value)
    if text is None or value_problem(text):
        return None
    return text

"""Load mailserver.yaml into a validated `DesiredState`, or into a list of positioned errors.

Stage 1 of the pipeline. Three passes, all of which run so every error is reported at once:
the YAML loader (syntax, duplicate keys, bombs), the JSON Schema (types, unknown keys, enums) and
the mail-aware rules (`rules`). Schema messages are rewritten in a mail admin's words and never
quote a password hash. Reads one file; writes nothing; needs no secrets. A SOPS-encrypted file is
checked as committed, its encrypted values opaque (`sops`); they are decrypted at plan and apply.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from itertools import islice
from typing import TYPE_CHECKING, Any

from reconciler.errors import Diagnostic, InvalidDesiredState, Severity
from reconciler.gcpause import paused
from reconciler.load import rules, sops
from reconciler.load.yamlload import (
    MAX_BYTES,
    Document,
    Path,
    YamlLoadError,
    format_path,
    load_yaml_bytes,
    plain_ascii,
)
from reconciler.model import (
    QUARANTINE_KINDS,
    Account,
    Alias,
    CatchAll,
    DesiredState,
    Dkim,
    Learn,
    Master,
    PasswordEnv,
    PasswordFile,
    PasswordHash,
    PasswordSops,
    PasswordSource,
    Policy,
    Quarantine,
    RegexpAlias,
    Relay,
    Restrict,
    Rspamd,
    SaLearnJob,
    UserOwned,
    normalise_targets,
)
from reconciler.readfile import NotReadable, read_regular

if TYPE_CHECKING:
    import jsonschema

    from reconciler.load.yamlchunks import IncrementalLoader

try:  # a compiled validator (Rust): the fast "is it valid?" check, see `_fast_says_valid`
    import jsonschema_rs
except ImportError:  # pragma: no cover - without it every file takes the python-jsonschema path
    jsonschema_rs = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Loaded:
    """A valid desired state, the warnings found on the way, and the bytes it came from."""

    state: DesiredState
    warnings: tuple[Diagnostic, ...]
    sha256: str
    filename: str


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema shipped with the package (a copy of schema/mailserver.schema.json)."""
    text = resources.files("reconciler").joinpath("mailserver.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    import jsonschema  # only needed to explain errors: a valid file never imports it

    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    return cls(schema())


@lru_cache(maxsize=1)
def _fast_validator() -> Any:
    if jsonschema_rs is None:  # pragma: no cover
        return None
    try:
        return jsonschema_rs.validator_for(schema())
    except Exception:  # noqa: BLE001  # pragma: no cover - jsonschema-rs cannot read the schema
        return None


# Keywords of a top-level mapping whose schema judges each entry on its own, plus a count: a
# section with any other keyword is always validated whole.
_ENTRYWISE_KEYWORDS = frozenset(
    {"type", "propertyNames", "additionalProperties", "minProperties", "description", "examples"}
)


@lru_cache(maxsize=1)
def _entrywise_sections() -> dict[str, tuple[int, Any]]:
    """Section -> (its minProperties, a jsonschema-rs validator of a mapping of its entries), for
    the sections `EntryModels` remembers. Such a section is valid when it has enough entries and
    each (key, value) is valid alone: an entry valid in the last valid document is valid now."""
    root = schema()
    out: dict[str, tuple[int, Any]] = {}
    for name in EntryModels.SECTIONS:
        section = root["properties"][name]
        if jsonschema_rs is None or set(section) - _ENTRYWISE_KEYWORDS:
            continue
        entries = {
            "$schema": root["$schema"],
            "$defs": root["$defs"],
            "type": "object",
            "propertyNames": section["propertyNames"],
            "additionalProperties": section["additionalProperties"],
        }
        try:
            out[name] = (section.get("minProperties", 0), jsonschema_rs.validator_for(entries))
        except Exception:  # noqa: BLE001  # pragma: no cover - the whole document is checked then
            continue
    return out


def _without_known_entries(
    value: dict[str, Any], known: EntryModels
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """`value` with each entry-wise section cut to the entries its count needs (a skeleton for
    the whole-document check), and per section the entries not known valid, to check alone."""
    skeleton = dict(value)
    fresh: dict[str, dict[str, Any]] = {}
    for name, (least, _validator) in _entrywise_sections().items():
        mapping = value.get(name)
        if not isinstance(mapping, dict):
            continue  # a wrong type: the whole-document check judges it as it is
        built = known.built_from(name)
        fresh[name] = {
            k: v for k, v in mapping.items() if (b := built.get(k)) is None or b[0] is not v
        }
        skeleton[name] = dict(islice(mapping.items(), least))
    return skeleton, fresh


def _fast_says_valid(
    value: Any, plain: bool | None = None, known: EntryModels | None = None
) -> bool:
    """True only when jsonschema-rs accepts `value` and python-jsonschema is sure to agree.

    With `known` (the sidecar's models of the last valid document), entries of accounts and
    aliases that are the very value objects of that document are not checked again: at 10,000
    accounts and 20,000 aliases, handing the whole document to jsonschema-rs is 50 ms.

    python-jsonschema costs about 100 µs per account or alias (2.6 s for 10,000 accounts and
    20,000 aliases); jsonschema-rs checks the same file in about 15 ms. It is trusted only to say
    "valid", and only for documents whose strings are all printable ASCII and whose other values
    are booleans, nulls, finite floats and ints of safe size: there its regular expressions and
    Python's `re` agree on every pattern in the schema (elsewhere they do not: Python's `\\s`
    also matches \\x1c-\\x1f, and its `$` matches before a final line break). Every other
    document, valid or not, goes through python-jsonschema, whose errors are translated below.
    """
    validator = _fast_validator()
    if plain is None:  # unknown: the incremental loader knows it already for what it parsed
        plain = plain_ascii(value)
    if validator is None or not plain:
        return False
    try:
        if known is not None and isinstance(value, dict):
            value, fresh = _without_known_entries(value, known)
            sections = _entrywise_sections()
            if not all(sections[name][1].is_valid(entries) for name, entries in fresh.items()):
                return False
        return bool(validator.is_valid(value))
    except (ValueError, TypeError, OverflowError):  # python-jsonschema judges what rs cannot
        return False


def read_desired_bytes(path: str) -> bytes:
    """Read the file as a regular file of at most `MAX_BYTES`: a FIFO, device, socket or huge
    file put in its place is refused at once instead of hanging validate, plan or the sidecar."""
    try:
        return read_regular(path, MAX_BYTES)
    except NotReadable as exc:
        hint = " (give the path with -f)" if exc.missing else ""
        message = "file not found" if exc.missing else exc.reason
        raise InvalidDesiredState([Diagnostic(path, None, None, "", message + hint)]) from None


def load_desired(path: str) -> Loaded:
    """Read, check and model `path`; raise `InvalidDesiredState` with every error found."""
    return load_desired_bytes(read_desired_bytes(path), path)


@paused
def load_desired_bytes(
    data: bytes,
    filename: str,
    *,
    loader: IncrementalLoader | None = None,
    models: EntryModels | None = None,
) -> Loaded:
    """`loader` and `models`: the sidecar's, which parse and model again only what changed since
    their last load."""
    import hashlib

    try:
        doc = load_yaml_bytes(data, filename) if loader is None else loader.load(data, filename)
    except YamlLoadError as exc:
        raise InvalidDesiredState(exc.diagnostics) from None
    doc, metadata = _without_sops_block(doc)
    diagnostics = check_document(doc, models, metadata=metadata)
    if any(d.severity is Severity.ERROR for d in diagnostics):
        raise InvalidDesiredState(diagnostics)
    encrypted = None
    if metadata is not None:
        encrypted = sops.SopsFile(
            data,
            filename,
            sops.recipients(metadata),
            tuple(path for path, _ in sops.encrypted_places(doc.value)),
        )
    return Loaded(
        state=build_state(doc.value, models, encrypted=encrypted),
        warnings=tuple(diagnostics),
        sha256=hashlib.sha256(data).hexdigest(),
        filename=filename,
    )


def _without_sops_block(doc: Document) -> tuple[Document, dict[str, Any] | None]:
    """`doc` without SOPS's `sops:` block (its keys and MAC), and that block; positions stay
    those of the committed file."""
    value, metadata = sops.split_metadata(doc.value)
    if metadata is None:
        return doc, None
    import copy

    stripped = copy.copy(doc)  # copies the fields as they are: positions stay unread until needed
    stripped.value = value
    stripped.plain = None
    return stripped, metadata


def check_document(
    doc: Document, known: EntryModels | None = None, *, metadata: dict[str, Any] | None = None
) -> list[Diagnostic]:
    """Schema and mail rules on a loaded document; rules win where both flag the same place, and
    the SOPS checks win over both (an encrypted value where none belongs is said once).
    `known`: the sidecar's models of the last valid document (entries it need not check again).
    `metadata`: the file's `sops:` block, when it is SOPS-encrypted."""
    from_sops = sops.check(doc, metadata)
    encrypted = {d.path for d in from_sops}
    from_rules = [d for d in rules.check(doc) if d.path not in encrypted]
    ruled = {d.path for d in from_rules if d.severity is Severity.ERROR} | encrypted
    from_schema = [d for d in _schema_diagnostics(doc, known) if d.path not in ruled]
    found = _dedupe(from_schema + from_rules + from_sops)
    typed = tuple(_password_values(doc.value))  # once: thousands of warnings may follow
    if typed:  # hash-shaped values are redacted anyway (errors.redact); these may be plaintext
        found = [d.redacted(typed) for d in found]
    return sorted(found, key=Diagnostic.sort_key)


def _password_values(value: Any) -> set[str]:
    """What was typed where a password goes (a password_hash, or a bare string where an account's
    mapping belongs, often a pasted password): never shown in any message, whatever its shape."""
    accounts = value.get("accounts") if isinstance(value, dict) else None
    if not isinstance(accounts, dict):
        return set()
    typed = set()
    for spec in accounts.values():
        candidates = [spec.get(k) for k in sops.SECRET_KEYS] if isinstance(spec, dict) else [spec]
        for candidate in candidates:  # `password`: plaintext, when SOPS did not encrypt it
            if isinstance(candidate, str) and len(candidate) >= 3:
                typed.add(candidate)
    return typed


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[str, str]] = set()
    out = []
    for d in diagnostics:
        if (d.path, d.message) not in seen:
            seen.add((d.path, d.message))
            out.append(d)
    return out


# --- JSON Schema errors, in a mail admin's words ------------------------------------------------

_TYPE_WORDS = {
    "object": "a mapping (key: value lines)",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
    "boolean": "true or false",
}
_SENSITIVE = {"password_hash", "password"}


def _schema_diagnostics(doc: Document, known: EntryModels | None = None) -> list[Diagnostic]:
    if _fast_says_valid(doc.value, doc.plain, known):
        return []
    out: list[Diagnostic] = []
    for error in _validator().iter_errors(doc.value):
        out.extend(_translate(doc, error))
    return out


def _diag(doc: Document, path: Path, message: str, *, key: bool = False) -> Diagnostic:
    line, column = doc.position(path, key=key)
    return Diagnostic(doc.filename, line, column, format_path(path), message)


def _translate(doc: Document, error: jsonschema.ValidationError) -> list[Diagnostic]:
    """One schema error -> zero or more diagnostics (zero where a mail rule says it better)."""
    path: Path = tuple(error.absolute_path)
    kind = error.validator
    expected: Any = error.validator_value  # typed loosely by jsonschema
    sub = error.schema if isinstance(error.schema, dict) else {}
    title = sub.get("title")
    instance: Any = error.instance
    field = path[-1] if path else ""
    if len(path) == 2 and path[0] == "accounts":  # a bare value in an account's place: a password?
        field = "password_hash"  # shown as "that", like any password field

    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(sub.get("properties", {}))
        return [
            _diag(doc, path + (k,), _unknown_key(k, allowed, path), key=True)
            for k in instance
            if k not in sub.get("properties", {})
        ]
    if kind == "required":
        missing = [k for k in expected if k not in (instance or {})]
        return [_diag(doc, path, _missing_key(k, path)) for k in missing]
    if kind in ("propertyNames", "maxLength") or (
        kind == "pattern" and title in ("address", "domain")
    ):
        return []  # addresses and domains: `rules` explains exactly what is wrong
    if kind == "pattern" and (
        field in ("password_hash", "folder") or (path[:1] == ("relay",) and field == "host")
    ):
        return []  # `rules` checks these with friendlier messages
    if kind == "oneOf" and title in ("account", "master", "rspamdController"):
        return []  # password source count: `kinds.accounts.check`, `kinds.masters.check`
    if kind == "oneOf":  # targets: one address or a list of them
        if isinstance(instance, str) or (
            isinstance(instance, list) and instance and all(isinstance(t, str) for t in instance)
        ):
            return []
        if isinstance(instance, list) and not instance:
            return [_diag(doc, path, "the target list is empty; give at least one address")]
        return [
            _diag(doc, path, f"expected an address or a list of addresses, not {_what(instance)}")
        ]
    if field == "quota" or (kind in ("anyOf", "pattern", "const") and "quota" in path):
        return [
            _diag(
                doc,
                path,
                "quota must be 0 (no limit) or a number with a unit B, k, M, G "
                "or T, like 5G or 500M (k is lowercase)",
            )
        ]
    if kind == "const" and path == ("version",):
        return [_diag(doc, path, "version must be 1, the only format version this tool knows")]
    if kind == "type":
        wanted = expected
        below = doc.unindented.get(path) if instance is None and path else None
        if below is not None and "object" in ([wanted] if isinstance(wanted, str) else wanted):
            name = path[-1]
            return [
                _diag(
                    doc,
                    path,
                    f"expected a mapping (key: value lines) under '{name}', but nothing is "
                    f"indented under it: line {below} starts in the same column, so YAML reads "
                    f"it as a sibling of '{name}'; indent the lines that belong to it further",
                )
            ]
        words = " or ".join(
            _TYPE_WORDS.get(w, w) for w in ([wanted] if isinstance(wanted, str) else wanted)
        )
        return [_diag(doc, path, f"expected {words}, not {_what(instance, field)}")]
    if kind == "enum":
        choices = ", ".join(str(c) for c in expected)
        shown = f"'{instance}'" if isinstance(instance, str) else _what(instance)
        return [_diag(doc, path, f"{shown} is not allowed here; use one of: {choices}")]
    if kind == "minProperties" and path == ("accounts",):
        return [
            _diag(
                doc,
                path,
                "at least one account is needed: DMS shuts the container down "
                "when postfix-accounts.cf has none",
            )
        ]
    if kind in ("minItems", "minProperties"):
        return [_diag(doc, path, f"'{format_path(path)}' must not be empty")]
    if kind == "uniqueItems":
        return [_diag(doc, path, "lists the same value twice")]
    if kind == "not" and path and path[0] == "sa_learn":
        return [
            _diag(
                doc,
                path,
                "give either accounts or domains for an sa_learn job, not both "
                "(neither means every account)",
            )
        ]
    if kind == "minimum":
        return [_diag(doc, path, f"must be {expected} or more")]
    if kind == "pattern" and field == "password_env":
        return [
            _diag(
                doc,
                path,
                "password_env must be an environment variable name "
                "(letters, digits and _, not starting with a digit)",
            )
        ]
    if kind == "pattern":
        return [
            _diag(
                doc,
                path,
                f"'{instance}' has an invalid form"
                if field not in _SENSITIVE
                else "has an invalid form",
            )
        ]
    return [_diag(doc, path, f"failed the schema's '{kind}' check")]


def _what(value: Any, field: Any = "") -> str:
    if value is None:
        return "an empty value"
    if field in _SENSITIVE:
        return "that"
    if isinstance(value, bool):
        return f"{str(value).lower()} (true/false)"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string '{value[:60]}'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _unknown_key(key: str, allowed: list[str], path: Path) -> str:
    where = f"under '{format_path(path)}'" if path else "at the top level"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(allowed)}"
    return f"unknown key '{key}' {where}{hint}"


def _missing_key(key: str, path: Path) -> str:
    if not path and key == "accounts":
        return (
            "missing `accounts`: at least one account is needed, DMS shuts the container "
            "down without one"
        )
    if not path and key == "version":
        return "missing `version: 1` (the format version) at the top of the file"
    if not path and key == "domains":
        return "missing `domains`: list every mail domain this server hosts"
    return f"missing required key '{key}'"


# --- building the model ---------------------------------------------------------------------------


class EntryModels:
    """The accounts and aliases of the last `build_state`, by address, with the YAML value each
    was built from.

    `IncrementalLoader` hands back the very same value objects for entries whose text did not
    change, and nothing downstream mutates them, so the model built from the same (address,
    value object) last time is still right: at 10,000 accounts and 20,000 aliases this is most
    of `build_state`'s work. Only the last build is kept: memory does not grow with edits.
    """

    SECTIONS = ("accounts", "aliases")

    def __init__(self) -> None:
        self._last: dict[str, dict[str, tuple[Any, Any]]] = {}

    def built_from(self, section: str) -> dict[str, tuple[Any, Any]]:
        """Key -> (value object, model) of the last build: entries of a valid document."""
        return self._last.get(section, {})

    def build(self, section: str, mapping: dict[str, Any], make: Any) -> tuple[Any, ...]:
        """`make(key, value)` for each entry of `mapping` in key order, from the last build
        where the value is the same object."""
        last = self._last.get(section, {})
        now: dict[str, tuple[Any, Any]] = {}
        out = []
        for key, value in sorted(mapping.items()):
            known = last.get(key)
            if known is None or known[0] is not value:
                known = (value, make(key, value))
            now[key] = known
            out.append(known[1])
        self._last[section] = now
        return tuple(out)


def _account(address: str, spec: dict[str, Any]) -> Account:
    password = _password(spec, ("accounts", address))
    if spec.get("update_password") == "on_create":
        password = UserOwned(password)  # type: ignore[arg-type]  # never nested: built here
    return Account(address=address, password=password, quota=_quota(spec.get("quota")))


def _alias(address: str, targets: Any) -> Alias:
    return Alias(address, normalise_targets(targets))


def build_state(
    doc: dict[str, Any],
    models: EntryModels | None = None,
    *,
    encrypted: sops.SopsFile | None = None,
) -> DesiredState:
    """A validated document -> the normalised, immutable model the planner consumes.
    `encrypted`: the SOPS file its encrypted passwords are decrypted from."""
    models = EntryModels() if models is None else models
    accounts = models.build("accounts", doc["accounts"], _account)
    aliases = models.build("aliases", doc.get("aliases") or {}, _alias)
    catch_all = tuple(
        CatchAll(domain, normalise_targets(targets))
        for domain, targets in sorted((doc.get("catch_all") or {}).items())
    )
    quarantine = None
    if doc.get("quarantine"):
        q = doc["quarantine"]
        kinds = q.get("kinds") or QUARANTINE_KINDS
        quarantine = Quarantine(q["mailbox"], tuple(k for k in QUARANTINE_KINDS if k in kinds))
    jobs = tuple(
        SaLearnJob(
            schedule=" ".join(job["schedule"].split()),
            learn=Learn(job["learn"]),
            folder=job["folder"],
            accounts=tuple(sorted(set(job["accounts"]))) if "accounts" in job else None,
            domains=tuple(sorted(set(job["domains"]))) if "domains" in job else None,
        )
        for job in doc.get("sa_learn") or []
    )
    policy_doc = doc.get("policy") or {}
    return DesiredState(
        version=doc["version"],
        hostname=doc.get("hostname"),
        domains=tuple(sorted(set(doc["domains"]))),
        accounts=accounts,
        aliases=aliases,
        catch_all=catch_all,
        devnull=tuple(sorted(set(doc.get("devnull") or []))),
        quarantine=quarantine,
        sa_learn=jobs,
        policy=Policy(
            prune=bool(policy_doc.get("prune", False)),
            max_deletions=policy_doc.get("max_deletions"),
        ),
        encrypted=encrypted,
        **_extras(doc),
    )


def _extras(doc: dict[str, Any]) -> dict[str, Any]:
    """masters, regexp_aliases, restrict, relay and dkim of a validated document."""
    restrict = doc.get("restrict") or {}
    relays = []
    for domain, spec in sorted((doc.get("relay") or {}).items()):
        password = _password(spec, ("relay", domain)) if "username" in spec else None
        relays.append(
            Relay(
                domain=domain,
                host=spec.get("host"),
                port=spec.get("port", 25),
                exclude=bool(spec.get("exclude", False)),
                username=spec.get("username"),
                password=password,  # type: ignore[arg-type]  # rules refuse password_hash here
            )
        )
    return {
        "masters": tuple(
            Master(name, _password(spec, ("masters", name)))
            for name, spec in sorted((doc.get("masters") or {}).items())
        ),
        "regexp_aliases": tuple(
            RegexpAlias(
                item["pattern"],
                tuple(dict.fromkeys([item["to"]] if isinstance(item["to"], str) else item["to"])),
                item.get("flags", ""),
            )
            for item in doc.get("regexp_aliases") or []
        ),
        "restrict": Restrict(
            send=tuple(sorted(set(restrict.get("send") or []))),
            receive=tuple(sorted(set(restrict.get("receive") or []))),
        ),
        "relay": tuple(relays),
        "dkim": tuple(
            Dkim(domain, (spec or {}).get("selector", "mail"), (spec or {}).get("key_size", 2048))
            for domain, spec in sorted((doc.get("dkim") or {}).items())
            if domain != "signer"
        ),
        "dkim_signer": (doc.get("dkim") or {}).get("signer", "opendkim"),
        "rspamd": _rspamd(doc.get("rspamd") or {}),
    }


def _rspamd(doc: dict[str, Any]) -> Rspamd:
    """`rspamd:` of a validated document (lists deduplicated and sorted, thresholds in order)."""
    actions = doc.get("actions") or {}
    senders = doc.get("senders") or {}
    modules = doc.get("modules") or {}
    options = doc.get("options") or {}
    controller = doc.get("controller") or {}
    return Rspamd(
        actions=tuple(
            (name, float(actions[name]))
            for name in ("greylist", "add_header", "reject")
            if name in actions
        ),
        allow=tuple(sorted({s.lower() for s in senders.get("allow") or []})),
        deny=tuple(sorted({s.lower() for s in senders.get("deny") or []})),
        enable=tuple(sorted(set(modules.get("enable") or []))),
        disable=tuple(sorted(set(modules.get("disable") or []))),
        common=tuple(sorted((options.get("common") or {}).items())),
        module_options=tuple(
            (module, tuple(sorted((opts or {}).items())))
            for module, opts in sorted((options.get("module") or {}).items())
            if opts
        ),
        controller_hash=controller.get("password_hash"),
        controller_password=(
            _password(controller, ("rspamd", "controller"))
            if "password_env" in controller or "password_file" in controller
            else None
        ),
        learn=tuple(
            SaLearnJob(
                schedule=" ".join(job["schedule"].split()),
                learn=Learn(job["learn"]),
                folder=job["folder"],
                accounts=tuple(sorted(set(job["accounts"]))) if "accounts" in job else None,
                domains=tuple(sorted(set(job["domains"]))) if "domains" in job else None,
            )
            for job in doc.get("learn") or []
        ),
    )


def _password(spec: dict[str, Any], where: tuple[str, str]) -> PasswordSource:
    for key in sops.SECRET_KEYS:  # validated: encrypted values only under these keys
        value = spec.get(key)
        if sops.is_encrypted(value):
            return PasswordSops((*where, key), value, is_hash=key == "password_hash")
    if "password_hash" in spec:
        return PasswordHash(spec["password_hash"])
    if "password_file" in spec:
        return PasswordFile(spec["password_file"])
    return PasswordEnv(spec["password_env"])


def _quota(value: Any) -> str | None:
    return None if value is None else str(value)

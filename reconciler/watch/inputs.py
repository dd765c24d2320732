"""What a reconcile depends on, read and digested: has anything changed since the last look?

The desired file's bytes plus the plaintext secrets its accounts name (password_file,
password_env). Read-only; a FIFO or a missing file never blocks the loop here.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from typing import NamedTuple

from reconciler.errors import InvalidDesiredState
from reconciler.load.desired import Loaded, read_desired_bytes
from reconciler.model import PasswordEnv, PasswordFile
from reconciler.reconcile import Target


class Inputs(NamedTuple):
    data: bytes | None  # the desired file's bytes; None when it could not be read
    digest: str  # of everything a reconcile depends on
    problem: InvalidDesiredState | None  # why it could not be read


def peek_secret_file(path: str) -> bytes | None:
    """The start of a password file, for the change digest; None when it is missing or not a
    regular file. Opened non-blocking: a FIFO put there must not stop the loop (the reconcile
    then reports the file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 8193)
    except OSError:
        return None
    finally:
        os.close(fd)


class InputReader:
    """Reads the inputs of `target` and digests them.

    The digest covers the plaintext secrets too (a rotated secret is a change), so it is keyed
    with a per-process random key, like `VerifiedCache`: memory only, and no fast way to test
    password guesses against it.
    """

    def __init__(self, target: Target, *, key: bytes | None = None) -> None:
        self.target = target
        self._key = key if key is not None else secrets.token_bytes(32)

    def read(self, good: Loaded | None) -> Inputs:
        """`good`, the last valid desired state, names the secrets (a file being edited may not)."""
        digest = hmac.new(self._key, digestmod="sha256")
        try:
            data: bytes | None = read_desired_bytes(self.target.desired_path)
            problem = None
        except InvalidDesiredState as exc:
            data, problem = None, exc
        digest.update(b"missing" if data is None else hashlib.sha256(data).digest())
        if good is not None:  # a rotated password_file or variable is a change too
            for account in good.state.accounts:
                source = account.password
                if isinstance(source, PasswordFile):
                    path = os.path.join(self.target.base_dir, os.path.expanduser(source.path))
                    secret: bytes | None = peek_secret_file(path)
                elif isinstance(source, PasswordEnv):
                    value = self.target.environ.get(source.name)
                    secret = None if value is None else value.encode("utf-8", "surrogatepass")
                else:
                    continue
                digest.update(hashlib.sha256(repr(source).encode()).digest())
                digest.update(
                    b"\0missing" if secret is None else b"\1" + hashlib.sha256(secret).digest()
                )
        return Inputs(data, digest.hexdigest(), problem)

"""Password sources: read secrets, keep hashes that still verify, make new ones when needed.

SHA512-CRYPT salts are random, so hashing an unchanged password again would rewrite
postfix-accounts.cf on every run and make DMS reload each time. So for `password_file` and
`password_env` the hash already on the volume is kept when it verifies the plaintext; only a new or
changed password gets a new `{SHA512-CRYPT}` hash with 5000 rounds (what `doveadm pw` and DMS's
`setup email add` produce). Verification and hashing run on every core for big servers, and the
sidecar keeps what it verified in memory (never on disk), so a resync does not verify again.

Plaintext only ever lives in a `Secret`, whose repr and str hide it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

with warnings.catch_warnings():  # passlib 1.7.4 imports the deprecated `crypt` module on 3.11+
    warnings.simplefilter("ignore", DeprecationWarning)
    from passlib.hash import md5_crypt, sha256_crypt, sha512_crypt

from reconciler.addresses import split_hash
from reconciler.errors import SecretError
from reconciler.model import DesiredState, PasswordEnv, PasswordFile, PasswordHash, PasswordSource

SCHEME = "SHA512-CRYPT"
ROUNDS = 5000  # DMS's `doveadm pw -s SHA512-CRYPT`; passlib's default (656000) makes logins slow
PLACEHOLDER_SCHEME = "DMS-RECONCILER-UNRESOLVED"
MASTER_KEY = "master:"  # see `password_sources`
RELAY_KEY = "relay:"  # only in throw-away volumes built for CI plans
# Below this many hashes one core is faster than starting helpers: a forked one costs a few
# milliseconds, a worker from the forkserver (needed once threads run, as in the sidecar) far more.
FORK_THRESHOLD = 16
PARALLEL_THRESHOLD = 200
_CRYPT_EQUIVALENT = {None, "SHA512-CRYPT", "CRYPT"}  # all verified by libc crypt() in Dovecot
_HANDLERS = {"$6$": sha512_crypt, "$5$": sha256_crypt, "$1$": md5_crypt}
_HASHER = sha512_crypt.using(rounds=ROUNDS)


class Secret:
    """A plaintext password that refuses to be printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<sensitive>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


class Status(str, Enum):
    GIVEN = "given"  # password_hash from mailserver.yaml, written as given
    KEPT = "kept"  # the hash on the volume verifies the secret: keep it
    NEW = "new"  # the secret is new or changed: hash it at apply
    UNRESOLVED = "unresolved"  # --offline and the secret cannot be read: decided at apply


@dataclass(frozen=True)
class DesiredPassword:
    status: Status
    source: PasswordSource
    hash: str | None = None  # GIVEN: the YAML hash; KEPT: the volume's hash
    secret: Secret | None = None  # KEPT and NEW from a file or env: what it was decided from
    # `plan --against-ref`: the source_id in the base version when the source differs there.
    # An UNRESOLVED secret whose source changed cannot keep the base's hash: it shows as a change.
    changed_from: str | None = None

    def __repr__(self) -> str:
        return f"DesiredPassword({self.status.value}, {type(self.source).__name__})"


def source_id(source: PasswordSource) -> str:
    """Where a secret comes from, safe to show: `file:/run/secrets/jane`, `env:BOB_PASSWORD`."""
    if isinstance(source, PasswordFile):
        return f"file:{source.path}"
    if isinstance(source, PasswordEnv):
        return f"env:{source.name}"
    return "hash"


def placeholder_hash(source: PasswordSource) -> str:
    """A stand-in for an unreadable secret in a throw-away CI volume; never a usable hash."""
    return "{" + PLACEHOLDER_SCHEME + "}" + hashlib.sha256(source_id(source).encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    """True when two hash fields mean the same to DMS's Dovecot (`$6$x` is `{SHA512-CRYPT}$6$x`)."""
    if a == b:
        return True
    scheme_a, body_a = split_hash(a)
    scheme_b, body_b = split_hash(b)
    return body_a == body_b and scheme_a in _CRYPT_EQUIVALENT and scheme_b in _CRYPT_EQUIVALENT


def hash_password(secret: Secret) -> str:
    return "{" + SCHEME + "}" + _HASHER.hash(secret.reveal())


def verify(secret: Secret, stored: str) -> bool:
    """Does `stored` (as found in postfix-accounts.cf) accept `secret`? Unknown schemes: no."""
    scheme, body = split_hash(stored)
    if scheme not in _CRYPT_EQUIVALENT and scheme not in ("SHA256-CRYPT", "MD5-CRYPT"):
        return False  # BLF-CRYPT, ARGON2 ...: cannot check here, so the password is re-hashed
    handler = _HANDLERS.get(body[:3])
    if handler is None:
        return False
    try:
        return bool(handler.verify(secret.reveal(), body))
    except (ValueError, TypeError):
        return False


T = TypeVar("T")
R = TypeVar("R")


def _parallel_map(func: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """Map over every core for big batches; `crypt()` holds the GIL, so threads would not help.

    A process with no other thread (the CLI) forks its helpers: they start in milliseconds with
    everything already imported, which pays off from a few dozen secrets. Once threads run (the
    sidecar's watcher), forking could copy a lock held by one of them, so workers come from the
    forkserver, slower to start and used only for big batches.
    """
    workers = os.cpu_count() or 1
    if len(items) < FORK_THRESHOLD or workers < 2:
        return [func(item) for item in items]
    import threading

    if threading.active_count() == 1 and hasattr(os, "fork"):
        return _forked_map(func, items, workers)
    if len(items) < PARALLEL_THRESHOLD:
        return [func(item) for item in items]
    import multiprocessing  # imported here: 10 ms that commands without big batches never need
    from concurrent.futures import ProcessPoolExecutor

    chunk = max(1, len(items) // (workers * 4))
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(func, items, chunksize=chunk))


def _forked_map(func: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """Split `items` between this process and `workers - 1` forked children.

    Each child maps its share, writes the answers (JSON: booleans or hash strings, never a
    secret) to a pipe and exits; it never waits for anything, so one cannot outlive a killed
    parent by more than its share of the work. A share whose child fails is done here instead.
    """
    import json
    import signal

    shares = [items[i::workers] for i in range(workers)]
    live: dict[int, int] = {}  # pid -> read end of its pipe, until reaped
    try:
        for share in shares[1:]:
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: map, report, exit without running any cleanup
                status = 1
                try:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    os.close(read_end)
                    view = memoryview(json.dumps([func(item) for item in share]).encode())
                    while view:
                        view = view[os.write(write_end, view) :]
                    status = 0
                finally:
                    os._exit(status)
            os.close(write_end)
            live[pid] = read_end
        answers = [[func(item) for item in shares[0]]]
        for share, pid in zip(shares[1:], list(live), strict=True):
            reported = _read_to_end(live[pid])
            os.close(live.pop(pid))
            _, status = os.waitpid(pid, 0)
            answers.append(_answers(reported if status == 0 else None, share, func))
    finally:
        for pid, read_end in live.items():  # interrupted: stop the children and reap them
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
    out: list[R] = [None] * len(items)  # type: ignore[list-item]
    for index, share_answers in enumerate(answers):
        out[index::workers] = share_answers
    return out


def _read_to_end(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _answers(reported: bytes | None, share: Sequence[T], func: Callable[[T], R]) -> list[R]:
    """A child's answers, or the share done here when the child failed."""
    import json

    try:
        answers = json.loads(reported) if reported is not None else None
    except ValueError:
        answers = None
    if not isinstance(answers, list) or len(answers) != len(share):
        return [func(item) for item in share]
    return answers


def _verify_item(item: tuple[str, str]) -> bool:
    return verify(Secret(item[0]), item[1])


def _hash_item(plaintext: str) -> str:
    return hash_password(Secret(plaintext))


def hash_many(secrets_: Sequence[Secret]) -> list[str]:
    """New `{SHA512-CRYPT}` hashes for `secrets_`, in order, on every core when there are many."""
    return _parallel_map(_hash_item, [s.reveal() for s in secrets_])


def verify_many(pairs: Sequence[tuple[Secret, str]]) -> list[bool]:
    return _parallel_map(_verify_item, [(s.reveal(), h) for s, h in pairs])


class VerifiedCache:
    """What was verified, in memory only: (address, keyed digest of secret, stored hash) -> ok.

    The digest is keyed with a per-process random key, so even a memory dump of the cache does
    not give a fast way to test guesses.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._known: dict[tuple[str, bytes, str], bool] = {}

    def _id(self, address: str, secret: Secret, stored: str) -> tuple[str, bytes, str]:
        digest = hmac.new(self._key, secret.reveal().encode("utf-8", "surrogatepass"), "sha256")
        return address, digest.digest(), stored

    def get(self, address: str, secret: Secret, stored: str) -> bool | None:
        return self._known.get(self._id(address, secret, stored))

    def put(self, address: str, secret: Secret, stored: str, ok: bool) -> None:
        self._known[self._id(address, secret, stored)] = ok

    def retain(self, live: set[tuple[str, str]]) -> None:
        """Forget entries whose (address, stored hash) is no longer on the volume."""
        self._known = {k: v for k, v in self._known.items() if (k[0], k[2]) in live}

    def __len__(self) -> int:
        return len(self._known)


@dataclass
class SecretReader:
    """Reads password_file (relative to mailserver.yaml's folder) and password_env."""

    base_dir: str
    environ: Mapping[str, str]

    def read(self, source: PasswordSource) -> Secret:
        if isinstance(source, PasswordEnv):
            if source.name not in self.environ:
                raise SecretError(f"environment variable {source.name} is not set")
            value = self.environ[source.name]
        elif isinstance(source, PasswordFile):
            path = os.path.join(self.base_dir, os.path.expanduser(source.path))
            raw = _read_secret_file(path, source.path, self.environ.get(SECRETS_DIR_ENV) or None)
            if len(raw) > 4096:
                raise SecretError(f"password_file {source.path}: longer than 4096 bytes")
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SecretError(f"password_file {source.path}: not UTF-8 text") from None
            value = value[:-1] if value.endswith("\n") else value  # one trailing newline is ignored
            value = value[:-1] if value.endswith("\r") else value
        else:  # pragma: no cover - hashes never reach the reader
            raise TypeError(source)
        if not value:
            raise SecretError(f"{source_id(source)}: the password is empty")
        if "\n" in value or "\0" in value:
            raise SecretError(f"{source_id(source)}: the password has a line break or NUL byte")
        return Secret(value)


SECRETS_DIR_ENV = "DMS_RECONCILER_SECRETS_DIR"  # --secrets-dir: password_file only from there


def _read_secret_file(path: str, shown: str, allowed_dir: str | None = None) -> bytes:
    """At most 4097 bytes of a regular file. Symlinks are followed (Kubernetes mounts secrets
    through them), but a FIFO or device is refused: reading one would hang or never end.

    With `allowed_dir`, the file actually opened (after every symlink, read back from the open
    descriptor, so no swap between a check and the open can escape) must be inside it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SecretError(f"password_file {shown}: no such file") from None
    except OSError as exc:
        raise SecretError(f"password_file {shown}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise SecretError(f"password_file {shown}: is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"password_file {shown}: not a regular file")
        if allowed_dir is not None:
            _require_inside(fd, allowed_dir, shown)
        return os.read(fd, 4097)
    except OSError as exc:
        raise SecretError(f"password_file {shown}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _require_inside(fd: int, allowed_dir: str, shown: str) -> None:
    allowed = os.path.realpath(allowed_dir)
    opened = os.readlink(f"/proc/self/fd/{fd}")
    if os.path.commonpath([allowed, opened]) != allowed:
        raise SecretError(
            f"password_file {shown}: outside the allowed folder {allowed_dir} (--secrets-dir, "
            f"{SECRETS_DIR_ENV}); refusing to read it"
        )


def resolve(
    state: DesiredState,
    stored: Mapping[str, str],
    *,
    reader: SecretReader,
    offline: bool = False,
    cache: VerifiedCache | None = None,
) -> dict[str, DesiredPassword]:
    """Decide, for every account, which hash the volume should hold.

    `stored` maps address -> the hash on the volume now. Raises `SecretError` naming every
    account whose secret cannot be read (unless `offline`, where those stay UNRESOLVED).
    """
    out: dict[str, DesiredPassword] = {}
    sources: dict[str, PasswordSource] = {}
    failures: list[str] = []
    to_verify: list[tuple[str, Secret, str]] = []
    for key, source in password_sources(state):
        sources[key] = source
        current = stored.get(key)
        if isinstance(source, PasswordHash):
            out[key] = DesiredPassword(Status.GIVEN, source, hash=source.value)
            continue
        if current is not None and current == placeholder_hash(source) and offline:
            out[key] = DesiredPassword(Status.KEPT, source, hash=current)
            continue
        try:
            secret = reader.read(source)
        except SecretError as exc:
            if offline:
                out[key] = DesiredPassword(Status.UNRESOLVED, source)
                continue
            failures.append(f"{key}: {exc}")
            continue
        if current is None or not current:
            out[key] = DesiredPassword(Status.NEW, source, secret=secret)
            continue
        known = cache.get(key, secret, current) if cache else None
        if known is None:
            to_verify.append((key, secret, current))
        else:
            out[key] = _decided(known, source, current, secret)
    if failures:
        raise SecretError(
            f"{len(failures)} password(s) could not be read: "
            + "; ".join(failures[:20])
            + (" ..." if len(failures) > 20 else "")
        )
    results = verify_many([(secret, current) for _, secret, current in to_verify])
    for (address, secret, current), ok in zip(to_verify, results, strict=True):
        if cache is not None:
            cache.put(address, secret, current, ok)
        out[address] = _decided(ok, sources[address], current, secret)
    return out


def password_sources(state: DesiredState) -> list[tuple[str, PasswordSource]]:
    """(key, source) of every password that becomes a hash: accounts by address, Dovecot master
    users as `master:<name>` (no address has a ':', so the keys never meet)."""
    out: list[tuple[str, PasswordSource]] = []
    for account in state.accounts:
        assert account.password is not None
        out.append((account.address, account.password))
    for master in state.masters:
        assert master.password is not None
        out.append((MASTER_KEY + master.name, master.password))
    return out


def resolve_plaintext(
    state: DesiredState,
    stored: Mapping[str, str],
    *,
    reader: SecretReader,
    offline: bool = False,
) -> dict[str, DesiredPassword]:
    """Relay passwords, which DMS needs in plaintext (postfix-sasl-password.cf), keyed
    `relay:<domain>`: KEPT when the volume already holds the secret, NEW otherwise. Nothing is
    hashed, so an unchanged secret never rewrites the file."""
    out: dict[str, DesiredPassword] = {}
    failures: list[str] = []
    for relay in state.relay:
        if relay.password is None:
            continue
        key = RELAY_KEY + relay.domain
        current = stored.get(key)
        if offline and current is not None and current == placeholder_secret(relay.password):
            out[key] = DesiredPassword(Status.KEPT, relay.password, hash=current)
            continue
        try:
            secret = reader.read(relay.password)
        except SecretError as exc:
            if offline:
                out[key] = DesiredPassword(Status.UNRESOLVED, relay.password)
                continue
            failures.append(f"relay {relay.domain}: {exc}")
            continue
        value = secret.reveal()
        if value != value.strip() or any(not c.isprintable() for c in value):
            failures.append(
                f"relay {relay.domain}: {source_id(relay.password)}: the password starts or "
                "ends with whitespace or has a control character, which postfix-sasl-password.cf "
                "cannot hold"
            )
            continue
        same = current is not None and hmac.compare_digest(current.encode(), value.encode())
        out[key] = DesiredPassword(
            Status.KEPT if same else Status.NEW, relay.password, secret=secret
        )
    if failures:
        raise SecretError(
            f"{len(failures)} relay password(s) could not be read: " + "; ".join(failures[:20])
        )
    return out


def placeholder_secret(source: PasswordSource) -> str:
    """A stand-in relay password for a throw-away CI volume, derived from the source only."""
    return PLACEHOLDER_SCHEME + "-" + hashlib.sha256(source_id(source).encode()).hexdigest()


def _decided(ok: bool, source: PasswordSource, current: str, secret: Secret) -> DesiredPassword:
    if ok:
        return DesiredPassword(Status.KEPT, source, hash=current, secret=secret)
    return DesiredPassword(Status.NEW, source, secret=secret)


def fingerprint(key: str, address: str, secret: Secret) -> str:
    """HMAC of a secret with the volume's plan key: lets a saved plan detect a changed secret
    without holding the secret or anything testable offline without the volume."""
    mac = hmac.new(bytes.fromhex(key), f"{address}\0".encode() + secret.reveal().encode(), "sha256")
    return mac.hexdigest()

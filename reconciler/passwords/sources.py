"""Password sources: read secrets, keep hashes that still verify, make new ones when needed.

SHA512-CRYPT salts are random, so hashing an unchanged password again would rewrite
postfix-accounts.cf on every run and make DMS reload each time. So for `password_file` and
`password_env` the hash already on the volume is kept when it verifies the plaintext; only a new or
changed password gets a new `{SHA512-CRYPT}` hash with 5000 rounds (what `doveadm pw` and DMS's
`setup email add` produce). Verification and hashing run on every core for big servers. A
`password_file` whose identity and timestamps are those it had when it last verified against the
same hash is not verified again (`verified`: a record of file metadata, never of content); the
sidecar also keeps what it verified in memory, so a resync verifies nothing it has seen.

A `password`/`password_hash` SOPS-encrypted in mailserver.yaml is decrypted by `sops` into memory
(`load.sops`), once per resolution. A user-owned password (`update_password: on_create`) is only
read for an account that does not exist yet: once it does, its user owns whatever hash it has
(status USER_OWNED, which the planner keeps as it keeps KEPT).

Plaintext only ever lives in a `Secret`, whose repr and str hide it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
import stat
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple, TypeVar

from reconciler.addresses import check_password_hash, split_hash
from reconciler.errors import SecretError
from reconciler.model import (
    MASTER_KEY,
    RELAY_KEY,
    RSPAMD_CONTROLLER_KEY,
    DesiredState,
    PasswordEnv,
    PasswordFile,
    PasswordHash,
    PasswordSops,
    PasswordSource,
    UserOwned,
)
from reconciler.passwords.sops import SopsFile

SCHEME = "SHA512-CRYPT"
ROUNDS = 5000  # DMS's `doveadm pw -s SHA512-CRYPT`; passlib's default (656000) makes logins slow
PLACEHOLDER_SCHEME = "DMS-RECONCILER-UNRESOLVED"
# Below this many hashes one core is faster than starting helpers: a forked one costs a few
# milliseconds, a worker from the forkserver (needed once threads run, as in the sidecar) far more.
FORK_THRESHOLD = 16
PARALLEL_THRESHOLD = 200
# A file written this close to the moment it was read may be written again within the same
# timestamp tick (1-2 s on some file systems) without its mtime or ctime moving.
RACY_NS = 2_000_000_000
PROGRESS_FROM = 200  # secrets; fewer take well under a second and show no progress
_CRYPT_EQUIVALENT = {None, "SHA512-CRYPT", "CRYPT"}  # all verified by libc crypt() in Dovecot


@functools.cache
def _handlers() -> dict[str, Any]:
    """passlib's handlers by hash prefix. Loaded on first use: a host whose hashes are all given
    in mailserver.yaml never needs passlib (15 ms of every start)."""
    with warnings.catch_warnings():  # passlib 1.7.4 imports the deprecated `crypt` module
        warnings.simplefilter("ignore", DeprecationWarning)
        from passlib.hash import md5_crypt, sha256_crypt, sha512_crypt

    return {"$6$": sha512_crypt, "$5$": sha256_crypt, "$1$": md5_crypt}


_PREFIXES = ("$6$", "$5$", "$1$")  # the schemes `verify` checks: those of `_handlers`


@functools.cache
def _hasher() -> Any:
    return _handlers()["$6$"].using(rounds=ROUNDS)


class FileStamp(NamedTuple):
    """Which file a secret was read from and how old it was then: says nothing of its content."""

    device: int
    inode: int
    mtime_ns: int
    ctime_ns: int
    read_ns: int  # the clock when it was read

    @property
    def settled(self) -> bool:
        """Old enough that any later write must change mtime or ctime (git's racy-file rule)."""
        return self.read_ns - max(self.mtime_ns, self.ctime_ns) >= RACY_NS


FACT_FORMAT = 1  # of `fact`, and so of the record of facts (passwords/verified.py)


def fact(address: str, stamp: FileStamp, stored_hash: str) -> str:
    """The digest of one fact: the file `stamp` names held a secret that verifies `stored_hash`
    for `address` (the read time is not part of it). `resolve` trusts a settled file whose fact
    is in the record of `verified` without verifying it again."""
    text = (
        f"{FACT_FORMAT}\0{address}\0{stamp.device}\0{stamp.inode}\0{stamp.mtime_ns}\0"
        f"{stamp.ctime_ns}\0{stored_hash}"
    )
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class Secret:
    """A plaintext password that refuses to be printed; `stamp` tells which file it came from."""

    __slots__ = ("_value", "stamp")

    def __init__(self, value: str, stamp: FileStamp | None = None) -> None:
        self._value = value
        self.stamp = stamp

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<sensitive>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return False
        mine, theirs = (s._value.encode("utf-8", "surrogatepass") for s in (self, other))
        return hmac.compare_digest(mine, theirs)  # str only compares ASCII

    def __hash__(self) -> int:
        return hash(self._value)


class Status(str, Enum):
    GIVEN = "given"  # password_hash from mailserver.yaml, written as given
    KEPT = "kept"  # the hash on the volume verifies the secret: keep it
    NEW = "new"  # the secret is new or changed: hash it at apply
    UNRESOLVED = "unresolved"  # --offline and the secret cannot be read: decided at apply
    USER_OWNED = "user_owned"  # update_password: on_create and the account exists: keep its hash


@dataclass(frozen=True)
class DesiredPassword:
    status: Status
    source: PasswordSource
    hash: str | None = None  # GIVEN: the YAML hash; KEPT, USER_OWNED: the volume's hash
    secret: Secret | None = None  # KEPT and NEW from a file or env: what it was decided from
    # `plan --against-ref`: the source_id in the base version when the source differs there.
    # An UNRESOLVED secret whose source changed cannot keep the base's hash: it shows as a change.
    changed_from: str | None = None

    def __repr__(self) -> str:
        return f"DesiredPassword({self.status.value}, {type(self.source).__name__})"


def source_id(source: PasswordSource) -> str:
    """Where a secret comes from, safe to show: `file:/run/secrets/jane`, `env:BOB_PASSWORD`,
    `sops:password@<digest of the ciphertext>` (another ciphertext: maybe another secret; `sops
    updatekeys` keeps it), `env:BOB_PASSWORD (user-owned)`."""
    if isinstance(source, UserOwned):
        return f"{source_id(source.initial)} (user-owned)"
    if isinstance(source, PasswordSops):
        digest = hashlib.sha256(source.ciphertext.encode()).hexdigest()[:12]
        return f"sops:{source.path[-1]}@{digest}"
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


# libxcrypt, the C library's crypt (Debian's libcrypt1, what Dovecot and `doveadm pw` use): about
# twice as fast as libpass, which is pure Python. Its soname; a host without it uses libpass alone.
LIBCRYPT = "libcrypt.so.1"
_CRYPT_DATA_SIZE = 32768  # sizeof(struct crypt_data) in libxcrypt; crypt_rn refuses a smaller one
_SALT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SALT_LENGTH = 16  # what passlib and `doveadm pw` use for SHA512-CRYPT, the most it takes


@functools.cache
def _libcrypt() -> Callable[[bytes, bytes], bytes | None] | None:
    """crypt(3) of libxcrypt as `crypt(phrase, setting)`, or None when the library is missing.

    `crypt_rn` writes into the `struct crypt_data` it is given, so each call gets its own and
    calls from several threads never share one; ctypes lets go of the GIL during the call. It
    answers NULL where `crypt_r` writes a failure token (`*0`, `*1`); both mean "ask libpass"."""
    import ctypes

    try:
        library = ctypes.CDLL(LIBCRYPT)
    except OSError:
        return None
    function = getattr(library, "crypt_rn", None)
    sized = function is not None
    function = function or getattr(library, "crypt_r", None)
    if function is None:
        return None
    function.restype = ctypes.c_char_p
    size = _CRYPT_DATA_SIZE
    if sized:
        function.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    else:
        function.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]

    def crypt(phrase: bytes, setting: bytes) -> bytes | None:
        data = ctypes.create_string_buffer(size)
        out = function(phrase, setting, data, size) if sized else function(phrase, setting, data)
        if not out or out.startswith(b"*"):
            return None
        return bytes(out)

    return crypt


def _crypt(phrase: str, setting: str) -> bytes | None:
    """libxcrypt's crypt of `phrase` with `setting` (a salt or a whole hash), or None when it is
    missing, refuses the input, or the input cannot reach it whole (a NUL, not UTF-8): libpass
    then decides, as it did before this fast path."""
    crypt = _libcrypt()
    if crypt is None or "\0" in phrase or "\0" in setting:
        return None
    try:
        return crypt(phrase.encode("utf-8"), setting.encode("ascii"))
    except UnicodeEncodeError:
        return None


def hash_password(secret: Secret) -> str:
    salt = "".join(secrets.choice(_SALT_ALPHABET) for _ in range(_SALT_LENGTH))
    setting = "$6$" + salt  # ROUNDS is crypt's default for $6$, so not spelled out (as passlib)
    made = _crypt(secret.reveal(), setting)
    if made is not None and made.startswith(setting.encode() + b"$"):
        return "{" + SCHEME + "}" + made.decode("ascii")
    return "{" + SCHEME + "}" + _hasher().hash(secret.reveal())


def verify(secret: Secret, stored: str) -> bool:
    """Does `stored` (as found in postfix-accounts.cf) accept `secret`? Unknown schemes: no.

    libxcrypt answers as Dovecot does (its crypt of the secret with the stored hash as setting
    must give back the stored hash, compared in constant time); libpass answers when it cannot."""
    scheme, body = split_hash(stored)
    if scheme not in _CRYPT_EQUIVALENT and scheme not in ("SHA256-CRYPT", "MD5-CRYPT"):
        return False  # BLF-CRYPT, ARGON2 ...: cannot check here, so the password is re-hashed
    if body[:3] not in _PREFIXES:
        return False
    made = _crypt(secret.reveal(), body)
    if made is not None:
        return hmac.compare_digest(made, body.encode("ascii"))
    handler = _handlers()[body[:3]]
    try:
        return bool(handler.verify(secret.reveal(), body))
    except (ValueError, TypeError):
        return False


T = TypeVar("T")
R = TypeVar("R")


Advance = Callable[[int], None]
ProgressBar = Callable[[str, int], AbstractContextManager[Advance]]
_progress_bar: ProgressBar | None = None


def show_progress(bar: ProgressBar | None) -> None:
    """Show long hashing and verifying with `bar(label, total)`, a context manager yielding a
    function that advances it (the CLI's terminal bar); None: show nothing (the default)."""
    global _progress_bar
    _progress_bar = bar


@contextmanager
def _progress(label: str, total: int) -> Iterator[Advance]:
    if _progress_bar is None or total < PROGRESS_FROM:
        yield lambda done: None
        return
    with _progress_bar(label, total) as advance:
        yield advance


def _parallel_map(
    func: Callable[[T], R], items: Sequence[T], advance: Advance = lambda done: None
) -> list[R]:
    """Map over every core for big batches; `crypt()` holds the GIL, so threads would not help.

    A process with no other thread (the CLI) forks its helpers: they start in milliseconds with
    everything already imported, which pays off from a few dozen secrets. Once threads run (the
    sidecar's watcher), forking could copy a lock held by one of them, so workers come from the
    forkserver, slower to start and used only for big batches.
    """
    workers = os.cpu_count() or 1
    if len(items) < FORK_THRESHOLD or workers < 2:
        return _mapped(func, items, advance, 1)
    import threading

    if threading.active_count() == 1 and hasattr(os, "fork"):
        return _forked_map(func, items, workers, advance)
    if len(items) < PARALLEL_THRESHOLD:
        return _mapped(func, items, advance, 1)
    import multiprocessing  # imported here: 10 ms that commands without big batches never need
    from concurrent.futures import ProcessPoolExecutor

    chunk = max(1, len(items) // (workers * 4))
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        out = []
        for result in pool.map(func, items, chunksize=chunk):
            out.append(result)
            advance(1)
        return out


def _mapped(func: Callable[[T], R], items: Sequence[T], advance: Advance, weight: int) -> list[R]:
    """`func` over `items` here, advancing the progress by `weight` per item."""
    out = []
    for item in items:
        out.append(func(item))
        advance(weight)
    return out


def _forked_map(
    func: Callable[[T], R], items: Sequence[T], workers: int, advance: Advance = lambda done: None
) -> list[R]:
    """Split `items` between this process and `workers - 1` forked children.

    Each child maps its share, writes the answers (JSON: booleans or hash strings, never a
    secret) to a pipe and exits; it never waits for anything, so one cannot outlive a killed
    parent by more than its share of the work. A share whose child fails is done here instead.
    Progress follows this process's own share, which runs at the children's pace: each item
    done here stands for one done in every share.
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
        answers = [_mapped(func, shares[0], advance, workers)]
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
    if not secrets_:
        return []
    _libcrypt() or _hasher()  # loaded before forking, so the helpers share it
    with _progress("Hashing passwords", len(secrets_)) as advance:
        return _parallel_map(_hash_item, [s.reveal() for s in secrets_], advance)


def verify_many(pairs: Sequence[tuple[Secret, str]]) -> list[bool]:
    if not pairs:
        return []
    _libcrypt() or _handlers()
    with _progress("Verifying passwords", len(pairs)) as advance:
        return _parallel_map(_verify_item, [(s.reveal(), h) for s, h in pairs], advance)


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
    """Reads password_file (relative to mailserver.yaml's folder), password_env and, given the
    file's `encrypted` SOPS data (`for_state`), SOPS-encrypted passwords."""

    base_dir: str
    environ: Mapping[str, str]
    encrypted: SopsFile | None = None
    # what `sops` gave for `encrypted` (plaintext, in memory), or why it could not
    _decrypted: dict[Any, str] | SecretError | None = field(default=None, repr=False)

    def for_state(self, state: DesiredState) -> SecretReader:
        """A reader for `state`'s secrets: one that can decrypt its SOPS-encrypted passwords."""
        if state.encrypted is None:
            return self
        return SecretReader(self.base_dir, self.environ, state.encrypted)

    def decrypted(self) -> dict[Any, str]:
        """Every SOPS-encrypted value of the file, decrypted once per reader. Raises SecretError
        (no key) or SopsRefused (MAC mismatch, damage: never treated as merely unreadable)."""
        if self.encrypted is None:
            return {}
        if self._decrypted is None:
            try:
                self._decrypted = self.encrypted.decrypt(self.environ)
            except SecretError as exc:
                self._decrypted = exc
        if isinstance(self._decrypted, SecretError):
            raise self._decrypted
        return self._decrypted

    def read(self, source: PasswordSource) -> Secret:
        stamp = None
        if isinstance(source, UserOwned):
            return self.read(source.initial)
        if isinstance(source, PasswordSops):
            value = self.decrypted().get(source.path, "")
        elif isinstance(source, PasswordEnv):
            if source.name not in self.environ:
                raise SecretError(f"environment variable {source.name} is not set")
            value = self.environ[source.name]
        elif isinstance(source, PasswordFile):
            path = os.path.join(self.base_dir, os.path.expanduser(source.path))
            raw, info = _read_secret_file(
                path, source.path, self.environ.get(SECRETS_DIR_ENV) or None
            )
            stamp = FileStamp(
                info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns, time.time_ns()
            )
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
        return Secret(value, stamp)


SECRETS_DIR_ENV = "DMS_RECONCILER_SECRETS_DIR"  # --secrets-dir: password_file only from there


def _read_secret_file(
    path: str, shown: str, allowed_dir: str | None = None
) -> tuple[bytes, os.stat_result]:
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
        return os.read(fd, 4097), info
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
    record: frozenset[str] = frozenset(),
) -> dict[str, DesiredPassword]:
    """Decide, for every account, which hash the volume should hold.

    `stored` maps address -> the hash on the volume now. Raises `SecretError` naming every
    account whose secret cannot be read (unless `offline`, where those stay UNRESOLVED).
    `record` holds the facts of `verified`: a settled password file they vouch for is kept
    without verifying it again.
    """
    reader = reader.for_state(state)
    if not offline:
        reader.decrypted()  # a SOPS file is decrypted (its MAC checked) even with nothing to read
    out: dict[str, DesiredPassword] = {}
    sources: dict[str, PasswordSource] = {}
    failures: list[str] = []
    to_verify: list[tuple[str, Secret, str]] = []
    for key, source in password_sources(state):
        sources[key] = source
        current = stored.get(key)
        if isinstance(source, UserOwned) and current:
            out[key] = DesiredPassword(Status.USER_OWNED, source, hash=current)
            continue
        given = source.initial if isinstance(source, UserOwned) else source
        if isinstance(given, PasswordHash):
            out[key] = DesiredPassword(Status.GIVEN, source, hash=given.value)
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
        if isinstance(given, PasswordSops) and given.is_hash:
            problem = check_password_hash(secret.reveal())
            if problem is not None:
                failures.append(f"{key}: the SOPS-encrypted password_hash is not a Dovecot hash")
                continue
            out[key] = DesiredPassword(Status.GIVEN, source, hash=secret.reveal())
            continue
        if current is None or not current:
            out[key] = DesiredPassword(Status.NEW, source, secret=secret)
            continue
        known = cache.get(key, secret, current) if cache else None
        stamp = secret.stamp
        if known is None and record and stamp is not None and stamp.settled:
            known = fact(key, stamp, current) in record or None
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


def resolve_rspamd_controller(
    state: DesiredState,
    stored: str | None,
    *,
    reader: SecretReader,
    offline: bool = False,
) -> dict[str, DesiredPassword]:
    """The Rspamd web UI password read from password_env/password_file, keyed
    `rspamd:controller`: KEPT when `stored` (the hash in worker-controller.inc) is a `$1$` hash
    of the secret, NEW otherwise (the kind hashes it as `rspamadm pw --type pbkdf2` does).
    Verified on every run: one PBKDF2-BLAKE2b of 16000 rounds, about 10 ms."""
    from reconciler.passwords import rspamd_pw

    source = state.rspamd.controller_password
    if source is None:
        return {}
    key = RSPAMD_CONTROLLER_KEY
    if offline and stored is not None and stored == rspamd_pw.placeholder(source_id(source)):
        return {key: DesiredPassword(Status.KEPT, source, hash=stored)}
    try:
        secret = reader.read(source)
    except SecretError as exc:
        if offline:
            return {key: DesiredPassword(Status.UNRESOLVED, source)}
        raise SecretError(f"rspamd.controller: the password could not be read: {exc}") from None
    if stored is not None and rspamd_pw.verify(secret.reveal(), stored):
        return {key: DesiredPassword(Status.KEPT, source, hash=stored, secret=secret)}
    return {key: DesiredPassword(Status.NEW, source, secret=secret)}


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


def user_owned_notes(decided: Mapping[str, DesiredPassword]) -> list[str]:
    """The plan's note on accounts created now with a user-owned initial password."""
    created = sorted(
        key
        for key, choice in decided.items()
        if isinstance(choice.source, UserOwned) and choice.status is not Status.USER_OWNED
    )
    if not created:
        return []
    more = f" and {len(created) - 10} more" if len(created) > 10 else ""
    shown = ", ".join(created[:10]) + more
    return [
        f"initial password only (update_password: on_create) for {shown}: set now, then owned "
        "by the user (webmail, doveadm pw, setup email update) and never changed by a later plan"
    ]

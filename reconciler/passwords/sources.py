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

import hashlib
import hmac
import os
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from reconciler.addresses import check_password_hash
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
from reconciler.passwords.hashing import (
    MAX_PASSWORD_BYTES,
    PROGRESS_FROM,
    ROUNDS,
    SCHEME,
    hash_many,
    hash_password,
    same_hash,
    show_progress,
    verify,
    verify_many,
)
from reconciler.passwords.sops import SopsFile

# Public here: the sources, and the hashing names callers have always found here (`hashing`).
__all__ = [
    "DesiredPassword",
    "fact",
    "FACT_FORMAT",
    "FileStamp",
    "fingerprint",
    "hash_many",
    "hash_password",
    "password_sources",
    "placeholder_hash",
    "PLACEHOLDER_SCHEME",
    "placeholder_secret",
    "PROGRESS_FROM",
    "RACY_NS",
    "resolve",
    "resolve_plaintext",
    "ROUNDS",
    "same_hash",
    "SCHEME",
    "Secret",
    "SecretReader",
    "SECRETS_DIR_ENV",
    "show_progress",
    "source_id",
    "Status",
    "user_owned_notes",
    "VerifiedCache",
    "verify",
    "verify_many",
]

PLACEHOLDER_SCHEME = "DMS-RECONCILER-UNRESOLVED"
# A file written this close to the moment it was read may be written again within the same
# timestamp tick (1-2 s on some file systems) without its mtime or ctime moving.
RACY_NS = 2_000_000_000


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
        size = len(secret.reveal().encode("utf-8", "surrogateescape"))
        if size > MAX_PASSWORD_BYTES:
            failures.append(
                f"{key}: {source_id(given)}: the password is {size} bytes; Dovecot's crypt "
                f"takes at most {MAX_PASSWORD_BYTES}, so the login would always fail"
            )
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

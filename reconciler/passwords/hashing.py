"""SHA512-CRYPT hashes: make new ones and verify stored ones, on every core when there are many.

libxcrypt (the C library's crypt, what Dovecot and `doveadm pw` use) through ctypes is the fast
path, about twice as fast as passlib, which answers where libxcrypt is missing or refuses a
scheme. Many secrets are hashed or verified by forked helpers (or forkserver workers once threads
run, as in the sidecar), with a progress bar on a terminal. What a secret is and where it comes
from is `sources`' business: here a plaintext is anything with `reveal()`, and only its text is
handed to a helper process.
"""

from __future__ import annotations

import functools
import hmac
import os
import secrets
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, TypeVar

from reconciler.addresses import split_hash

SCHEME = "SHA512-CRYPT"
ROUNDS = 5000  # DMS's `doveadm pw -s SHA512-CRYPT`; passlib's default (656000) makes logins slow
# libxcrypt's CRYPT_MAX_PASSPHRASE_SIZE (512, with the NUL): Dovecot's crypt() refuses a longer
# password (`doveadm pw` prints `*0`), so an account with one could never log in
MAX_PASSWORD_BYTES = 511
# Below this many hashes one core is faster than starting helpers: a forked one costs a few
# milliseconds, a worker from the forkserver (needed once threads run, as in the sidecar) far more.
FORK_THRESHOLD = 16
PARALLEL_THRESHOLD = 200
PROGRESS_FROM = 200  # secrets; fewer take well under a second and show no progress
_CRYPT_EQUIVALENT = {None, "SHA512-CRYPT", "CRYPT"}  # all verified by libc crypt() in Dovecot


class Plaintext(Protocol):
    """A password in plaintext that shows itself only when asked (`sources.Secret`)."""

    def reveal(self) -> str: ...


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


def hash_password(secret: Plaintext) -> str:
    return _hash_text(secret.reveal())


def _hash_text(plaintext: str) -> str:
    salt = "".join(secrets.choice(_SALT_ALPHABET) for _ in range(_SALT_LENGTH))
    setting = "$6$" + salt  # ROUNDS is crypt's default for $6$, so not spelled out (as passlib)
    made = _crypt(plaintext, setting)
    if made is not None and made.startswith(setting.encode() + b"$"):
        return "{" + SCHEME + "}" + made.decode("ascii")
    return "{" + SCHEME + "}" + _hasher().hash(plaintext)


def verify(secret: Plaintext, stored: str) -> bool:
    """Does `stored` (as found in postfix-accounts.cf) accept `secret`? Unknown schemes: no.

    libxcrypt answers as Dovecot does (its crypt of the secret with the stored hash as setting
    must give back the stored hash, compared in constant time); libpass answers when it cannot."""
    return _verify_text(secret.reveal(), stored)


def _verify_text(plaintext: str, stored: str) -> bool:
    scheme, body = split_hash(stored)
    if scheme not in _CRYPT_EQUIVALENT and scheme not in ("SHA256-CRYPT", "MD5-CRYPT"):
        return False  # BLF-CRYPT, ARGON2 ...: cannot check here, so the password is re-hashed
    if body[:3] not in _PREFIXES:
        return False
    made = _crypt(plaintext, body)
    if made is not None:
        return hmac.compare_digest(made, body.encode("ascii"))
    handler = _handlers()[body[:3]]
    try:
        return bool(handler.verify(plaintext, body))
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
    return _verify_text(*item)


def hash_many(secrets_: Sequence[Plaintext]) -> list[str]:
    """New `{SHA512-CRYPT}` hashes for `secrets_`, in order, on every core when there are many."""
    if not secrets_:
        return []
    _libcrypt() or _hasher()  # loaded before forking, so the helpers share it
    with _progress("Hashing passwords", len(secrets_)) as advance:
        return _parallel_map(_hash_text, [s.reveal() for s in secrets_], advance)


def verify_many(pairs: Sequence[tuple[Plaintext, str]]) -> list[bool]:
    if not pairs:
        return []
    _libcrypt() or _handlers()
    with _progress("Verifying passwords", len(pairs)) as advance:
        return _parallel_map(_verify_item, [(s.reveal(), h) for s, h in pairs], advance)

"""The libxcrypt fast path of hashing and verifying: the C library's crypt (libcrypt.so.1, what
Dovecot and `doveadm pw` use) through ctypes, with libpass (pure Python) answering whenever the
library is missing or refuses the input. Both paths give byte-identical hashes and the same
answers, so which one ran never shows in postfix-accounts.cf.

"Fast" runs with the real libcrypt.so.1; "libpass" points the loader at a library name that does
not exist, as on a host without libcrypt.
"""

from __future__ import annotations

import hmac
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from reconciler.passwords import hashing as passwords
from reconciler.passwords.sources import Secret

PASSWORD = "DMS-made pässword"
# doveadm pw -s SCHEME -p 'DMS-made pässword' (Dovecot 2.3.19, Debian 12), as `setup email add`
DOVEADM_MADE = {
    "SHA512-CRYPT": "$6$wvEheCBZXk5kuHAg$3N44H62MJwEdbe0tmeYCFjhv1.MYHFYM7fYKMuc5xx626OE1pObWK3uXy"
    "EjpJ3i92vmjU27qyzSbRtP6WFyb71",
    "SHA256-CRYPT": "$5$jbnZe3/69pPLV4Gt$HzQcXnFjTtmTwWMTy/qv5IXdUf2n5T.fhgzp59Lz6BD",
    "MD5-CRYPT": "$1$7VjTT4pY$HJZBnjoO94CSojyWHR4/q0",
}
SETTINGS = [
    "$6$fixedsaltfixedsa",  # what apply writes: 5000 rounds, the default, so not spelled out
    "$6$rounds=656000$abcdefgh",
    "$6$rounds=1000$./09AZaz",
    "$5$fixedsaltfixedsa",
    "$1$fixedsal",
]


def libpass_hash(password: str, setting: str) -> str:
    """libpass's hash for `setting`, straight from passlib (not through `passwords`)."""
    from passlib.hash import md5_crypt, sha256_crypt, sha512_crypt

    handler = {"$6$": sha512_crypt, "$5$": sha256_crypt, "$1$": md5_crypt}[setting[:3]]
    found = re.search(r"rounds=(\d+)\$", setting)
    rounds = {"rounds": int(found.group(1))} if found else {}
    if setting[:3] in ("$6$", "$5$") and not found:
        rounds = {"rounds": 5000}
    salt = setting.split("$")[-1]  # a setting: `$6$salt` or `$6$rounds=N$salt`, no checksum
    return str(handler.using(salt=salt, **rounds).hash(password))


@pytest.fixture
def without_libcrypt(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(passwords, "LIBCRYPT", "libcrypt-that-is-not-here.so.1")
    passwords._libcrypt.cache_clear()
    yield
    passwords._libcrypt.cache_clear()


@pytest.fixture
def libpass_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test when libpass is asked anything: the fast path must answer alone."""

    def refuse() -> Any:
        raise AssertionError("libpass was used where libcrypt should have answered")

    passwords._libcrypt.cache_clear()
    monkeypatch.setattr(passwords, "_hasher", refuse)
    monkeypatch.setattr(passwords, "_handlers", refuse)


@pytest.fixture
def libpass_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What libpass was asked: "hash" for its hasher, "verify" for its handlers (which the
    hasher also asks for)."""
    calls: list[str] = []
    hasher, handlers = passwords._hasher, passwords._handlers

    def counted_hasher() -> Any:
        calls.append("hash")
        return hasher()

    def counted_handlers() -> Any:
        calls.append("verify")
        return handlers()

    monkeypatch.setattr(passwords, "_hasher", counted_hasher)
    monkeypatch.setattr(passwords, "_handlers", counted_handlers)
    return calls


@pytest.mark.parametrize("setting", SETTINGS)
def test_libcrypt_and_libpass_make_the_same_bytes_for_a_salt(setting: str) -> None:
    made = passwords._crypt(PASSWORD, setting)
    assert made is not None
    assert made.decode() == libpass_hash(PASSWORD, setting)


@pytest.mark.usefixtures("libpass_forbidden")
def test_apply_hashes_with_libcrypt_byte_identical_to_libpass() -> None:
    made = passwords.hash_password(Secret(PASSWORD))
    assert re.fullmatch(r"\{SHA512-CRYPT\}\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}", made), made
    body = made.split("}", 1)[1]
    assert body == libpass_hash(PASSWORD, body.rsplit("$", 1)[0])
    assert passwords.hash_password(Secret(PASSWORD)) != made  # a fresh salt each time


@pytest.mark.usefixtures("without_libcrypt")
def test_without_libcrypt_libpass_hashes_and_verifies(
    libpass_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert passwords._libcrypt() is None
    made = passwords.hash_password(Secret(PASSWORD))
    assert libpass_calls[:1] == ["hash"]
    assert made.startswith("{SHA512-CRYPT}$6$") and "rounds=" not in made
    libpass_calls.clear()
    assert passwords.verify(Secret(PASSWORD), made)
    assert not passwords.verify(Secret(PASSWORD + "x"), made)
    assert libpass_calls == ["verify", "verify"]
    monkeypatch.setattr(passwords, "LIBCRYPT", "libcrypt.so.1")  # the bytes libcrypt makes
    passwords._libcrypt.cache_clear()
    body = made.split("}", 1)[1]
    assert passwords._crypt(PASSWORD, body) == body.encode()


@pytest.mark.parametrize("path", ["fast", "libpass"])
@pytest.mark.parametrize("scheme", sorted(DOVEADM_MADE))
def test_dms_made_hashes_verify_on_both_paths(
    scheme: str, path: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("libpass_forbidden" if path == "fast" else "without_libcrypt")
    stored = "{" + scheme + "}" + DOVEADM_MADE[scheme]
    assert passwords.verify(Secret(PASSWORD), stored)
    assert not passwords.verify(Secret(PASSWORD + "x"), stored)
    assert passwords.verify(Secret(PASSWORD), DOVEADM_MADE[scheme])  # `{CRYPT}`-less, as DMS reads


@pytest.mark.skipif(shutil.which("doveadm") is None, reason="doveadm (dovecot-core) is not here")
@pytest.mark.usefixtures("libpass_forbidden")
def test_fresh_doveadm_hashes_are_what_the_fast_path_makes() -> None:
    """`doveadm pw -s SHA512-CRYPT -r 5000`, DMS's hash: the fast path makes it byte for byte from
    its salt, verifies it, and Dovecot verifies what the fast path makes."""
    made = subprocess.run(
        ["doveadm", "pw", "-s", "SHA512-CRYPT", "-r", "5000", "-p", PASSWORD],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    body = made.split("}", 1)[1]
    assert passwords._crypt(PASSWORD, body.rsplit("$", 1)[0]) == body.encode()
    assert body == libpass_hash(PASSWORD, body.rsplit("$", 1)[0])
    assert passwords.verify(Secret(PASSWORD), made)
    ours = passwords.hash_password(Secret(PASSWORD))
    checked = subprocess.run(
        ["doveadm", "pw", "-t", ours, "-p", PASSWORD], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0 and "verified" in checked.stdout, checked.stderr


def test_a_secret_libcrypt_refuses_goes_to_libpass(libpass_calls: list[str]) -> None:
    """libxcrypt refuses passphrases over 512 bytes (NULL from crypt_rn): libpass hashes them as
    before rather than failing the apply."""
    passwords._libcrypt.cache_clear()
    long = Secret("x" * 600)
    assert passwords._crypt(long.reveal(), "$6$fixedsaltfixedsa") is None
    made = passwords.hash_password(long)
    assert libpass_calls[:1] == ["hash"]
    libpass_calls.clear()
    assert passwords.verify(long, made)
    assert libpass_calls == ["verify"]
    assert not passwords.verify(Secret("x" * 599), made)


@pytest.mark.usefixtures("libpass_forbidden")
def test_verification_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(passwords.hmac, "compare_digest", recording)
    stored = DOVEADM_MADE["SHA512-CRYPT"]
    assert passwords.verify(Secret(PASSWORD), stored)
    assert not passwords.verify(Secret("other"), stored)
    assert len(compared) == 2 and compared[0] == (stored.encode(), stored.encode())


def test_a_library_with_crypt_r_only_and_its_failure_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """An older libcrypt with `crypt_r` and no `crypt_rn`: the same hashes, and its failure token
    (`*0`, here for a passphrase over 512 bytes) sends the secret to libpass. The library is the
    real one, seen through an object that hides `crypt_rn`."""
    import ctypes

    real = ctypes.CDLL

    class CryptROnly:
        def __init__(self, name: str) -> None:
            self.crypt_r = real(name).crypt_r

    monkeypatch.setattr(ctypes, "CDLL", CryptROnly)
    passwords._libcrypt.cache_clear()
    try:
        for setting in SETTINGS:
            made = passwords._crypt(PASSWORD, setting)
            assert made is not None and made.decode() == libpass_hash(PASSWORD, setting)
        assert passwords._crypt("x" * 600, SETTINGS[0]) is None  # crypt_r said "*0"
        long = Secret("x" * 600)
        assert passwords.verify(long, passwords.hash_password(long))
    finally:
        passwords._libcrypt.cache_clear()


# Stored hashes that are not what crypt makes: both paths must say no (and Dovecot, whose check is
# libcrypt's, does too), or yes for the two spellings crypt itself writes.
ODD_STORED = {
    "$6$rounds=5000$fixedsaltfixedsa$": True,  # explicit default rounds: crypt keeps them
    "$6$rounds=05000$fixedsaltfixedsa$": False,
    "$6$rounds=999$fixedsaltfixedsa$": False,
    "$6$fixedsaltfixedsaX$": False,  # a 17-character salt
    "$6$fixed*altfixedsa$": False,
    "$6$fixedsältfixedsa$": False,
    "$6$": False,
    "$6$abc$": False,
    "$1$$": False,
}


@pytest.mark.filterwarnings("ignore:salt too large")  # libpass on the 17-character salt
@pytest.mark.parametrize("path", ["fast", "libpass"])
@pytest.mark.parametrize("odd", sorted(ODD_STORED))
def test_odd_stored_hashes_get_the_same_answer_on_both_paths(
    odd: str, path: str, request: pytest.FixtureRequest
) -> None:
    if path == "libpass":
        request.getfixturevalue("without_libcrypt")
    checksum = libpass_hash(PASSWORD, "$6$fixedsaltfixedsa").rsplit("$", 1)[1]
    stored = odd + checksum if odd.endswith("sa$") else odd
    assert passwords.verify(Secret(PASSWORD), stored) is ODD_STORED[odd]


@pytest.mark.usefixtures("libpass_forbidden")
def test_threads_hash_and_verify_at_once_without_sharing_crypt_data() -> None:
    """Each call has its own `struct crypt_data` and ctypes lets go of the GIL: many threads at
    once still get, each, the hash of its own secret."""
    secrets_ = [f"thread secret {i}" for i in range(64)]
    settings = [f"$6$salt{i:012d}" for i in range(64)]
    expected = [libpass_hash(s, t) for s, t in zip(secrets_, settings, strict=True)]
    start = threading.Barrier(8)

    def work(index: int) -> tuple[bytes | None, bool]:
        if index < 8:
            start.wait(timeout=30)
        made = passwords._crypt(secrets_[index], settings[index])
        return made, passwords.verify(Secret(secrets_[index]), expected[index])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(64)))
    assert [made.decode() if made else None for made, _ in results] == expected
    assert all(ok for _, ok in results)

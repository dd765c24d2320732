"""The password library: libpass (passlib's maintained fork, same `passlib` import) on every
supported Python, with hashes byte-identical to what libc's crypt(3) and Dovecot make.

The reference is libc's own crypt_r(3) (libxcrypt, what Dovecot's `doveadm pw` and DMS's
`setup email add` use), called through ctypes so that it works on Python 3.13 too, where the stdlib
`crypt` module is gone. The DMS-made hashes below were made by `doveadm pw -s SCHEME` (Dovecot
2.3.19, Debian 12), as DMS's `setup email add` makes them; where doveadm is installed, fresh ones
are made and checked too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import shutil
import subprocess
import sys

import pytest

from reconciler.passwords import sources as passwords
from reconciler.passwords.sources import Secret

PASSWORD = "DMS-made pässword"
# doveadm pw -s SCHEME -p 'DMS-made pässword'
DOVEADM_MADE = {
    "SHA512-CRYPT": "$6$wvEheCBZXk5kuHAg$3N44H62MJwEdbe0tmeYCFjhv1.MYHFYM7fYKMuc5xx626OE1pObWK3uXy"
                    "EjpJ3i92vmjU27qyzSbRtP6WFyb71",
    "SHA256-CRYPT": "$5$jbnZe3/69pPLV4Gt$HzQcXnFjTtmTwWMTy/qv5IXdUf2n5T.fhgzp59Lz6BD",
    "MD5-CRYPT": "$1$7VjTT4pY$HJZBnjoO94CSojyWHR4/q0",
}


def libc_crypt(password: str, setting: str) -> str:
    """crypt_r(3) of the C library (libxcrypt on Debian)."""
    name = ctypes.util.find_library("crypt")
    assert name, "libcrypt is missing"
    lib = ctypes.CDLL(name)
    lib.crypt_r.restype = ctypes.c_char_p
    lib.crypt_r.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
    data = ctypes.create_string_buffer(32768)  # >= sizeof(struct crypt_data) in libxcrypt
    out = lib.crypt_r(password.encode(), setting.encode(), data)
    assert out and not out.startswith(b"*"), f"crypt_r refused {setting[:3]}"
    return str(out.decode())


def test_the_password_library_is_libpass() -> None:
    """passlib 1.7.4 (2020) imports the stdlib `crypt`, deprecated in 3.11 and gone in 3.13."""
    version = importlib.metadata.version("libpass")
    assert tuple(int(part) for part in version.split(".")[:2]) >= (1, 9), version
    imported = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c",
         "from passlib.hash import md5_crypt, sha256_crypt, sha512_crypt; import sys; "
         "print('crypt' in sys.modules)"], capture_output=True, text=True, check=False)
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert imported.stdout.strip() == "False"


@pytest.mark.parametrize("setting", [
    "$6$fixedsaltfixedsa",  # what apply writes: 5000 rounds, the default, so not spelled out
    "$6$rounds=656000$abcdefgh",
    "$5$fixedsaltfixedsa",
    "$1$fixedsal",
])
def test_hashes_are_byte_identical_to_libc_crypt(setting: str) -> None:
    from passlib.hash import md5_crypt, sha256_crypt, sha512_crypt

    handler = {"$6$": sha512_crypt, "$5$": sha256_crypt, "$1$": md5_crypt}[setting[:3]]
    rounds = {"rounds": int(setting.split("=")[1].split("$")[0])} if "rounds=" in setting else {}
    if setting.startswith(("$6$", "$5$")) and not rounds:
        rounds = {"rounds": 5000}
    salt = setting.rsplit("$", 1)[1]
    made = handler.using(salt=salt, **rounds).hash(PASSWORD)
    assert made == libc_crypt(PASSWORD, setting)


def test_apply_makes_hashes_libc_and_dovecot_accept() -> None:
    made = passwords.hash_password(Secret(PASSWORD))
    assert made.startswith("{SHA512-CRYPT}$6$") and "rounds=" not in made  # 5000: DMS's rounds
    body = made.split("}", 1)[1]
    assert libc_crypt(PASSWORD, body) == body
    assert libc_crypt(PASSWORD + "x", body) != body
    doveadm = shutil.which("doveadm")
    if doveadm:  # Dovecot's own check, as DMS's Dovecot logs a user in
        ok = subprocess.run([doveadm, "pw", "-t", made, "-p", PASSWORD], capture_output=True,
                            text=True, check=False)
        assert ok.returncode == 0 and "verified" in ok.stdout, ok.stderr


@pytest.mark.parametrize("scheme", sorted(DOVEADM_MADE))
def test_dms_made_hashes_verify(scheme: str) -> None:
    stored = "{" + scheme + "}" + DOVEADM_MADE[scheme]
    assert passwords.verify(Secret(PASSWORD), stored)
    assert not passwords.verify(Secret(PASSWORD + "x"), stored)


@pytest.mark.skipif(shutil.which("doveadm") is None, reason="doveadm (dovecot-core) is not here")
@pytest.mark.parametrize("scheme", sorted(DOVEADM_MADE))
def test_fresh_doveadm_hashes_verify(scheme: str) -> None:
    made = subprocess.run(["doveadm", "pw", "-s", scheme, "-p", PASSWORD], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert passwords.verify(Secret(PASSWORD), made)
    assert not passwords.verify(Secret("another"), made)

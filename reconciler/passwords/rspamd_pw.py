"""Rspamd controller password hashes, made and checked as `rspamadm pw` and the controller do.

`rspamadm pw` prints `$<id>$<salt>$<key>`: id 2 is Catena (its default), id 1 PBKDF2 over keyed
BLAKE2b (`rspamadm pw --type pbkdf2`); the controller accepts both (Rspamd 3.12.1
src/controller.c `rspamd_is_encrypted_password` looks the id up in `pbkdf_list`). We make id 1:
Python's hashlib has keyed BLAKE2b, so plan and apply need no container. Its parameters are
Rspamd's (src/libutil/util.c `pbkdf_list[0]`): 16000 rounds, a 20-byte salt, a 32-byte key;
the function is src/libcryptobox/cryptobox.c `rspamd_cryptobox_pbkdf2`: PBKDF2's structure with
`blake2b-512(data, key=password)` in place of HMAC (a password over 64 bytes is first hashed
with unkeyed BLAKE2b-512 to make the key). Salt and key are written in Rspamd's z-base32
(src/libutil/str_util.c `rspamd_encode_base32_buf`, RSPAMD_BASE32_DEFAULT: the bytes read as one
little-endian bit string, five bits at a time, least significant first).

A Catena (`$2$`) hash cannot be checked here: a password kept as one is hashed anew, once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ID = 1
ROUNDS = 16000
SALT_BYTES = 20
KEY_BYTES = 32
_ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"
_VALUE = {c: i for i, c in enumerate(_ALPHABET)}
_KEY_MAX = 64  # crypto_generichash_blake2b_KEYBYTES_MAX
# What the plan writes where apply puts a new hash (the plan is pure: no random salt there)
PENDING = "$1$dms-reconciler-hash-made-at-apply$"


def encode_base32(data: bytes) -> str:
    number = int.from_bytes(data, "little")
    return "".join(_ALPHABET[(number >> (5 * i)) & 31] for i in range((len(data) * 8 + 4) // 5))


def decode_base32(text: str) -> bytes | None:
    """The bytes of Rspamd's z-base32 `text` (None: not z-base32)."""
    number = 0
    for i, char in enumerate(text):
        value = _VALUE.get(char)
        if value is None:
            return None
        number |= value << (5 * i)
    length = len(text) * 5 // 8
    if number >> (length * 8):
        return None  # bits beyond the last whole byte: not what the encoder makes
    return number.to_bytes(length, "little")


def derive(password: bytes, salt: bytes, rounds: int = ROUNDS, length: int = KEY_BYTES) -> bytes:
    key = password if len(password) <= _KEY_MAX else hashlib.blake2b(password).digest()
    out = b""
    block = 1
    while len(out) < length:
        d1 = hashlib.blake2b(salt + block.to_bytes(4, "big"), key=key).digest()
        acc = int.from_bytes(d1, "big")
        for _ in range(1, rounds):
            d1 = hashlib.blake2b(d1, key=key).digest()
            acc ^= int.from_bytes(d1, "big")
        out += acc.to_bytes(64, "big")
        block += 1
    return out[:length]


def make(password: str, salt: bytes | None = None) -> str:
    """A `$1$<salt>$<key>` hash of `password` (a new random salt unless given)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    key = derive(password.encode("utf-8"), salt)
    return f"${ID}${encode_base32(salt)}${encode_base32(key)}"


def verify(password: str, stored: str) -> bool:
    """`stored` is a `$1$` hash of `password` (False for anything else, Catena included)."""
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] or parts[1] != str(ID):
        return False
    salt, key = decode_base32(parts[2]), decode_base32(parts[3])
    if salt is None or key is None or len(salt) != SALT_BYTES or len(key) != KEY_BYTES:
        return False
    return hmac.compare_digest(derive(password.encode("utf-8"), salt), key)


def placeholder(source_id: str) -> str:
    """A stand-in hash for a plan made without the secret (--offline): derived from where the
    secret would come from, never from it; no password has it (its key is all zero bytes)."""
    salt = hashlib.sha256(source_id.encode()).digest()[:SALT_BYTES]
    return f"${ID}${encode_base32(salt)}${encode_base32(bytes(KEY_BYTES))}"

"""DKIM key pairs: made with `cryptography` in the form `opendkim-genkey` leaves them.

DMS's `setup config dkim` runs `opendkim-genkey --bits=N`, which runs `openssl genrsa` (OpenSSL 3:
an RSA key with exponent 65537, PEM PKCS#8 `BEGIN PRIVATE KEY`) under umask 077, and writes the
DNS record file from the public key's base64 DER. We make the same bytes here, so a volume does
not care which tool made its keys. A private key is only ever written to its file (mode 0600)
and never shown; what is shown is the public half.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

PUBLIC_EXPONENT = 65537
SAFE_MODE_MASK = 0o077  # no permission for group or others, as opendkim-genkey's umask 077 leaves


@dataclass(frozen=True)
class KeyPair:
    private_pem: bytes
    public_b64: str

    def __repr__(self) -> str:  # never let a private key reach a log through repr()
        return f"KeyPair(<private key>, public={self.public_b64[:12]}...)"


def generate(bits: int) -> KeyPair:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return KeyPair(pem, _public_b64(key.public_key()))


def read(private_pem: bytes) -> tuple[int, str] | None:
    """(key size in bits, public key base64) of a PEM RSA private key, or None if unreadable."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError):
        return None
    if not isinstance(key, rsa.RSAPrivateKey):
        return None
    return key.key_size, _public_b64(key.public_key())


def _public_b64(public: object) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def unsafe_mode_warning(name: str, domain: str, mode: int | None) -> str | None:
    """A warning when the private key file `name` can be read by group or others (None: fine).

    Anyone who can read it can sign mail as `domain`. DMS copies the keys into the container
    and makes them 0700 there (setup.d/dmarc_dkim_spf.sh), so OpenDKIM itself still starts;
    the copy on the host is what is exposed. apply never changes an existing key file."""
    if mode is None or not mode & SAFE_MODE_MASK:
        return None
    return (
        f"the DKIM private key {name} is readable by group or others (mode {mode:04o}): "
        f"whoever can read the config volume can sign mail as {domain}; "
        f"run chmod 600 on it (opendkim-genkey and apply make keys 0600)"
    )

"""Secrets: argon2id for what people and clients choose, SHA-256 for what we generate.

Generated tokens carry 256 random bits, so a fast hash is enough to keep
their values out of the database; chosen secrets (passphrases, client
secrets) get argon2id. Hashing runs in a worker thread: it is slow on purpose.

Secrets the gateway must present to others (an organization's STOW-RS bearer
token or OAuth client secret) cannot be hashed: they are sealed, a JWE with
AES-256-GCM under a key of the deployment (``GATEWAY_SECRETS_KEY``), so the
database alone does not give them away.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import anyio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

_hasher = PasswordHasher()


async def hash_secret(secret: str) -> str:
    return await anyio.to_thread.run_sync(_hasher.hash, secret)


async def verify_secret(hashed: str | None, secret: str) -> bool:
    """Constant work whether or not there is a hash, so timing reveals nothing."""

    def verify() -> bool:
        try:
            return _hasher.verify(hashed or _DUMMY, secret) and hashed is not None
        except (VerificationError, InvalidHashError):
            return False

    return await anyio.to_thread.run_sync(verify)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def new_id() -> str:
    return secrets.token_hex(16)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_access_code() -> str:
    """Eight digits, the first not zero, as the RSNA Image Share cards print them."""
    return str(10_000_000 + secrets.randbelow(90_000_000))


_SEAL = {"alg": "dir", "enc": "A256GCM"}


class SealBroken(ValueError):
    """A sealed secret does not open with this key (another key, or altered)."""


def seal(key: bytes, value: str) -> str:
    """``value`` encrypted and authenticated under ``key`` (32 bytes), as compact JWE."""
    return jwe.encrypt_compact(_SEAL, value.encode(), OctKey.import_key(key))


def unseal(key: bytes, sealed: str) -> str:
    try:
        opened = jwe.decrypt_compact(sealed, OctKey.import_key(key), algorithms=["dir", "A256GCM"])
    except (JoseError, ValueError):
        raise SealBroken("the sealed secret does not open with this key") from None
    return (opened.plaintext or b"").decode()


_DUMMY = _hasher.hash(secrets.token_hex(8))

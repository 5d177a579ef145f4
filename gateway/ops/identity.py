"""Identity operations: keyed pseudonyms (HMAC-SHA256) and reversible encryption (AES-SIV).

Pseudonyms are one-way and stable within an epoch: the same device id gives the
same pseudonym on every worker and host holding the key, so the cloud can link
a device's messages without learning its id. Encryption is for references an
operator must resolve in a dispute (a UPI transaction ref): deterministic, so
equal inputs stay linkable, and reversible only with the key (``gateway reveal``).

Output formats (the key id is always visible, so the cloud knows which key a
value was made with):
- pseudonym: ``<kid>.<base32>``, e.g. ``k1.mfrggzdfmztwq2lk``; with ``keep_prefix``
  ``<prefix>-<kid>.<base32>``; with ``keep_after = "@"`` ``<kid>.<base32>@<handle>``.
- ciphertext: ``enc.<kid>.<base64url>``.
The base32 alphabet has no 0, 1, 8 or 9, so a pseudonym never looks like a
phone, card or UTR number to the leak guard.
"""

from __future__ import annotations

import base64
from typing import Literal

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from gateway.keys import KeyFileError, Keyring
from gateway.ops.base import BoundedCache, BuildEnv, Epochs, FieldRule, Transform, fusable

ENC_PREFIX = "enc."


class Pseudonymise(FieldRule, tag="pseudonymise"):
    """Replace a value by a keyed HMAC-SHA256 pseudonym."""

    accepts = str | int
    length: int = 16  # base32 characters (5 bits each): 16 -> 80 bits
    rotate: Literal["never", "daily", "monthly"] = "never"
    domain: str = "default"  # separate pseudonym spaces: "device" ids never match "user" ids
    keep_prefix: int = 0  # keep the first N characters, e.g. 8 for an IMEI's type code (TAC)
    keep_after: str = ""  # keep what follows the last separator, e.g. "@" for a UPI bank handle

    def __post_init__(self) -> None:
        if not 8 <= self.length <= 52:
            raise ValueError("length must be between 8 and 52 base32 characters")
        if self.keep_prefix < 0:
            raise ValueError("keep_prefix must be >= 0")
        if self.keep_prefix and self.keep_after:
            raise ValueError("use keep_prefix or keep_after, not both")
        if not self.domain.isidentifier():
            raise ValueError("domain must be a simple identifier")

    def build(self, env: BuildEnv) -> Transform:
        return pseudonymiser(env.keyring, env.epochs, self, env.cache_size)


def pseudonymiser(keyring: Keyring, epochs: Epochs, rule: Pseudonymise, cache_size: int) -> Transform:
    """Compiled ``pseudonymise``: key derived per epoch, recent results cached.

    A closure rather than a class: it is called once per field per message."""
    cache = BoundedCache(cache_size)
    state: list = [None, -1]  # HMAC object of the current epoch, its generation
    kid, length, prefix, after = keyring.active, rule.length, rule.keep_prefix, rule.keep_after

    def rekey() -> None:
        epoch = epochs.ids[rule.rotate]
        key = keyring.derive(f"pseudonymise|{rule.domain}|{rule.rotate}|{epoch}")
        state[0], state[1] = hmac.HMAC(key, hashes.SHA256()), epochs.generation
        cache.clear()

    def pseudonymise(value: str | int) -> str:
        if state[1] != epochs.generation:
            rekey()
        hit = cache.get(value)
        if hit is not None:
            return hit
        text = str(value)
        mac = state[0].copy()
        mac.update(text.encode("utf-8", "surrogatepass"))
        token = f"{kid}.{base64.b32encode(mac.finalize()).decode().lower()[:length]}"
        if prefix and len(text) > prefix:
            token = f"{text[:prefix]}-{token}"
        elif after and after in text:
            token = f"{token}{after}{text.rsplit(after, 1)[1]}"
        return cache.put(value, token)

    def refresh() -> None:
        """Re-key now if the epoch rolled over (the fused form below reads the cache directly)."""
        if state[1] != epochs.generation:
            rekey()

    def fuse(p: str) -> tuple[str, list[str], dict]:
        # A cache hit without the call (the cache never holds None or UNSET). Only valid while
        # whoever runs the fused code calls ``refresh`` when the epoch generation changes:
        # Engine.process does, before a message.
        return f"(r := {p}cache.get(v)) is not None", ["v = r"], {f"{p}cache": cache}

    pseudonymise.refresh = refresh  # type: ignore[attr-defined]
    return fusable(pseudonymise, fuse)


class Encrypt(FieldRule, tag="encrypt"):
    """Replace a value by its deterministic AES-SIV ciphertext (``gateway reveal`` undoes it)."""

    accepts = str | int

    def build(self, env: BuildEnv) -> Transform:
        return encryptor(env.keyring, env.cache_size)


def _siv(keyring: Keyring, kid: str | None = None) -> AESSIV:
    return AESSIV(keyring.derive("encrypt|aes-siv", length=64, kid=kid))


def encryptor(keyring: Keyring, cache_size: int) -> Transform:
    """Compiled ``encrypt``: AES-256-SIV under the active key, results cached."""
    prefix = ENC_PREFIX + keyring.active + "."
    seal = _siv(keyring).encrypt
    cache = BoundedCache(cache_size)

    def encrypt(value: str | int) -> str:
        hit = cache.get(value)
        if hit is not None:
            return hit
        sealed = seal(str(value).encode("utf-8", "surrogatepass"), None)
        return cache.put(value, prefix + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode())

    def fuse(p: str) -> tuple[str, list[str], dict]:  # a cache hit without the call
        return f"(r := {p}cache.get(v)) is not None", ["v = r"], {f"{p}cache": cache}

    return fusable(encrypt, fuse)


def reveal(keyring: Keyring, token: str) -> str:
    """The plaintext behind an ``enc.<kid>.<data>`` value (raises ValueError if it is not one)."""
    try:
        prefix, kid, data = token.split(".", 2)
        if prefix + "." != ENC_PREFIX:
            raise ValueError
        sealed = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        return _siv(keyring, kid).decrypt(sealed, None).decode("utf-8", "surrogatepass")
    except KeyFileError:
        raise ValueError("made with a key id that is not in this key file") from None
    except Exception:
        raise ValueError("not a value encrypted with this key file") from None

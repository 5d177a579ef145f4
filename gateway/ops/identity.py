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

from gateway.keys import Keyring, KeyFileError
from gateway.ops.base import BoundedCache, BuildEnv, Epochs, FieldRule, Transform

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
        return Pseudonymiser(env.keyring, env.epochs, self, env.cache_size)


class Pseudonymiser:
    """Compiled ``pseudonymise``: key derived per epoch, recent results cached."""

    def __init__(self, keyring: Keyring, epochs: Epochs, rule: Pseudonymise, cache_size: int):
        self.keyring, self.epochs, self.rule = keyring, epochs, rule
        self.cache = BoundedCache(cache_size)
        self.generation = -1
        self._rekey()

    def _rekey(self) -> None:
        epoch = self.epochs.ids[self.rule.rotate]
        key = self.keyring.derive(f"pseudonymise|{self.rule.domain}|{self.rule.rotate}|{epoch}")
        self.mac = hmac.HMAC(key, hashes.SHA256())
        self.cache.clear()
        self.generation = self.epochs.generation

    def digest(self, text: str) -> str:
        mac = self.mac.copy()
        mac.update(text.encode("utf-8", "surrogatepass"))
        b32 = base64.b32encode(mac.finalize()).decode().lower()
        return f"{self.keyring.active}.{b32[: self.rule.length]}"

    def __call__(self, value: str | int) -> str:
        if self.generation != self.epochs.generation:
            self._rekey()
        hit = self.cache.get(value)
        if hit is not None:
            return hit
        text = str(value)
        token = self.digest(text)
        rule = self.rule
        if rule.keep_prefix and len(text) > rule.keep_prefix:
            token = f"{text[: rule.keep_prefix]}-{token}"
        elif rule.keep_after and rule.keep_after in text:
            token = f"{token}{rule.keep_after}{text.rsplit(rule.keep_after, 1)[1]}"
        return self.cache.put(value, token)


class Encrypt(FieldRule, tag="encrypt"):
    """Replace a value by its deterministic AES-SIV ciphertext (``gateway reveal`` undoes it)."""

    accepts = str | int

    def build(self, env: BuildEnv) -> Transform:
        return Encryptor(env.keyring, env.cache_size)


def _siv(keyring: Keyring, kid: str | None = None) -> AESSIV:
    return AESSIV(keyring.derive("encrypt|aes-siv", length=64, kid=kid))


class Encryptor:
    """Compiled ``encrypt``: AES-256-SIV under the active key, results cached."""

    def __init__(self, keyring: Keyring, cache_size: int):
        self.kid = keyring.active
        self.siv = _siv(keyring)
        self.cache = BoundedCache(cache_size)

    def __call__(self, value: str | int) -> str:
        hit = self.cache.get(value)
        if hit is not None:
            return hit
        sealed = self.siv.encrypt(str(value).encode("utf-8", "surrogatepass"), None)
        token = ENC_PREFIX + self.kid + "." + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()
        return self.cache.put(value, token)


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

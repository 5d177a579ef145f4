"""Dead letters: rejected messages, sealed for the key holder, back on the local broker.

A rejected message is raw personal data (a PIN, a phone number, a UPI PIN is
exactly what gets a message rejected). Anyone who may subscribe on the local
broker could read it in the clear, so each dead letter is sealed with AES-256-GCM
under a subkey of the site's key file (HKDF purpose ``dead-letter|v1``, the active
key id): only a key holder can open it (``gateway deadletter open``). The original
topic is inside the seal too (it may carry a device id); the MQTT user properties
say only the reason, policy and rule, from the policy's vocabulary.

A dead-letter prefix that a subscribed topic filter matches would make the gateway
consume its own dead letters for ever, so it is refused (`check_prefix`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.keys import KeyFileError, Keyring

__all__ = ["Letter", "Sealer", "check_prefix", "open_letter", "overlaps"]

PURPOSE = "dead-letter|v1"
AAD = b"gateway-dead-letter/v1|"


class Letter(msgspec.Struct, kw_only=True):
    """What a dead letter holds once opened."""

    topic: str  # the device's topic, as received
    payload: bytes  # the raw payload (base64 in JSON)
    reason: str
    policy: str
    rule: str = ""
    at: float = 0.0  # Unix time it was rejected


class Envelope(msgspec.Struct, kw_only=True):
    """What is published: the key id, a fresh nonce and the AES-GCM ciphertext of a JSON `Letter`."""

    v: int = 1
    kid: str
    nonce: bytes
    ct: bytes


class Sealer:
    """Seals letters with the keyring's active key (one AESGCM per key id)."""

    def __init__(self, keyring: Keyring) -> None:
        self.kid = keyring.active
        self._aead = AESGCM(keyring.derive(PURPOSE, 32))

    def seal(self, topic: str, payload: bytes, reason: str, policy: str, rule: str) -> bytes:
        letter = msgspec.json.encode(Letter(topic=topic, payload=payload, reason=reason, policy=policy, rule=rule,
                                            at=round(time.time(), 3)))
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, letter, AAD + self.kid.encode())
        return msgspec.json.encode(Envelope(kid=self.kid, nonce=nonce, ct=ct))


def open_letter(keyring: Keyring, data: bytes) -> Letter:
    """Open one sealed dead letter; ValueError if it is not one or not for these keys."""
    try:
        env = msgspec.json.decode(data, type=Envelope)
        key = keyring.derive(PURPOSE, 32, kid=env.kid)
        plain = AESGCM(key).decrypt(env.nonce, env.ct, AAD + env.kid.encode())
        return msgspec.json.decode(plain, type=Letter)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise ValueError("not a sealed dead letter") from None
    except KeyFileError:
        raise ValueError("sealed with a key id this key file does not hold") from None
    except InvalidTag:
        raise ValueError("does not open with this key file (wrong key, or altered)") from None


def overlaps(a: str, b: str) -> bool:
    """True if some topic matches both MQTT filters ``a`` and ``b``."""
    x, y = a.split("/"), b.split("/")
    for i in range(max(len(x), len(y))):
        p = x[i] if i < len(x) else None
        q = y[i] if i < len(y) else None
        if p == "#" or q == "#":
            return True
        if p is None or q is None:
            return False
        if p != q and p != "+" and q != "+":
            return False
    return True


def check_prefix(prefix: str, filters: Iterable[tuple[str, str]]) -> str | None:
    """The problem with ``prefix`` if a (name, filter) the gateway subscribes to matches a dead letter's topic."""
    topic = f"{prefix}/+"
    for name, flt in filters:
        if overlaps(flt, topic):
            return (f"dead_letter {prefix!r}: {name} subscribes to {flt!r}, which matches the dead letters "
                    f"({prefix}/<reason>): they would be consumed again for ever; choose a prefix nothing "
                    "subscribes to")
    return None

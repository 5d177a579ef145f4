"""Identity operations: keyed pseudonyms (HMAC-SHA256) and reversible encryption (AES-SIV).

Pseudonyms are one-way and stable within an epoch: the same device id gives the
same pseudonym on every worker and host holding the key, so the cloud can link
a device's messages without learning its id. Encryption is for references an
operator must resolve in a dispute (a UPI transaction ref): deterministic, so
equal inputs stay linkable, and reversible only with the key (``gateway reveal``).

Keys are separated by pack: the subkey's HKDF info names the policy (``pack:<name>``),
or a linkage domain the policy declares (``link:<name>``), so the same IMEI or phone
gives unrelated outputs in two packs unless both declare the same ``link_domain``.
Within a pack, ``domain`` separates fields (for ``encrypt`` every field has its own
key unless rules name a shared ``domain``).

Output formats (the key id is always visible, so the cloud knows which key a
value was made with):
- pseudonym: ``<kid>.<base32>``, e.g. ``k1.mfrggzdfmztwq2lk``; with ``keep_prefix``
  ``<prefix>-<kid>.<base32>``; with ``keep_after = "@"`` ``<kid>.<base32>@<handle>``.
  An affix is kept only when the whole value has the declared ``shape`` (or
  ``pattern``) and the leak guard finds nothing in it; otherwise the whole value is
  pseudonymised, or with ``on_mismatch = "reject"`` the message is rejected.
- ciphertext: ``enc.<kid>.<scope>.<domain>.<base64url>``; ``<scope>`` is the pack name
  or ``link:<name>``: what ``gateway reveal`` needs to find the subkey, never data.
The base32 alphabet has no 0, 1, 8 or 9, so a pseudonym never looks like a
phone, card or UTR number to the leak guard.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from gateway.keys import KeyFileError, Keyring
from gateway.ops.base import BoundedCache, BuildEnv, Compiled, Epochs, FieldRule, per_value
from gateway.ops.detect import ALL, find

ENC_PREFIX = "enc."
LINK = re.compile(r"[a-z][a-z0-9_-]{0,62}")
HANDLE = re.compile(r"[a-z][a-z0-9]{1,31}")
# A UPI virtual payment address: one "@", a plain local part, a bank handle of letters.
_VPA = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}@([A-Za-z]{2,32})", re.ASCII)


class AffixRefused(Exception):
    """A value lacks the shape its rule requires to keep part of it (``on_mismatch = "reject"``).

    ``args[0]`` is the rule's label; the value is never part of the exception."""


def scope(pack: str, link_domain: str) -> str:
    """The key scope of a rule: its linkage domain if one is declared, else its pack."""
    return f"link:{link_domain}" if link_domain else f"pack:{pack}"


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def is_imei(text: str) -> bool:
    """15 ASCII digits with a valid Luhn check digit."""
    return len(text) == 15 and text.isascii() and text.isdigit() and _luhn(text)


class Pseudonymise(FieldRule, tag="pseudonymise"):
    """Replace a value by a keyed HMAC-SHA256 pseudonym."""

    accepts = str | int
    length: int = 16  # base32 characters (5 bits each): 16 -> 80 bits
    rotate: Literal["never", "daily", "monthly"] = "never"
    domain: str = "default"  # separate pseudonym spaces: "device" ids never match "user" ids
    link_domain: str = ""  # share pseudonyms with other packs declaring the same name ("" = the policy's)
    keep_prefix: int = 0  # keep the first N characters, e.g. 8 for an IMEI's type code (TAC)
    keep_after: str = ""  # keep what follows the last separator, e.g. "@" for a UPI bank handle
    # What a value must be for its affix to be kept: by default "imei" with keep_prefix and "vpa"
    # with keep_after = "@" (any other separator needs a pattern).
    shape: Literal["auto", "imei", "vpa"] = "auto"
    pattern: str = ""  # or a regular expression the whole value must match
    handles: list[str] = []  # shape "vpa": the bank handles that may be kept ([] = any of letters)
    on_mismatch: Literal["pseudonymise", "reject"] = "pseudonymise"  # a value without the shape

    def __post_init__(self) -> None:
        if not 8 <= self.length <= 52:
            raise ValueError("length must be between 8 and 52 base32 characters")
        if self.keep_prefix < 0:
            raise ValueError("keep_prefix must be >= 0")
        if self.keep_prefix and self.keep_after:
            raise ValueError("use keep_prefix or keep_after, not both")
        if not self.domain.isidentifier() or not self.domain.isascii():
            raise ValueError("domain must be a simple identifier")
        if self.link_domain and not LINK.fullmatch(self.link_domain):
            raise ValueError("link_domain must match [a-z][a-z0-9_-]* (at most 63 characters)")
        affix = bool(self.keep_prefix or self.keep_after)
        if not affix and (self.shape != "auto" or self.pattern or self.handles or self.on_mismatch != "pseudonymise"):
            raise ValueError("shape, pattern, handles and on_mismatch go with keep_prefix or keep_after")
        if self.shape != "auto" and self.pattern:
            raise ValueError("use shape or pattern, not both")
        if affix and self.shape == "auto" and not self.pattern:
            if self.keep_after and self.keep_after != "@":
                raise ValueError(f"keep_after = {self.keep_after!r} needs a pattern: what a value must look like "
                                 "for the part after it to be kept in clear")
            if self.keep_prefix > 8:
                raise ValueError("keep_prefix above 8 needs a pattern: what a value must look like for its "
                                 "prefix to be kept in clear (the default shape, imei, keeps at most the 8-digit TAC)")
        if self.shape == "imei" and not 1 <= self.keep_prefix <= 8:
            raise ValueError('shape = "imei" goes with keep_prefix between 1 and 8 (the type allocation code)')
        if self.shape == "vpa" and self.keep_after != "@":
            raise ValueError('shape = "vpa" goes with keep_after = "@"')
        vpa = self.shape == "vpa" or (self.shape == "auto" and not self.pattern and self.keep_after == "@")
        if self.handles and not vpa:
            raise ValueError('handles go with shape = "vpa" (the default with keep_after = "@")')
        bad = [h for h in self.handles if not HANDLE.fullmatch(h)]
        if bad:
            raise ValueError(f"handles must be lower-case bank handles such as okaxis, got {bad[:3]}")
        if self.pattern:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None

    def build(self, env: BuildEnv) -> Compiled:
        key_scope = scope(env.pack, self.link_domain or env.link_domain)
        return pseudonymiser(env.keyring, env.epochs, self, env.cache_size, key_scope)


def affix_of(rule: Pseudonymise) -> Callable[[str], str | None]:
    """``text -> kept part or None``: the affix ``rule`` may keep of a value, if it has the declared
    shape and the leak guard finds nothing in that part."""
    prefix, after, shape, handles = rule.keep_prefix, rule.keep_after, rule.shape, frozenset(rule.handles)
    pattern = re.compile(rule.pattern) if rule.pattern else None
    if shape == "auto" and pattern is None:
        shape = "imei" if prefix else "vpa"

    def affix(text: str) -> str | None:
        if shape == "imei":
            if not is_imei(text):
                return None
        elif shape == "vpa":
            m = _VPA.fullmatch(text)
            if m is None or (handles and m.group(1).lower() not in handles):
                return None
        elif pattern is None or pattern.fullmatch(text) is None:
            return None
        if prefix:
            part = text[:prefix] if len(text) > prefix else None
        else:
            part = after + text.rsplit(after, 1)[1] if after in text else None
        if not part or find(part, ALL):
            return None
        return part

    return affix


def pseudonymiser(
    keyring: Keyring, epochs: Epochs, rule: Pseudonymise, cache_size: int, key_scope: str = "pack:"
) -> Compiled:
    """Compiled ``pseudonymise``: key derived per epoch, recent results cached.

    A closure rather than a class: it is called once per field per message."""
    cache: BoundedCache[Any, str] = BoundedCache(cache_size)
    state: list[Any] = [None, -1]  # HMAC object of the current epoch, its generation
    kid, length, prefix = keyring.active, rule.length, rule.keep_prefix
    affix = affix_of(rule) if (rule.keep_prefix or rule.keep_after) else None
    reject, label = rule.on_mismatch == "reject", rule.label()

    def rekey() -> None:
        epoch = epochs.ids[rule.rotate]
        key = keyring.derive(f"pseudonymise|{key_scope}|{rule.domain}|{rule.rotate}|{epoch}")
        state[0], state[1] = hmac.HMAC(key, hashes.SHA256()), epochs.generation
        cache.clear()

    def pseudonymise(value: str | int) -> str:
        if state[1] != epochs.generation:
            rekey()
        hit: str | None = cache.get(value)
        if hit is not None:
            return hit
        text = str(value)
        mac = state[0].copy()
        mac.update(text.encode("utf-8", "surrogatepass"))
        token = f"{kid}.{base64.b32encode(mac.finalize()).decode().lower()[:length]}"
        if affix is not None:
            part = affix(text)
            if part is None:
                if reject:
                    raise AffixRefused(label)  # never cached: every such message is rejected
            elif prefix:
                token = f"{part}-{token}"
            else:
                token = f"{token}{part}"
        cache.put(value, token)
        return token

    def refresh() -> None:
        """Re-key now if the epoch rolled over (the fused form below reads the cache directly)."""
        if state[1] != epochs.generation:
            rekey()

    def fuse(p: str) -> tuple[str, list[str], dict[str, Any]]:
        # A cache hit without the call (the cache never holds None or UNSET). Only valid while
        # whoever runs the fused code calls ``refresh`` when the epoch generation changes:
        # Engine.process does, before a message.
        return f"(r := {p}cache.get(v)) is not None", ["v = r"], {f"{p}cache": cache}

    rekey()  # the subkey is derived when the plan is compiled, not on the first message
    return Compiled(pseudonymise, per_value(fuse), refresh)


class Encrypt(FieldRule, tag="encrypt"):
    """Replace a value by its deterministic AES-SIV ciphertext (``gateway reveal`` undoes it)."""

    accepts = str | int
    domain: str = ""  # "" = this field only; rules naming one domain share a key (equal values match)
    link_domain: str = ""  # share ciphertexts with other packs declaring the same name ("" = the policy's)

    def __post_init__(self) -> None:
        if self.domain and (not self.domain.isidentifier() or not self.domain.isascii()):
            raise ValueError("domain must be a simple identifier")
        if self.link_domain and not LINK.fullmatch(self.link_domain):
            raise ValueError("link_domain must match [a-z][a-z0-9_-]* (at most 63 characters)")

    def build(self, env: BuildEnv) -> Compiled:
        domain = self.domain or field_domain(env.field or self.path)
        return encryptor(env.keyring, env.cache_size, scope(env.pack, self.link_domain or env.link_domain), domain)


def field_domain(path: str) -> str:
    """The default encryption domain of a field: its path as an identifier (``operator.phone`` ->
    ``operator_phone``, ``sos_numbers[]`` -> ``sos_numbers``)."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", path).strip("_") or "value"


def _siv(keyring: Keyring, kid: str | None = None, key_scope: str | None = None, domain: str = "") -> AESSIV:
    purpose = "encrypt|aes-siv" if key_scope is None else f"encrypt|{key_scope}|{domain}|aes-siv"
    return AESSIV(keyring.derive(purpose, length=64, kid=kid))


def encryptor(keyring: Keyring, cache_size: int, key_scope: str = "pack:", domain: str = "value") -> Compiled:
    """Compiled ``encrypt``: AES-256-SIV under the active key's subkey for this scope and domain,
    results cached. The token names the scope and domain so ``reveal`` can find the subkey."""
    label = key_scope[5:] if key_scope.startswith("pack:") else key_scope
    prefix = f"{ENC_PREFIX}{keyring.active}.{label}.{domain}."
    seal = _siv(keyring, None, key_scope, domain).encrypt
    cache: BoundedCache[Any, str] = BoundedCache(cache_size)

    def encrypt(value: str | int) -> str:
        hit: str | None = cache.get(value)
        if hit is not None:
            return hit
        sealed = seal(str(value).encode("utf-8", "surrogatepass"), None)
        token = prefix + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()
        cache.put(value, token)
        return token

    def fuse(p: str) -> tuple[str, list[str], dict[str, Any]]:  # a cache hit without the call
        return f"(r := {p}cache.get(v)) is not None", ["v = r"], {f"{p}cache": cache}

    return Compiled(encrypt, per_value(fuse))


def reveal(keyring: Keyring, token: str) -> str:
    """The plaintext behind an ``enc.<kid>.<scope>.<domain>.<data>`` value (or the older
    ``enc.<kid>.<data>``, made with one key for every pack); raises ValueError if it is not one."""
    try:
        parts = token.strip().split(".")
        if parts[0] + "." != ENC_PREFIX or len(parts) not in (3, 5):
            raise ValueError
        kid, data = parts[1], parts[-1]
        if len(parts) == 5:
            label, domain = parts[2], parts[3]
            siv = _siv(keyring, kid, label if label.startswith("link:") else f"pack:{label}", domain)
        else:
            siv = _siv(keyring, kid)
        sealed = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        return siv.decrypt(sealed, None).decode("utf-8", "surrogatepass")
    except KeyFileError:
        raise ValueError("made with a key id that is not in this key file") from None
    except Exception:
        raise ValueError("not a value encrypted with this key file") from None

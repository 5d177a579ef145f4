"""Consent on record, read from signed, retained messages on the local broker.

The site's consent system (an app backend, a kiosk, a fleet portal) publishes
``consent/<device>/<purpose>`` retained, with a record signed by its Ed25519 key::

    {"granted": true, "issued_at": 1764770000, "expires_at": 1796306000, "sig": "<base64>"}

Why signed: the local broker is where every device publishes, so a topic alone
proves nothing (any client could publish ``consent/<imei>/precise_location = true``
and unlock precise location). The gateway holds only the issuer's *public* key(s),
so it cannot mint consent itself. The signature covers the device and purpose of
the topic, the verdict and both times (see `signed_bytes`), so a record cannot be
moved to another device or purpose. ``issued_at`` orders records: an older record
than the one in force (a replayed grant after a revocation) is ignored; a grant
lapses at ``expires_at``. Anything unsigned or badly signed, grant or revocation,
changes nothing and is counted (``unauthenticated``).

The table is bounded (``max_entries`` grants); a grant that does not fit is
refused and counted (``full``), a revocation always applies. It lives in memory
only and is never forwarded, logged or labelled.
"""

from __future__ import annotations

import base64
import heapq
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.policy.topics import TopicFilter
from gateway.service.consent_store import WatermarkStore

__all__ = ["RESULTS", "ConsentKeyError", "Consents", "Record", "load_private_key", "public_key", "sign", "signed_bytes"]

DOMAIN = "gateway-consent/v1"
# Every result update() can return, i.e. every value of gateway_consent_updates_total{result}.
RESULTS = ("granted", "revoked", "expired", "unauthenticated", "stale", "invalid", "full")


class ConsentKeyError(ValueError):
    """A consent key that cannot be used (the message never holds key material)."""


class Record(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One consent record as published (JSON)."""

    granted: bool
    issued_at: int  # Unix seconds, set by the issuer: a later record replaces an earlier one
    expires_at: int | None = None  # Unix seconds; a grant lapses then
    sig: str  # base64 Ed25519 signature of signed_bytes(...)


def signed_bytes(device: str, purpose: str, granted: bool, issued_at: int, expires_at: int | None) -> bytes:
    """What the issuer signs: the domain, the topic's device and purpose, the verdict and the times, one per line."""
    exp = "" if expires_at is None else str(expires_at)
    return f"{DOMAIN}\n{device}\n{purpose}\n{'true' if granted else 'false'}\n{issued_at}\n{exp}".encode()


def public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from base64 (its 32 raw bytes)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ConsentKeyError("not a base64 Ed25519 public key (32 bytes)") from None


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The issuer's private key file (base64 of the 32-byte seed, first line), as ``gateway consent keygen`` writes."""
    try:
        raw = base64.b64decode(Path(path).read_text().split()[0], validate=True)
        return Ed25519PrivateKey.from_private_bytes(raw)
    except OSError as exc:
        raise ConsentKeyError(f"cannot read consent key {str(path)!r}: {exc.strerror}") from None
    except (ValueError, IndexError):
        raise ConsentKeyError(f"consent key {str(path)!r} is not a base64 Ed25519 private key") from None


def keygen(path: str | os.PathLike[str]) -> str:
    """Write a new issuer key (0600, never overwriting) and return its public key (base64)."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes_raw()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise ConsentKeyError(f"{str(path)!r} exists") from None
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(seed).decode() + "\n")
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


def sign(key: Ed25519PrivateKey, device: str, purpose: str, granted: bool,
         issued_at: int | None = None, expires_at: int | None = None) -> bytes:
    """A signed record (the payload to publish retained on ``consent/<device>/<purpose>``)."""
    issued = int(time.time()) if issued_at is None else issued_at
    sig = key.sign(signed_bytes(device, purpose, granted, issued, expires_at))
    return msgspec.json.encode(Record(granted=granted, issued_at=issued, expires_at=expires_at,
                                      sig=base64.b64encode(sig).decode()))


class Consents:
    """device id -> purposes granted, kept up to date from signed ``<template>`` records."""

    def __init__(self, template: str, keys: Iterable[Ed25519PublicKey] = (), max_entries: int = 100_000,
                 max_clock_skew_s: int = 300, store: WatermarkStore | None = None) -> None:
        self.filter = TopicFilter(template)
        literal = []
        for level in self.filter.levels:
            if level is None:
                break
            literal.append(level + "/")
        self._start = "".join(literal)  # "consent/": what every matching topic starts with
        names = dict((n, i) for i, n in self.filter.names)
        if set(names) != {"device", "purpose"}:
            raise ValueError("the consent topic needs exactly the captures {device} and {purpose}")
        self.keys = list(keys)
        self.max_entries = max_entries
        self.max_clock_skew_s = max_clock_skew_s
        self.table: dict[str, frozenset[str]] = {}  # what the engine reads
        self._grants: dict[tuple[str, str], int] = {}  # (device, purpose) -> issued_at of the grant in force
        self._revoked: dict[tuple[str, str], int] = {}  # -> issued_at of the revocation in force (bounded)
        # issued_at of the newest revocation forgotten to make room: grants no newer are stale
        self._floor: float = float("-inf")
        self._expiries: list[tuple[int, tuple[str, str], int]] = []  # heap of (expires_at, key, issued_at)
        self.next_expiry = float("inf")
        self.store = store  # watermarks kept across restarts (None: in memory only)

    @property
    def subscription(self) -> str:
        return self.filter.subscription

    def matches(self, topic: str) -> bool:
        """Asked of every message: a topic without the filter's literal start is answered at once."""
        return topic.startswith(self._start) and self.filter.match(topic.split("/")) is not None

    def configure(self, keys: Iterable[Ed25519PublicKey], max_entries: int, max_clock_skew_s: int) -> None:
        """A reload: new trusted keys and bounds apply to the next record (records in force stay)."""
        self.keys = list(keys)
        self.max_entries = max_entries
        self.max_clock_skew_s = max_clock_skew_s

    def __len__(self) -> int:
        return len(self._grants)

    def update(self, topic: str, payload: bytes, now: float | None = None) -> str:
        """Apply one consent record; returns one of `RESULTS`."""
        now = time.time() if now is None else now
        captured = self.filter.match(topic.split("/"))
        if captured is None:
            return "invalid"
        device, purpose = captured["device"], captured["purpose"]
        if "\n" in device or "\n" in purpose:
            return "invalid"
        if b'"sig"' not in payload:
            return "unauthenticated"  # "true", "", {"granted": true}: anyone could have sent it
        try:
            rec = msgspec.json.decode(payload, type=Record)
            sig = base64.b64decode(rec.sig, validate=True)
        except (msgspec.DecodeError, ValueError):
            return "invalid"
        message = signed_bytes(device, purpose, rec.granted, rec.issued_at, rec.expires_at)
        if not self._verified(sig, message):
            return "unauthenticated"
        if rec.issued_at > now + self.max_clock_skew_s:
            return "invalid"  # from the future: a wrong clock, or a record made to outlive revocations
        key = (device, purpose)
        store = self.store
        if store is not None:
            mark = store.get(device, purpose)
            if mark is not None and rec.issued_at < mark:
                return "stale"  # older than a record accepted before, perhaps before a restart
        result = self._apply(key, rec, now)
        if store is not None and result in ("granted", "revoked", "expired"):
            store.set(device, purpose, rec.issued_at)
        return result

    def _apply(self, key: tuple[str, str], rec: Record, now: float) -> str:
        device, purpose = key
        in_force = self._grants.get(key)
        revoked_at = self._revoked.get(key)
        if in_force is not None and (rec.issued_at < in_force or (rec.issued_at == in_force and rec.granted)):
            return "stale" if rec.issued_at < in_force else "granted"  # older, or the same grant again
        if revoked_at is not None and rec.issued_at <= revoked_at:
            return "stale" if rec.issued_at < revoked_at or rec.granted else "revoked"
        if in_force is None and revoked_at is None and rec.granted and rec.issued_at <= self._floor:
            return "stale"
        if rec.granted and rec.expires_at is not None and rec.expires_at <= now:
            self._revoke(key, rec.issued_at)
            return "expired"
        if not rec.granted:
            self._revoke(key, rec.issued_at)
            return "revoked"
        if in_force is None and len(self._grants) >= self.max_entries:
            return "full"
        self._revoked.pop(key, None)
        self._grants[key] = rec.issued_at
        self.table[device] = self.table.get(device, frozenset()) | {purpose}
        if rec.expires_at is not None:
            heapq.heappush(self._expiries, (rec.expires_at, key, rec.issued_at))
            self.next_expiry = self._expiries[0][0]
        return "granted"

    def expire(self, now: float) -> int:
        """Lift grants whose ``expires_at`` has passed; returns how many."""
        n = 0
        heap = self._expiries
        while heap and heap[0][0] <= now:
            _, key, issued_at = heapq.heappop(heap)
            if self._grants.get(key) == issued_at:  # still the grant in force
                self._revoke(key, issued_at)
                n += 1
        self.next_expiry = heap[0][0] if heap else float("inf")
        return n

    def _verified(self, sig: bytes, message: bytes) -> bool:
        for key in self.keys:
            try:
                key.verify(sig, message)
                return True
            except InvalidSignature:
                continue
        return False

    def _revoke(self, key: tuple[str, str], issued_at: int) -> None:
        if self._grants.pop(key, None) is not None:
            device, purpose = key
            left = self.table.get(device, frozenset()) - {purpose}
            if left:
                self.table[device] = left
            else:
                self.table.pop(device, None)
        self._revoked.pop(key, None)
        self._revoked[key] = issued_at
        while len(self._revoked) > self.max_entries:  # forget the oldest, but never let its grants back in
            oldest = next(iter(self._revoked))
            self._floor = max(self._floor, self._revoked.pop(oldest))

    def view(self) -> Mapping[str, frozenset[str]]:
        return self.table

"""Consent on record, read from retained messages on the local broker.

The site's consent system (an app backend, a kiosk, a fleet portal) publishes
``consent/<device>/<purpose>`` retained, e.g. ``consent/358756091234567/precise_location``
with payload ``true``. Retained, so every worker (and a restarted gateway) learns
the current state on subscribing; an empty retained payload clears it. The table
lives in memory only and is never forwarded, logged or labelled.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from gateway.policy.topics import TopicFilter

__all__ = ["Consents"]

_GRANT = {b"1", b"true", b"yes", b"granted", b"on"}
_REVOKE = {b"", b"0", b"false", b"no", b"revoked", b"off", b"null"}


class Consents:
    """device id -> purposes granted, kept up to date from ``<template>`` messages."""

    def __init__(self, template: str) -> None:
        self.filter = TopicFilter(template)
        names = dict((n, i) for i, n in self.filter.names)
        if set(names) != {"device", "purpose"}:
            raise ValueError("the consent topic needs exactly the captures {device} and {purpose}")
        self.table: dict[str, frozenset[str]] = {}

    @property
    def subscription(self) -> str:
        return self.filter.subscription

    def matches(self, topic: str) -> bool:
        return self.filter.match(topic.split("/")) is not None

    def update(self, topic: str, payload: bytes) -> str:
        """Apply one consent message; returns ``granted``, ``revoked`` or ``invalid``."""
        captured = self.filter.match(topic.split("/"))
        if captured is None:
            return "invalid"
        granted = _parse(payload)
        if granted is None:
            return "invalid"
        device, purpose = captured["device"], captured["purpose"]
        purposes = set(self.table.get(device, ()))
        if granted:
            purposes.add(purpose)
        else:
            purposes.discard(purpose)
        if purposes:
            self.table[device] = frozenset(purposes)
        else:
            self.table.pop(device, None)
        return "granted" if granted else "revoked"

    def view(self) -> Mapping[str, frozenset[str]]:
        return self.table


def _parse(payload: bytes) -> bool | None:
    text = payload.strip().lower()
    if text in _GRANT:
        return True
    if text in _REVOKE:
        return False
    try:
        doc = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("granted"), bool):
        return doc["granted"]
    return None

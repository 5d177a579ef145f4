"""Tracksolid MQTT topics: ``tracksolid/{imei}/{kind}``, as ``[route] topics`` in the pack."""

from __future__ import annotations

from typing import Final

from devices.jimi_tracksolid.messages import KINDS

__all__ = ["KINDS", "PATTERN", "SUBSCRIBE", "topic"]

PATTERN: Final = "tracksolid/{imei}/{kind}"
SUBSCRIBE: Final = "tracksolid/+/+"


def topic(imei: str, kind: str) -> str:
    """The topic a tracker publishes a message of ``kind`` (its ``type``) on."""
    return PATTERN.format(imei=imei, kind=kind)

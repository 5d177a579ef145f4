"""WiFiKit MQTT topics: ``wifikit/{device}/{kind}``, as ``[route] topics`` in the pack."""

from __future__ import annotations

from typing import Final

PATTERN: Final = "wifikit/{device}/{kind}"
SUBSCRIBE: Final = "wifikit/+/+"
KINDS: Final = ("login", "location", "crash", "usage", "alarm", "media", "status")


def topic(device: str, kind: str) -> str:
    """The topic the app publishes a message of ``kind`` about ``device`` (its IMEI) on."""
    return PATTERN.format(device=device, kind=kind)

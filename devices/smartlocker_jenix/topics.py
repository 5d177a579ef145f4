"""SmartLocker MQTT topics: ``smartlocker/{site}/{cabinet}/{kind}``, as ``[route] topics`` in the pack."""

from __future__ import annotations

from typing import Final

PATTERN: Final = "smartlocker/{site}/{cabinet}/{kind}"
SUBSCRIBE: Final = "smartlocker/+/+/+"
KINDS: Final = ("event", "access", "payment", "diagnostics")


def topic(site: str, cabinet: str, kind: str) -> str:
    """The topic a cabinet publishes a message of ``kind`` on."""
    return PATTERN.format(site=site, cabinet=cabinet, kind=kind)

"""Mi-Jack MQTT topics: ``mijack/{tenant}/{device}/{kind}``, as ``[route] topics`` in the pack.

The pack matches the device level with ``+`` and never forwards it: crash data must not be
linkable to a device or user.
"""

from __future__ import annotations

from typing import Final

PATTERN: Final = "mijack/{tenant}/{device}/{kind}"
SUBSCRIBE: Final = "mijack/+/+/+"
KINDS: Final = ("usage", "auth", "crash", "error")


def topic(tenant: str, device: str, kind: str) -> str:
    """The topic the app on ``device`` of enterprise ``tenant`` publishes a ``kind`` event on."""
    return PATTERN.format(tenant=tenant, device=device, kind=kind)

"""Smartjac MQTT topics: ``smartjac/{installation}/{kind}``, as ``[route] topics`` in the pack."""

from __future__ import annotations

from typing import Final

PATTERN: Final = "smartjac/{installation}/{kind}"
SUBSCRIBE: Final = "smartjac/+/+"
KINDS: Final = ("session", "usage", "order", "support")


def topic(installation: str, kind: str) -> str:
    """The topic an installation of Smartjac software publishes a ``kind`` record on."""
    return PATTERN.format(installation=installation, kind=kind)

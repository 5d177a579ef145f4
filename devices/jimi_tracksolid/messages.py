"""Tracksolid message types; the gateway owns the record (``gateway/ingest/tracksolid.py``)."""

from gateway.ingest.tracksolid import (
    BY_KIND,
    KINDS,
    Alarm,
    Heartbeat,
    Location,
    Login,
    Media,
    Message,
    decode,
    encode,
)

__all__ = ["BY_KIND", "KINDS", "Alarm", "Heartbeat", "Location", "Login", "Media", "Message", "decode", "encode"]

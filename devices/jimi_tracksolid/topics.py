"""Tracksolid MQTT topics: ``tracksolid/{imei}/{kind}``, as ``[route] topics`` in the pack."""

from gateway.ingest.tracksolid import KINDS, PATTERN, SUBSCRIBE, topic

__all__ = ["KINDS", "PATTERN", "SUBSCRIBE", "topic"]

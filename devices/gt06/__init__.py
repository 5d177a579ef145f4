"""Simulated GT06 (Concox / Jimi IoT) trackers: frame builders and a TCP simulator.

The protocol itself (framing, CRC, decoding, replies) is the gateway's: ``gateway.ingest.gt06``.
"""

from devices.gt06.frames import build_alarm, build_frame, build_heartbeat, build_location, build_login

__all__ = ["build_alarm", "build_frame", "build_heartbeat", "build_location", "build_login"]

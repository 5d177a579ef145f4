"""GT06 (Concox / Jimi IoT) GPS tracker support."""

from devices.gt06.codec import (
    Frame,
    FrameError,
    Framer,
    ack_for,
    build_alarm,
    build_frame,
    build_heartbeat,
    build_location,
    build_login,
    crc_itu,
    decode_frame,
    decode_hex_command,
    frame_to_json,
)

__all__ = [
    "Frame",
    "FrameError",
    "Framer",
    "ack_for",
    "build_alarm",
    "build_frame",
    "build_heartbeat",
    "build_location",
    "build_login",
    "crc_itu",
    "decode_frame",
    "decode_hex_command",
    "frame_to_json",
]

"""``gateway decode gt06 HEX...``: what the listener would make of captured bytes, as JSON lines."""

from __future__ import annotations

import json
from typing import TextIO

import msgspec

from gateway.ingest.gt06.codec import Frame, FrameError, Framer, ack_for, decode_frame, timezone_minutes

__all__ = ["decode_hex_command", "frame_to_json"]


_JSON_KEYS = (
    "type", "protocol", "serial", "imei", "timezone", "time", "latitude", "longitude", "altitude", "speed_kmh",
    "course", "valid", "satellites", "mcc", "mnc", "lac", "cell_id", "cells", "wifi_aps", "acc", "charging",
    "voltage_level", "gsm_signal", "battery_v", "battery_level", "power_v", "door", "network", "iccid", "imsi",
    "alarm", "mileage",
)  # fmt: skip


def frame_to_json(frame: Frame, raw: bytes | None = None) -> dict[str, object]:
    """The keys ``gateway decode gt06`` prints (absent fields omitted) plus the reply as hex."""
    out: dict[str, object] = {}
    for key in _JSON_KEYS:
        value = getattr(frame, key)
        if value is not None:
            out[key] = msgspec.to_builtins(value)
    ack = ack_for(frame, raw)
    out["ack"] = ack.hex().upper() if ack else None
    return out


class _Session:
    """Frames of one hex argument: a login's time zone applies to the times after it."""

    def __init__(self) -> None:
        self.utc_offset = 0

    def describe(self, item: bytes | FrameError) -> dict[str, object]:
        if isinstance(item, FrameError):
            return {"error": item.reason}
        try:
            frame = decode_frame(item, utc_offset=self.utc_offset)
        except FrameError as exc:
            return {"error": exc.reason}
        if frame.type == "login":
            self.utc_offset = timezone_minutes(frame.timezone)
        return frame_to_json(frame, item)


def _decode_argument(argument: str) -> list[dict[str, object]]:
    try:
        data = bytes.fromhex("".join(argument.split()))
    except ValueError:
        data = b""
    if not data:
        return [{"error": "bad_hex"}]
    framer = Framer()
    session = _Session()
    results = [session.describe(item) for item in framer.feed(data)]
    if framer.bytes_buffered:  # a frame cut short by the end of the argument
        results.append({"error": "bad_length"})
    return results


def decode_hex_command(hex_frames: list[str], out: TextIO) -> int:
    """Print one JSON object per frame (or error) found in each hex argument; 1 if any failed."""
    failed = False
    for argument in hex_frames:
        for result in _decode_argument(argument):
            failed = failed or "error" in result
            out.write(json.dumps(result) + "\n")
    return 1 if failed else 0

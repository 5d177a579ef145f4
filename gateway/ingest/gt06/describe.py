"""``gateway decode gt06 HEX...``: what the listener would make of captured bytes, as JSON lines."""

from __future__ import annotations

import json
from typing import TextIO

from gateway.ingest.gt06.codec import Frame, FrameError, Framer, ack_for, decode_frame

__all__ = ["decode_hex_command", "frame_to_json"]


_JSON_KEYS = (
    "type", "protocol", "serial", "imei", "time", "latitude", "longitude", "speed_kmh",
    "course", "valid", "satellites", "mcc", "mnc", "lac", "cell_id", "alarm",
)  # fmt: skip


def frame_to_json(frame: Frame) -> dict[str, object]:
    """The keys ``gateway decode gt06`` prints (absent fields omitted) plus the reply as hex."""
    out: dict[str, object] = {}
    for key in _JSON_KEYS:
        value = getattr(frame, key)
        if value is not None:
            out[key] = value
    ack = ack_for(frame)
    out["ack"] = ack.hex().upper() if ack else None
    return out


def _describe(item: bytes | FrameError) -> dict[str, object]:
    if isinstance(item, FrameError):
        return {"error": item.reason}
    try:
        return frame_to_json(decode_frame(item))
    except FrameError as exc:
        return {"error": exc.reason}


def _decode_argument(argument: str) -> list[dict[str, object]]:
    try:
        data = bytes.fromhex("".join(argument.split()))
    except ValueError:
        data = b""
    if not data:
        return [{"error": "bad_hex"}]
    framer = Framer()
    results = [_describe(item) for item in framer.feed(data)]
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

"""``gateway decode jt808 HEX...``: what the listener would make of captured bytes, as JSON lines.

One object per message, or per position for a batch (0x0704): ``msg_id`` (integer),
``terminal`` (digits), ``serial``, and for positions ``time`` (UTC), ``latitude``, ``longitude``
(6 decimals, south and west negative), ``speed_kmh``, ``course``, ``altitude``, ``valid``,
``satellites`` (where sent), ``alarm`` (the flag bits as an integer) and ``alarms`` (their names),
with ``cells``, ``wifi`` and the other additional items where sent. A frame that is not valid
prints ``{"error": reason}`` and the command exits 1.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

import msgspec

from gateway.ingest.jt808.codec import FrameError, Framer, Message, decode

__all__ = ["decode_hex_command", "describe"]


def describe(message: Message) -> list[dict[str, Any]]:
    head = message.header
    base: dict[str, Any] = {"msg_id": head.msg_id, "terminal": head.terminal, "serial": head.serial}
    if head.version is not None:
        base["version"] = head.version
    if head.packets:
        return [{**base, "packets": head.packets, "index": head.index}]
    if message.auth_code is not None:
        base["auth_code"] = message.auth_code
    if not message.positions:
        return [base]
    out = []
    for p in message.positions:
        fields = {k: v for k, v in msgspec.to_builtins(p).items() if v not in (None, [])}
        fields["alarm"] = fields.pop("alarm_flags")
        fields.setdefault("alarms", [])
        out.append({**base, **fields})
    return out


def decode_hex_command(arguments: list[str], out: TextIO) -> int:
    """Print each message found in the hex arguments; 1 if any frame was invalid."""
    status = 0
    for argument in arguments:
        try:
            data = bytes.fromhex("".join(argument.split()))
        except ValueError:
            data = b""
        items: list[Any] = list(Framer().feed(data)) if data else [FrameError("bad_hex")]
        if data and not items:
            items = [FrameError("incomplete")]
        for item in items:
            lines: list[dict[str, Any]]
            if isinstance(item, FrameError):
                lines = [{"error": item.reason}]
            else:
                try:
                    lines = describe(decode(item))
                except FrameError as exc:
                    lines = [{"error": exc.reason}]
            for line in lines:
                status = status or int("error" in line)
                out.write(json.dumps(line) + "\n")
    return status

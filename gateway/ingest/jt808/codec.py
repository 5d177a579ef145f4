"""JT/T 808 framing, decoding and platform answers (2011, 2013 and 2019 headers).

A frame on the wire is ``7E <escaped: header body checksum> 7E``; inside it ``7D 02`` stands
for ``7E`` and ``7D 01`` for ``7D``. The checksum is the XOR of every header and body byte.
The header is ``msg_id:u16 attrs:u16 [version:u8] terminal:BCD[6|10] serial:u16
[packets:u16 index:u16]``: bits 0-9 of ``attrs`` are the body length, bits 10-12 encryption
(only plain bodies are decoded), bit 13 a sub-package, bit 14 the 2019 header (a version
byte and a 10-byte terminal number). Words are big-endian; times are BCD ``YYMMDDhhmmss``
in GMT+8, converted to UTC here.

``Framer`` splits a byte stream into frames (a bounded buffer, resynchronising at the next
``7E`` after garbage), ``decode`` turns one frame into a ``Message``, and ``general_response``
/ ``registration_response`` build the platform's answers (0x8001 and 0x8100).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

__all__ = [
    "AUTHENTICATION",
    "BATCH_LOCATION",
    "HEARTBEAT",
    "LOCATION",
    "LOGOUT",
    "REGISTRATION",
    "Cell",
    "FrameError",
    "Framer",
    "Header",
    "Message",
    "Position",
    "decode",
    "escape",
    "frame",
    "general_response",
    "registration_response",
    "unescape",
]

FLAG, ESC = 0x7E, 0x7D
HEARTBEAT, LOGOUT, REGISTRATION, AUTHENTICATION = 0x0002, 0x0003, 0x0100, 0x0102
LOCATION, BATCH_LOCATION = 0x0200, 0x0704
GENERAL_RESPONSE, REGISTRATION_RESPONSE = 0x8001, 0x8100
RESULT_OK, RESULT_FAILURE, RESULT_BAD_MESSAGE, RESULT_UNSUPPORTED = 0, 1, 2, 3
REGISTER_OK, REGISTER_UNKNOWN_TERMINAL = 0, 4
_GMT8 = timedelta(hours=8)

# Alarm flag bits (JT/T 808-2013 table 24 / 2019 table 25) as the alarm kinds the packs know.
ALARM_BITS: dict[int, str] = {
    0: "sos",
    1: "overspeed",
    2: "fatigue",
    7: "low_power",  # main power under-voltage
    8: "power_cut",
    15: "low_battery",  # wireless devices (vendor extension widely used by Jimi IoT)
    16: "vibration",
    17: "tamper",  # removal / light sensor
    19: "parking",  # overtime parking
    28: "displacement",  # illegal vehicle movement
    29: "collision",
    30: "rollover",
}


class FrameError(Exception):
    """A malformed frame; ``reason`` is a counter name (never payload data)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Header(msgspec.Struct, frozen=True, gc=False):
    msg_id: int
    terminal: str  # BCD digits as sent (leading zeros kept)
    serial: int
    version: int | None = None  # 2019 headers only
    packets: int = 0  # sub-packages: total (0 = not split)
    index: int = 0  # this part, from 1


class Cell(msgspec.Struct, frozen=True, gc=False):
    mcc: int
    mnc: int
    lac: int
    cell_id: int
    signal: int | None = None


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """One 0x0200 body (also each item of 0x0704)."""

    time: str  # ISO 8601 UTC
    latitude: float
    longitude: float
    altitude: int
    speed_kmh: float
    course: int
    valid: bool
    acc: bool
    alarm_flags: int
    alarms: list[str]
    satellites: int | None = None
    mileage_km: float | None = None
    signal: int | None = None
    battery_percent: int | None = None
    voltage: float | None = None
    iccid: str | None = None
    cells: list[Cell] = []
    wifi: list[str] = []  # BSSIDs, aa:bb:cc:dd:ee:ff


class Message(msgspec.Struct, frozen=True, kw_only=True):
    header: Header
    positions: list[Position] = []  # 0x0200 one, 0x0704 one per item
    auth_code: str | None = None  # 0x0102


# -- framing ------------------------------------------------------------------------------------


def unescape(data: bytes) -> bytes:
    """``7D 02`` -> ``7E``, ``7D 01`` -> ``7D``; any other byte after ``7D`` is an error."""
    if ESC not in data:
        return data
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        j = data.find(ESC, i)
        if j < 0:
            out += data[i:]
            break
        out += data[i:j]
        if j + 1 >= n or data[j + 1] not in (1, 2):
            raise FrameError("bad_escape")
        out.append(FLAG if data[j + 1] == 2 else ESC)
        i = j + 2
    return bytes(out)


def escape(data: bytes) -> bytes:
    return data.replace(b"\x7d", b"\x7d\x01").replace(b"\x7e", b"\x7d\x02")


def checksum(data: bytes) -> int:
    value = 0
    for b in data:
        value ^= b
    return value


def frame(msg_id: int, terminal: str, serial: int, body: bytes = b"", version: int | None = None) -> bytes:
    """A complete escaped frame (what a terminal or the platform sends)."""
    if len(body) > 0x3FF:
        raise ValueError("body longer than 1023 bytes needs sub-packages")
    attrs = len(body) | (0x4000 if version is not None else 0)
    digits = 20 if version is not None else 12
    if len(terminal) > digits or not terminal.isdigit():
        raise ValueError(f"terminal must be at most {digits} digits")
    head = struct.pack(">HH", msg_id, attrs)
    if version is not None:
        head += bytes([version])
    head += bytes.fromhex(terminal.rjust(digits, "0")) + struct.pack(">H", serial)
    inner = head + body
    return bytes([FLAG]) + escape(inner + bytes([checksum(inner)])) + bytes([FLAG])


class Framer:
    """Splits a stream into frames' unescaped contents (``bytes``) or ``FrameError``s.

    The buffer is bounded by ``max_frame`` (escaped bytes between two flags): a longer run is
    discarded as ``oversize``. Bytes before a start flag are ``garbage`` (one error per run).
    Adjacent frames often share no flag (``7E..7E7E..7E``) or one (``7E..7E..7E``): both work.
    """

    def __init__(self, max_frame: int = 4096) -> None:
        self.max_frame = max_frame
        self.buffer = bytearray()
        self.skipping = False  # inside a run of garbage (which may span reads): counted once

    def feed(self, data: bytes) -> Iterator[bytes | FrameError]:
        buf = self.buffer
        buf += data
        while buf:
            if buf[0] != FLAG:
                start = buf.find(FLAG)
                del buf[: start if start >= 0 else len(buf)]
                if not self.skipping:
                    self.skipping = True
                    yield FrameError("garbage")
                continue
            self.skipping = False
            end = buf.find(FLAG, 1)
            if end < 0:
                if len(buf) > self.max_frame:
                    buf.clear()
                    yield FrameError("oversize")
                return
            if end == 1:  # two flags in a row: the second starts the next frame
                del buf[0]
                continue
            if end - 1 > self.max_frame:
                del buf[:end]
                yield FrameError("oversize")
                continue
            raw = bytes(buf[1:end])
            del buf[: end + 1]
            try:
                inner = unescape(raw)
            except FrameError as exc:
                yield exc
                continue
            if len(inner) < 13:
                yield FrameError("bad_length")
                continue
            if checksum(inner[:-1]) != inner[-1]:
                yield FrameError("bad_checksum")
                continue
            yield inner[:-1]


# -- decoding -----------------------------------------------------------------------------------


def _bcd(data: bytes) -> str:
    text = data.hex()
    if not text.isdigit():
        raise FrameError("bad_content", "BCD")
    return text


def _time(data: bytes) -> str:
    digits = _bcd(data)
    try:
        local = datetime(2000 + int(digits[0:2]), int(digits[2:4]), int(digits[4:6]),
                         int(digits[6:8]), int(digits[8:10]), int(digits[10:12]))
    except ValueError:
        raise FrameError("bad_content", "time") from None
    return (local - _GMT8).replace(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def header(inner: bytes) -> tuple[Header, bytes]:
    """The header and the body of an unescaped frame without its checksum."""
    msg_id, attrs = struct.unpack_from(">HH", inner)
    length = attrs & 0x3FF
    split, v2019, encrypted = bool(attrs & 0x2000), bool(attrs & 0x4000), (attrs >> 10) & 0x7
    at = 4
    version = None
    if v2019:
        version, at = inner[4], 5
        terminal = _bcd(inner[at : at + 10])
        if not terminal[:8].strip("0"):  # zero padding: the same number as in a 2011/2013 header
            terminal = terminal[8:]
        at += 10
    else:
        terminal = _bcd(inner[at : at + 6])
        at += 6
    if len(inner) < at + 2:
        raise FrameError("bad_length")
    (serial,) = struct.unpack_from(">H", inner, at)
    at += 2
    packets = index = 0
    if split:
        if len(inner) < at + 4:
            raise FrameError("bad_length")
        packets, index = struct.unpack_from(">HH", inner, at)
        at += 4
        if not 1 <= index <= packets:
            raise FrameError("bad_content", "sub-package index")
    body = inner[at:]
    if len(body) != length:
        raise FrameError("bad_length")
    if encrypted:
        raise FrameError("encrypted")
    return Header(msg_id, terminal, serial, version, packets, index), body


def position(body: bytes) -> Position:
    """A 0x0200 body: 28 bytes of basic information, then ``id:u8 len:u8 value`` items."""
    if len(body) < 28:
        raise FrameError("bad_length", "position")
    alarm, status, lat, lon, altitude, speed, course = struct.unpack_from(">IIIIHHH", body)
    fields: dict[str, Any] = {}
    cells: list[Cell] = []
    wifi: list[str] = []
    at = 28
    while at + 2 <= len(body):
        item, size = body[at], body[at + 1]
        value = body[at + 2 : at + 2 + size]
        at += 2 + size
        if len(value) != size:
            raise FrameError("bad_length", "additional item")
        _additional(item, value, fields, cells, wifi)
    latitude, longitude = lat / 1e6, lon / 1e6
    if latitude > 90 or longitude > 180:
        raise FrameError("bad_content", "coordinates")
    return Position(
        time=_time(body[22:28]),
        latitude=round(-latitude if status & 0x4 else latitude, 6),
        longitude=round(-longitude if status & 0x8 else longitude, 6),
        altitude=altitude - 0x10000 if altitude & 0x8000 else altitude,
        speed_kmh=speed / 10,
        course=course,
        valid=bool(status & 0x2),
        acc=bool(status & 0x1),
        alarm_flags=alarm,
        alarms=[name for bit, name in ALARM_BITS.items() if alarm >> bit & 1],
        cells=cells,
        wifi=wifi,
        **fields,
    )


def _additional(item: int, value: bytes, fields: dict[str, Any], cells: list[Cell], wifi: list[str]) -> None:
    size = len(value)
    if item == 0x01 and size == 4:
        fields["mileage_km"] = int.from_bytes(value, "big") / 10
    elif item == 0x30 and size == 1:
        fields["signal"] = value[0]
    elif item == 0x31 and size == 1:
        fields["satellites"] = value[0]
    elif item == 0x56 and size >= 1:
        fields["battery_percent"] = value[1] if size >= 2 else min(value[0] * 10, 100)
    elif item == 0x61 and size == 2:
        fields["voltage"] = int.from_bytes(value, "big") / 100
    elif item == 0xF1 and size:
        text = value.rstrip(b"\x00").decode("ascii", "replace")
        fields["iccid"] = text
    elif item in (0x53, 0x5D) and size >= 1:  # 2G (8-byte) or 4G (10-byte) cells
        width = 8 if item == 0x53 else 10
        for k in range(min(value[0], (size - 1) // width)):
            c = value[1 + k * width : 1 + (k + 1) * width]
            cid = int.from_bytes(c[5:7] if width == 8 else c[5:9], "big")
            cells.append(Cell(int.from_bytes(c[0:2], "big"), c[2], int.from_bytes(c[3:5], "big"), cid, c[-1]))
    elif item == 0x54 and size >= 1:  # Wi-Fi: MAC (6) + signal (1)
        for k in range(min(value[0], (size - 1) // 7)):
            mac = value[1 + k * 7 : 7 + k * 7]
            wifi.append(":".join(f"{b:02x}" for b in mac))


def decode(inner: bytes) -> Message:
    """One unescaped frame (checksum removed) into a ``Message``; ``FrameError`` if malformed."""
    try:
        head, body = header(inner)
        if head.packets:
            return Message(header=head)  # a part: reassembled by the listener
        return decode_body(head, body)
    except (struct.error, IndexError):
        raise FrameError("bad_length") from None


def decode_body(head: Header, body: bytes) -> Message:
    """The body of a complete message (reassembled if it was split)."""
    try:
        msg_id = head.msg_id
        if msg_id == LOCATION:
            return Message(header=head, positions=[position(body)])
        if msg_id == BATCH_LOCATION:
            (count,) = struct.unpack_from(">H", body)
            at, positions = 3, []
            for _ in range(count):
                (size,) = struct.unpack_from(">H", body, at)
                item = body[at + 2 : at + 2 + size]
                if len(item) != size:
                    raise FrameError("bad_length", "batch item")
                positions.append(position(item))
                at += 2 + size
            return Message(header=head, positions=positions)
        if msg_id == AUTHENTICATION:
            code = body.split(b"\x00", 1)[0] if head.version is None else body[1 : 1 + body[0]] if body else b""
            return Message(header=head, auth_code=code.decode("ascii", "replace"))
        return Message(header=head)
    except (struct.error, IndexError):
        raise FrameError("bad_length") from None


# -- platform answers ---------------------------------------------------------------------------


def general_response(head: Header, serial: int, result: int = RESULT_OK) -> bytes:
    """0x8001 to ``head``'s message: its serial, its id and a result."""
    body = struct.pack(">HHB", head.serial, head.msg_id, result)
    return frame(GENERAL_RESPONSE, head.terminal, serial, body, head.version)


def registration_response(head: Header, serial: int, result: int, auth_code: str = "") -> bytes:
    """0x8100 to a registration: its serial, a result and (on success) the authentication code."""
    body = struct.pack(">HB", head.serial, result) + (auth_code.encode("ascii") if result == REGISTER_OK else b"")
    return frame(REGISTRATION_RESPONSE, head.terminal, serial, body, head.version)

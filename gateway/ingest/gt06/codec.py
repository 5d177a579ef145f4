"""GT06 (Concox / Jimi IoT) tracker protocol: stream framing, CRC, frame decoding and replies.

Pure bytes-in / values-out code, so the TCP listener and ``gateway decode gt06`` share one
implementation that is testable without sockets. The frame builders a simulated tracker needs
live in ``devices/gt06/frames.py``; this module only builds the server's replies.

Wire format: ``78 78 LEN(1) PROTO CONTENT SERIAL(2) CRC(2) 0D 0A``, or ``79 79 LEN(2) ...`` for
long frames. LEN counts PROTO through CRC; the CRC-ITU covers LEN through SERIAL.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec

__all__ = [
    "Frame",
    "FrameError",
    "Framer",
    "UncheckedFrame",
    "ack_for",
    "build_frame",
    "crc_itu",
    "decode_frame",
    "time_reply",
]

SHORT_START = b"\x78\x78"
LONG_START = b"\x79\x79"
STOP = b"\r\n"
_MIN_LENGTH = 5  # PROTO + SERIAL + CRC: the LEN of a frame without content
_MIN_FRAME = 10  # 78 78 05 PROTO SERIAL CRC 0D 0A

PROTO_LOGIN = 0x01
PROTO_LOCATION = 0x12
PROTO_HEARTBEAT = 0x13
PROTO_ALARM = 0x16
PROTO_LOCATION_UTC = 0x22
PROTO_ALARM_UTC = 0x26
PROTO_TIME_REQUEST = 0x8A
_ACKED = frozenset({PROTO_LOGIN, PROTO_HEARTBEAT, PROTO_ALARM, PROTO_ALARM_UTC})

UNITS_PER_DEGREE = 1_800_000  # coordinates travel as minutes * 30000
COURSE_MASK = 0x03FF
NORTH = 1 << 10
WEST = 1 << 11
FIX = 1 << 12
MNC_2_BYTES = 0x8000  # flag in the MCC word
ACC_ON = 0x02  # terminal-info bits
CHARGING = 0x04

ALARMS = {
    0x00: "normal",
    0x01: "sos",
    0x02: "power_cut",
    0x03: "vibration",
    0x04: "enter_fence",
    0x05: "exit_fence",
    0x06: "overspeed",
    0x09: "moving",
    0x0E: "low_battery",
    0x11: "power_off",
    0x13: "tamper",
    0x14: "door",
}


# CRC-16/X-25 is the reflected form of the CRC-CCITT that ``binascii.crc_hqx`` computes in C:
# reversing the bits of every input byte and of the result turns one into the other (the init
# and xorout values 0xFFFF are their own reflection). A pure-Python loop would cost the listener
# about 5 us per short frame and make every junk start marker an expensive CRC.
_REVERSED = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))


def crc_itu(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X-25, the "CRC-ITU" of the GT06 documents: reflected 0x1021, init/xorout 0xFFFF."""
    crc = binascii.crc_hqx(bytes(data).translate(_REVERSED), 0xFFFF)
    return ((_REVERSED[crc & 0xFF] << 8) | _REVERSED[crc >> 8]) ^ 0xFFFF


class FrameError(Exception):
    """Bytes that cannot be used as a frame.

    ``reason`` is a fixed token for metrics: garbage, bad_length, bad_stop, bad_crc, bad_content or
    oversize. Messages carry at most protocol and length numbers, never payload bytes, because
    they end up in logs and the payload holds IMEIs and positions.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Frame(msgspec.Struct, omit_defaults=True, frozen=True, kw_only=True):
    """One decoded device frame; fields a protocol does not carry stay None."""

    type: str  # login | location | heartbeat | alarm | unknown
    protocol: int
    serial: int
    imei: str | None = None
    type_id: int | None = None
    time: str | None = None  # ISO 8601 UTC
    latitude: float | None = None
    longitude: float | None = None
    speed_kmh: int | None = None
    course: int | None = None
    valid: bool | None = None
    satellites: int | None = None
    mcc: int | None = None
    mnc: int | None = None
    lac: int | None = None
    cell_id: int | None = None
    acc: bool | None = None
    voltage_level: int | None = None
    gsm_signal: int | None = None
    charging: bool | None = None
    alarm: str | None = None
    mileage: int | None = None
    upload_mode: int | None = None
    reupload: bool | None = None


# --- framing ---------------------------------------------------------------------------------


def _frame_size(head: bytes | bytearray) -> int | None:
    """Total size announced by the header at the start of ``head``; None until the header is in."""
    if len(head) < 2:
        return None
    if head[:2] == SHORT_START:
        width = 1
    elif head[:2] == LONG_START:
        width = 2
    else:
        raise FrameError("garbage", "no start marker")
    if len(head) < 2 + width:
        return None
    declared = int.from_bytes(head[2 : 2 + width], "big")
    if declared < _MIN_LENGTH:
        raise FrameError("bad_length", f"length field {declared} below {_MIN_LENGTH}")
    return 2 + width + declared + 2


def _check_integrity(frame: bytes) -> None:
    if frame[-2:] != STOP:
        raise FrameError("bad_stop", f"frame of {len(frame)} bytes")
    if crc_itu(frame[2:-4]) != int.from_bytes(frame[-4:-2], "big"):
        raise FrameError("bad_crc", f"frame of {len(frame)} bytes")


def _find_start(buf: bytearray, begin: int = 0) -> int:
    """Index of the first start marker from ``begin`` (C-speed ``find``); a trailing lone 78/79 is
    kept as a possible marker half, anything else before the marker is garbage."""
    short = buf.find(SHORT_START, begin)
    long = buf.find(LONG_START, begin, short + 1 if short >= 0 else len(buf))
    if long >= 0:
        return long
    if short >= 0:
        return short
    return len(buf) - 1 if len(buf) > begin and buf[-1] in (0x78, 0x79) else len(buf)


class UncheckedFrame(bytes):
    """A frame whose CRC did not match, passed on because the framer was told to accept those."""


class Framer:
    """Splits a TCP byte stream into raw frames, whatever the read boundaries.

    Frames are checked for length, stop bytes and CRC here: a start marker inside garbage then
    cannot swallow the real frames after it, because after a rejected candidate scanning resumes
    at the next start marker past its first byte (found with ``bytes.find``, in C). Every rejected
    candidate is reported, each run of other garbage once; memory stays bounded by
    ``max_buffer`` however large a single read is. ``items`` yields as it goes, so a consumer
    that stops (a connection over its bad-frame budget) does no more work on the rest.

    ``strict_crc=False`` passes frames with the right length and stop bytes but a wrong CRC as
    ``UncheckedFrame``, for tracker models that miscompute it.
    """

    def __init__(self, max_frame: int = 1024, max_buffer: int = 4096, strict_crc: bool = True) -> None:
        if not _MIN_FRAME <= max_frame <= max_buffer:
            raise ValueError(f"need {_MIN_FRAME} <= max_frame <= max_buffer")
        self._max_frame = max_frame
        self._max_buffer = max_buffer
        self._strict_crc = strict_crc
        self._buf = bytearray()
        self._bad_run_reported = False

    @property
    def bytes_buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        """Add received bytes; return the frames and errors they completed, in stream order."""
        return list(self.items(data))

    def items(self, data: bytes) -> Iterator[bytes | FrameError]:
        """Add received bytes; yield the frames and errors they complete, in stream order."""
        rest = memoryview(data)
        while True:
            room = self._max_buffer - len(self._buf)
            self._buf += rest[:room]
            rest = rest[room:]
            yield from self._drain()
            if not rest:
                return

    def _drain(self) -> Iterator[bytes | FrameError]:
        buf = self._buf
        while True:
            start = _find_start(buf)
            if start:
                del buf[:start]
                if not self._bad_run_reported:
                    self._bad_run_reported = True
                    yield FrameError("garbage", f"{start} bytes without a start marker")
            try:
                frame = self._take_frame()
            except FrameError as exc:
                self._bad_run_reported = True  # the bytes up to the next marker are the same fault
                del buf[: _find_start(buf, 1)]  # the next real marker may lie inside the rejected bytes
                yield exc
                continue
            if frame is None:
                return
            self._bad_run_reported = False
            yield frame

    def _take_frame(self) -> bytes | None:
        """Cut the frame at the head of the buffer; None while it is incomplete."""
        size = _frame_size(self._buf)
        if size is None:
            return None
        if size > self._max_frame:
            raise FrameError("oversize", f"frame of {size} bytes exceeds {self._max_frame}")
        if len(self._buf) < size:
            return None
        frame = bytes(self._buf[:size])
        try:
            _check_integrity(frame)
        except FrameError as exc:
            if self._strict_crc or exc.reason != "bad_crc":
                raise
            del self._buf[:size]
            return UncheckedFrame(frame)
        del self._buf[:size]
        return frame


# --- decoding --------------------------------------------------------------------------------


class _Reader:
    """Walks a frame's content; running out means the content is too short for its protocol."""

    def __init__(self, content: bytes, protocol: int) -> None:
        self._content = content
        self._pos = 0
        self.protocol = protocol

    @property
    def remaining(self) -> int:
        return len(self._content) - self._pos

    @property
    def position(self) -> int:
        return self._pos

    def take(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._content):
            raise self.error("content too short")
        chunk = self._content[self._pos : end]
        self._pos = end
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def error(self, what: str) -> FrameError:
        return FrameError("bad_content", f"protocol 0x{self.protocol:02X}: {what}")


Fields = dict[str, Any]  # keyword arguments for Frame


def _signed(degrees: float, negative: bool) -> float:
    return round(-degrees if negative and degrees else degrees, 6)


def _read_position(r: _Reader) -> Fields:
    year, month, day, hour, minute, second = r.take(6)
    try:
        when = datetime(2000 + year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise r.error("impossible date-time") from None
    gps_info = r.uint(1)
    latitude = r.uint(4) / UNITS_PER_DEGREE
    longitude = r.uint(4) / UNITS_PER_DEGREE
    speed = r.uint(1)
    flags = r.uint(2)
    if latitude > 90 or longitude > 180:
        raise r.error("coordinates out of range")
    if flags & COURSE_MASK > 360:
        raise r.error("course out of range")
    return {
        "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "latitude": _signed(latitude, negative=not flags & NORTH),
        "longitude": _signed(longitude, negative=bool(flags & WEST)),
        "speed_kmh": speed,
        "course": flags & COURSE_MASK,
        "valid": bool(flags & FIX),
        "satellites": gps_info & 0x0F,  # the high nibble is the GPS block length
    }


def _read_cell(r: _Reader) -> Fields:
    mcc = r.uint(2)
    mnc = r.uint(2 if mcc & MNC_2_BYTES else 1)
    return {"mcc": mcc & ~MNC_2_BYTES, "mnc": mnc, "lac": r.uint(2), "cell_id": r.uint(3)}


def _read_sized_cell(r: _Reader) -> Fields:
    """Cell block behind a length byte, as in alarm frames.

    The Concox document says the length counts itself (09) yet its own 0x26 example sends 08,
    and 0 means no cell; so the length only ever skips surplus bytes, never rewinds.
    """
    declared = r.uint(1)
    if not declared:
        return {}
    start = r.position
    cell = _read_cell(r)
    r.take(max(0, declared - 1 - (r.position - start)))
    return cell


def _read_status(r: _Reader) -> Fields:
    """Terminal info, voltage level and GSM level.

    The levels are not range-checked: device captures send values such as 0x55 and 0x1B where
    the document allows 0-6 and 0-4.
    """
    info = r.uint(1)
    return {
        "acc": bool(info & ACC_ON),
        "charging": bool(info & CHARGING),
        "voltage_level": r.uint(1),
        "gsm_signal": r.uint(1),
    }


def _alarm_name(code: int) -> str:
    return ALARMS.get(code, f"alarm_0x{code:02x}")


def _decode_login(r: _Reader) -> Fields:
    digits = r.take(8).hex()
    if not digits.isdigit() or digits[0] != "0":
        raise r.error("terminal id is not a 15-digit BCD IMEI")
    fields: Fields = {"imei": digits[1:]}
    if r.remaining >= 2:  # newer devices: type id, then a time-zone/language word we do not need
        fields["type_id"] = r.uint(2)
    return fields


def _decode_location(r: _Reader) -> Fields:
    fields = _read_position(r) | _read_cell(r)
    if r.protocol == PROTO_LOCATION_UTC:
        fields["acc"] = r.uint(1) != 0
        fields["upload_mode"] = r.uint(1)
        fields["reupload"] = r.uint(1) != 0
        if r.remaining >= 4:
            fields["mileage"] = r.uint(4)
    return fields


def _decode_heartbeat(r: _Reader) -> Fields:
    fields = _read_status(r)
    r.take(2)  # alarm/language: alarms are reported from alarm frames only
    return fields


def _decode_alarm(r: _Reader) -> Fields:
    fields = _read_position(r) | _read_sized_cell(r) | _read_status(r)
    fields["alarm"] = _alarm_name(r.uint(1))
    r.take(1)  # language
    if r.remaining >= 4:
        fields["mileage"] = r.uint(4)
    return fields


def _no_fields(r: _Reader) -> Fields:
    return {}


_DECODERS: dict[int, tuple[str, Callable[[_Reader], Fields]]] = {
    PROTO_LOGIN: ("login", _decode_login),
    PROTO_LOCATION: ("location", _decode_location),
    PROTO_LOCATION_UTC: ("location", _decode_location),
    PROTO_HEARTBEAT: ("heartbeat", _decode_heartbeat),
    PROTO_ALARM: ("alarm", _decode_alarm),
    PROTO_ALARM_UTC: ("alarm", _decode_alarm),
}


def decode_frame(raw: bytes, strict_crc: bool = True) -> Frame:
    """Decode exactly one raw frame (start marker through 0D 0A); ``strict_crc=False`` skips the CRC.

    Unknown protocol numbers give a frame of type "unknown" rather than an error: the caller
    counts and skips them without dropping the connection. Bytes after the fields a protocol
    defines are ignored, since device variants append their own.
    """
    size = _frame_size(raw)
    if size != len(raw):
        header = "incomplete" if size is None else f"announces {size}"
        raise FrameError("bad_length", f"{len(raw)} bytes, header {header}")
    if strict_crc:
        _check_integrity(raw)
    elif raw[-2:] != STOP:
        raise FrameError("bad_stop", f"frame of {len(raw)} bytes")
    width = 1 if raw[:2] == SHORT_START else 2
    protocol = raw[2 + width]
    kind, decode = _DECODERS.get(protocol, ("unknown", _no_fields))
    fields = decode(_Reader(raw[3 + width : -6], protocol))
    return Frame(type=kind, protocol=protocol, serial=int.from_bytes(raw[-6:-4], "big"), **fields)


def ack_for(frame: Frame) -> bytes | None:
    """The server reply the device waits for, or None for locations and unknown frames.

    Unanswered logins and heartbeats make a device reconnect or reboot; unanswered alarms are
    sent again.
    """
    if frame.protocol not in _ACKED:
        return None
    return build_frame(frame.protocol, b"", frame.serial)


# --- replies ---------------------------------------------------------------------------------


def build_frame(protocol: int, content: bytes, serial: int, extended: bool = False) -> bytes:
    """Wrap content in start marker, length, serial, CRC and stop bytes."""
    width = 2 if extended else 1
    declared = 1 + len(content) + 4
    if declared >= 1 << (8 * width):
        raise ValueError(f"content of {len(content)} bytes needs an extended frame")
    body = declared.to_bytes(width, "big") + bytes([protocol]) + content + serial.to_bytes(2, "big")
    start = LONG_START if extended else SHORT_START
    return start + body + crc_itu(body).to_bytes(2, "big") + STOP


def time_reply(serial: int, now: datetime | None = None) -> bytes:
    """Answer to a 0x8A time request: YY MM DD hh mm ss in UTC, as Traccar sends it.

    Trackers without a GPS fix ask for the time so their LBS reports carry a usable stamp.
    """
    t = (now or datetime.now(UTC)).astimezone(UTC)
    stamp = bytes([t.year - 2000, t.month, t.day, t.hour, t.minute, t.second])
    return build_frame(PROTO_TIME_REQUEST, stamp, serial)

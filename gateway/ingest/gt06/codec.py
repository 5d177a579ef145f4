"""GT06 (Concox / Jimi IoT) tracker protocol: stream framing, CRC, frame decoding and replies.

Pure bytes-in / values-out code, so the TCP listener and ``gateway decode gt06`` share one
implementation that is testable without sockets. The frame builders a simulated tracker needs
live in ``devices/gt06/frames.py``; this module only builds the server's replies.

Wire format: ``78 78 LEN(1) PROTO CONTENT SERIAL(2) CRC(2) 0D 0A``, or ``79 79 LEN(2) ...`` for
long frames. LEN counts PROTO through CRC; the CRC-ITU covers LEN through SERIAL.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator
from datetime import UTC, datetime

from gateway.ingest.gt06.decoders import NO_ACK, Content, decode_content
from gateway.ingest.gt06.frame import ALARM_KINDS, Cell, Frame, FrameError

__all__ = [
    "ALARM_KINDS",
    "Cell",
    "CountedFrame",
    "Frame",
    "FrameError",
    "Framer",
    "UncheckedFrame",
    "ack_for",
    "build_frame",
    "crc_itu",
    "decode_frame",
    "time_reply",
    "timezone_minutes",
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
PROTO_ADDRESS_REQUEST = 0x2A
PROTO_ADDRESS_REPLY = 0x97
WIFI_COUNTED = frozenset({0x17, 0x69})  # Wi-Fi reports whose LEN byte counts access points
_EXTENDED_REPLY = frozenset({0x32, 0x33})  # AZ735: answered in an extended frame

# CRC-16/X-25 is the reflected form of the CRC-CCITT that ``binascii.crc_hqx`` computes in C:
# reversing the bits of every input byte and of the result turns one into the other (the init
# and xorout values 0xFFFF are their own reflection). A pure-Python loop would cost the listener
# about 5 us per short frame and make every junk start marker an expensive CRC.
_REVERSED = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))


def crc_itu(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X-25, the "CRC-ITU" of the GT06 documents: reflected 0x1021, init/xorout 0xFFFF."""
    crc = binascii.crc_hqx(bytes(data).translate(_REVERSED), 0xFFFF)
    return ((_REVERSED[crc & 0xFF] << 8) | _REVERSED[crc >> 8]) ^ 0xFFFF


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


_MARKER = re.compile(rb"\x78\x78|\x79\x79")


def _find_start(buf: bytearray, begin: int = 0) -> int:
    """Index of the first start marker from ``begin`` (one C-speed search for either marker); a
    trailing lone 78/79 is kept as a possible marker half, anything else before it is garbage."""
    found = _MARKER.search(buf, begin)
    if found:
        return found.start()
    return len(buf) - 1 if len(buf) > begin and buf[-1] in (0x78, 0x79) else len(buf)


def _same_fate(buf: bytearray, max_frame: int) -> int:
    """How many candidates, from the rejected one at the head, fail exactly as it did.

    Inside a run of one marker byte (78 78 78 ... or 79 79 79 ...) every candidate announces
    the same size, so all whose header and stop bytes lie in the run are rejected for the same
    reason (stop bytes that are not 0D 0A, or oversize). Counting them as one rejection keeps a
    flood of 0x78 at a few C-speed steps per read instead of one Python step per byte.
    """
    byte = buf[0]
    width = 1 if byte == 0x78 else 2
    if len(buf) < 2 + width or buf[2] != byte or (width == 2 and buf[3] != byte):
        return 1
    run = len(buf) - len(buf.lstrip(bytes([byte])))
    size = 2 + width + int.from_bytes(bytes([byte]) * width, "big") + 2
    if size > max_frame:  # every candidate whose header is in the run is oversize
        return max(1, run - (2 + width) + 1)
    return max(1, run - size + 1)  # every candidate whose stop bytes are in the run


class UncheckedFrame(bytes):
    """A frame whose CRC did not match, passed on because the framer was told to accept those."""


class CountedFrame(bytes):
    """A 0x17/0x69 Wi-Fi report sized by its counts (LEN = access points), which has no CRC."""


def _counted_size(head: bytes | bytearray) -> int | None:
    """Size of a counted Wi-Fi report: 4 + time 6 + 7 per AP + cell count + MCC/MNC 3 + 5 per cell + 2."""
    at = 4 + 6 + 7 * head[2]
    if len(head) <= at:
        return None
    return at + 1 + 3 + 5 * head[at] + 2


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
                # the next real marker may lie inside the rejected bytes: resume just past the
                # candidates that must fail the same way
                del buf[: _find_start(buf, _same_fate(buf, self._max_frame))]
                yield exc
                continue
            if frame is None:
                return
            self._bad_run_reported = False
            yield frame

    def _take_frame(self) -> bytes | None:
        """Cut the frame at the head of the buffer; None while it is incomplete."""
        buf = self._buf
        if buf[:2] == SHORT_START:
            if len(buf) < 4:
                return None  # the protocol byte decides how LEN is read (a Wi-Fi count or a length)
            if buf[3] in WIFI_COUNTED:
                return self._take_wifi()
        size = _frame_size(buf)
        if size is None:
            return None
        if size > self._max_frame:
            raise FrameError("oversize", f"frame of {size} bytes exceeds {self._max_frame}")
        if len(buf) < size:
            return None
        frame = bytes(buf[:size])
        try:
            _check_integrity(frame)
        except FrameError as exc:
            if self._strict_crc or exc.reason != "bad_crc":
                raise
            del buf[:size]
            return UncheckedFrame(frame)
        del buf[:size]
        return frame

    def _take_wifi(self) -> bytes | None:
        """0x17 / 0x69: a standard frame if its length, stop bytes and CRC hold, else a counted one."""
        buf = self._buf
        standard = 5 + buf[2]
        if buf[2] >= _MIN_LENGTH and len(buf) >= standard and buf[standard - 2 : standard] == STOP:
            frame = bytes(buf[:standard])
            if crc_itu(frame[2:-4]) == int.from_bytes(frame[-4:-2], "big"):
                del buf[:standard]
                return frame
        counted = _counted_size(buf)
        if counted is None:
            if 4 + 6 + 7 * buf[2] + 1 > self._max_frame:
                raise FrameError("oversize", f"Wi-Fi report of {buf[2]} access points exceeds {self._max_frame}")
            return None
        if counted > self._max_frame:
            raise FrameError("oversize", f"frame of {counted} bytes exceeds {self._max_frame}")
        if len(buf) < counted:
            return None
        if buf[counted - 2 : counted] != STOP:
            raise FrameError("bad_stop", f"Wi-Fi report of {counted} bytes")
        frame = CountedFrame(buf[:counted])
        del buf[:counted]
        return frame


# --- decoding --------------------------------------------------------------------------------


def _is_counted(raw: bytes) -> bool:
    """A 0x17/0x69 Wi-Fi report whose LEN byte is its access-point count (no serial, no CRC)."""
    return raw[:2] == SHORT_START and len(raw) >= 4 and raw[3] in WIFI_COUNTED and 5 + raw[2] != len(raw)


def decode_frame(raw: bytes, strict_crc: bool = True, utc_offset: int = 0) -> Frame:
    """Decode exactly one raw frame (start marker through 0D 0A).

    ``strict_crc=False`` skips the CRC; ``utc_offset`` (minutes east, from the connection's login)
    converts the device's local times to UTC. Unknown protocol numbers give a frame of type
    "unknown" rather than an error: the caller counts and skips them without dropping the
    connection. Bytes after the fields a layout defines are ignored, since device variants
    append their own.
    """
    if _is_counted(raw):
        if _counted_size(raw) != len(raw) or raw[-2:] != STOP:
            raise FrameError("bad_length", f"{len(raw)} bytes, Wi-Fi report of another size")
        content = Content(raw[4:-2], raw[3], raw[2], extended=False, offset_min=utc_offset)
        kind, fields = decode_content(content)
        return Frame(type=kind, protocol=raw[3], serial=0, **fields)
    size = _frame_size(raw)
    if size != len(raw):
        header = "incomplete" if size is None else f"announces {size}"
        raise FrameError("bad_length", f"{len(raw)} bytes, header {header}")
    if strict_crc:
        _check_integrity(raw)
    elif raw[-2:] != STOP:
        raise FrameError("bad_stop", f"frame of {len(raw)} bytes")
    extended = raw[:2] == LONG_START
    width = 2 if extended else 1
    protocol = raw[2 + width]
    serial = int.from_bytes(raw[-6:-4], "big")
    length = int.from_bytes(raw[2 : 2 + width], "big")
    content = Content(raw[3 + width : -6], protocol, length, extended, utc_offset)
    kind, fields = decode_content(content)
    return Frame(type=kind, protocol=protocol, serial=serial, **fields)


def _reply(kind: str, protocol: int, serial: int, extended: bool) -> bytes | None:
    if kind == "unknown" or protocol == PROTO_TIME_REQUEST:  # the time reply is made when sent
        return None
    if protocol == PROTO_ADDRESS_REQUEST:  # no address lookup here: the documented "not available"
        text = b"NA&&NA&&0##"
        return build_frame(PROTO_ADDRESS_REPLY, bytes([len(text)]) + bytes(4) + text, serial, extended=True)
    if extended and protocol in _EXTENDED_REPLY:
        return build_frame(protocol, b"", serial, extended=True)
    if protocol in NO_ACK:
        return None
    return build_frame(protocol, b"", serial)


def timezone_minutes(timezone: str | None) -> int:
    """A login's "+05:30" as minutes east of UTC (330); None (no time zone sent) means UTC."""
    if not timezone:
        return 0
    hours, minutes = int(timezone[1:3]), int(timezone[4:6])
    return (hours * 60 + minutes) * (-1 if timezone[0] == "-" else 1)


def ack_for(frame: Frame, raw: bytes | None = None) -> bytes | None:
    """The server reply the device waits for, or None for positions, information and unknown frames.

    ``raw`` (the frame as received) matters for the layouts answered in kind: a counted Wi-Fi
    report is answered with its own time, an AZ735 extended frame with an extended reply.
    Unanswered logins and heartbeats make a device reconnect or reboot; unanswered alarms and
    LBS/Wi-Fi reports are sent again. A time request (0x8A) is answered with ``time_reply``.
    """
    if raw is not None and _is_counted(raw):
        return SHORT_START + bytes([0, raw[3]]) + raw[4:10] + STOP  # echoes the report's time, no CRC
    extended = raw is not None and raw[:2] == LONG_START
    return _reply(frame.type, frame.protocol, frame.serial, extended)


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

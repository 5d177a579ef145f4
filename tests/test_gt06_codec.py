"""GT06 codec: published vectors, hand-assembled frames, stream framing and the decode command.

Expected values come from the protocol layout, worked out by hand in the comments, or from the
examples printed in the Concox GT06 protocol document; frames are assembled here with an
independent bit-by-bit CRC rather than with the codec's builders.
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.gt06.frames import build_alarm, build_heartbeat, build_location, build_login
from gateway.ingest.gt06.codec import Frame, FrameError, Framer, ack_for, build_frame, crc_itu, decode_frame
from gateway.ingest.gt06.describe import decode_hex_command, frame_to_json


def ref_crc(data: bytes) -> int:
    """CRC-16/X-25 bit by bit, written independently of the codec's table."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


def wrap(protocol: int, content: bytes, serial: int, extended: bool = False) -> bytes:
    length = 1 + len(content) + 2 + 2
    body = length.to_bytes(2 if extended else 1, "big") + bytes([protocol]) + content
    body += serial.to_bytes(2, "big")
    start = b"\x79\x79" if extended else b"\x78\x78"
    return start + body + ref_crc(body).to_bytes(2, "big") + b"\r\n"


def h(text: str) -> bytes:
    return bytes.fromhex(text)


NORTH, WEST, FIX = 0x0400, 0x0800, 0x1000
STAMP = bytes([26, 11, 23, 10, 3, 44])  # 2026-11-23 10:03:44 UTC
WHEN = datetime(2026, 11, 23, 10, 3, 44, tzinfo=UTC)
CELL = h("01942D1005003039")  # MCC 404, MNC 45, LAC 4101, cell 12345
DEG_25, DEG_50 = 45_000_000, 90_000_000  # degrees * 1,800,000


def position(
    flags: int, lat_raw: int = DEG_25, lon_raw: int = DEG_50, gps: int = 0xC9, speed: int = 60
) -> bytes:
    return (
        STAMP
        + bytes([gps])
        + lat_raw.to_bytes(4, "big")
        + lon_raw.to_bytes(4, "big")
        + bytes([speed])
        + flags.to_bytes(2, "big")
    )


# Examples printed in the Concox GT06 protocol document.
DOC_LOGIN = h("78780D01012345678901234500018CDD0D0A")
DOC_LOGIN_NEW = h("78781101075253367890024270003201000512790D0A")
DOC_HEARTBEAT = h("78780A134004040001000FDCEE0D0A")
DOC_LOCATION_12 = h("78781F120B081D112E10CF027AC7EB0C46584900148F01CC00287D001FB8000380810D0A")
DOC_LOCATION_22 = h(
    "787822220F0C1D023305C9027AC8180C46586000140001CC00287D001F71000001000820860D0A"
)
DOC_ALARM_26 = h(
    "7878252612030C063816C3026C10540C38C9700144030901CC002866000EEE0C06040302000DA2DB0D0A"
)
DOC_ALARM_26_LBS8 = h(
    "78782526110C0D133736CB026C15A60C38CF0A0054B90801CC002866000EEED802040002001D76F90D0A"
)
DOC_TIME_REQUEST = h("7878058A000688290D0A")
DOC_INFO_94 = h(
    "7979003F940D110907080C03"
    + b"!AIOIL,02,025.900,025.400,519J,0200,027.140,0,00,9F".hex()
    + "83A70D120D0A"
)


# --- CRC and published vectors ---------------------------------------------------------------


def test_crc_check_value() -> None:
    assert crc_itu(b"123456789") == 0x906E
    assert crc_itu(b"") == 0x0000


@given(st.binary(max_size=300))
def test_crc_matches_bitwise_reference(data: bytes) -> None:
    assert crc_itu(data) == ref_crc(data)


def test_login_ack_vector() -> None:
    assert build_frame(0x01, b"", 1) == h("787805010001D9DC0D0A")
    assert ack_for(decode_frame(DOC_LOGIN)) == h("787805010001D9DC0D0A")


def test_published_replies() -> None:
    # Concox document: login reply for serial 5, heartbeat for 0x0100, alarm for 0x001C.
    assert ack_for(decode_frame(DOC_LOGIN_NEW)) == h("7878050100059FF80D0A")
    assert ack_for(Frame(type="heartbeat", protocol=0x13, serial=0x0100)) == h(
        "787805130100E1A00D0A"
    )
    assert ack_for(Frame(type="alarm", protocol=0x26, serial=0x001C)) == h("78780526001C9D860D0A")


def test_classic_login_example() -> None:
    assert ref_crc(DOC_LOGIN[2:-4]) == 0x8CDD  # the document's CRC, checked independently
    frame = decode_frame(DOC_LOGIN)
    assert frame == Frame(type="login", protocol=0x01, serial=1, imei="123456789012345")
    assert build_login("123456789012345", 1) == DOC_LOGIN


def test_login_with_type_id_and_timezone() -> None:
    frame = decode_frame(DOC_LOGIN_NEW)
    assert (frame.imei, frame.type_id, frame.serial) == ("752533678900242", 0x7000, 5)
    built = build_login("752533678900242", 5, type_id=0x7000)
    assert built == wrap(0x01, h("075253367890024270000000"), 5)


@pytest.mark.parametrize(
    "terminal_id",
    ["0123456789ABCDEF", "1123456789012345"],  # a non-decimal nibble; a 16th digit
)
def test_login_with_impossible_imei(terminal_id: str) -> None:
    with pytest.raises(FrameError) as caught:
        decode_frame(wrap(0x01, h(terminal_id), 1))
    assert caught.value.reason == "bad_content"
    assert "123456789" not in str(caught.value)


def test_build_login_rejects_bad_imei() -> None:
    for imei in ("12345", "12345678901234x", "1234567890123456"):
        with pytest.raises(ValueError):
            build_login(imei, 1)


def test_heartbeat_example() -> None:
    frame = decode_frame(DOC_HEARTBEAT)
    # terminal info 0x40: GPS tracking on, ACC low, not charging; voltage 4, GSM 4.
    assert frame == Frame(
        type="heartbeat",
        protocol=0x13,
        serial=15,
        acc=False,
        charging=False,
        voltage_level=4,
        gsm_signal=4,
    )
    assert ack_for(frame) == wrap(0x13, b"", 15)


def test_location_0x12_example() -> None:
    frame = decode_frame(DOC_LOCATION_12)
    assert frame == Frame(
        type="location",
        protocol=0x12,
        serial=3,
        time="2011-08-29T17:46:16Z",
        satellites=15,  # 0xCF
        latitude=23.111668,  # 0x027AC7EB = 41601003 / 1.8e6 = 23.1116683
        longitude=114.409285,  # 0x0C465849 = 205936713 / 1.8e6 = 114.4092850
        speed_kmh=0,
        course=143,  # 0x148F: fix, north, east, course 0x08F
        valid=True,
        mcc=460,
        mnc=0,
        lac=10365,
        cell_id=8120,
    )
    assert ack_for(frame) is None


def test_location_0x22_example() -> None:
    frame = decode_frame(DOC_LOCATION_22)
    assert frame == Frame(
        type="location",
        protocol=0x22,
        serial=8,
        time="2015-12-29T02:51:05Z",
        satellites=9,
        latitude=23.111693,  # 41601048 / 1.8e6 = 23.1116933
        longitude=114.409298,  # 205936736 / 1.8e6 = 114.4092978
        speed_kmh=0,
        course=0,
        valid=True,
        mcc=460,
        mnc=0,
        lac=10365,
        cell_id=8049,
        acc=False,
        upload_mode=0,
        reupload=True,
    )
    assert ack_for(frame) is None


def test_south_west_capture() -> None:
    # Device capture from Traccar's GT06 tests: 0x12 plus 5 vendor bytes, MCC 724 (Brazil).
    raw = h("7878241216040e102c22cf00915ffb04c6016300195a02d402283b00753f400571040001dda4880d0a")
    frame = decode_frame(raw)
    # 0x195A: fix, west, not north, course 0x15A = 346; 0x00915FFB = 9527291; 0x04C60163 = 80085347
    assert (frame.latitude, frame.longitude) == (-5.292939, -44.491859)
    assert (frame.course, frame.valid, frame.mcc, frame.mnc, frame.serial) == (
        346,
        True,
        724,
        2,
        0x01DD,
    )


def test_alarm_examples() -> None:
    frame = decode_frame(DOC_ALARM_26)
    assert frame == Frame(
        type="alarm",
        protocol=0x26,
        serial=13,
        time="2018-03-12T06:56:22Z",
        satellites=3,
        latitude=22.575833,  # 0x026C1054 = 40636500
        longitude=113.915653,  # 0x0C38C970 = 205048176
        speed_kmh=1,
        course=3,  # 0x4403: north, no fix
        valid=False,
        mcc=460,
        mnc=0,
        lac=10342,
        cell_id=3822,
        acc=False,  # terminal info 0x0C: charging, ACC low
        charging=True,
        voltage_level=6,
        gsm_signal=4,
        alarm="vibration",  # 0x03
    )
    assert ack_for(frame) == wrap(0x26, b"", 13)
    # The document's second example sends the LBS length as 08 instead of 09. Its alarm byte is
    # 00, but terminal info 0xD8 has bits 3-5 = 011: the document's "low battery" flag.
    second = decode_frame(DOC_ALARM_26_LBS8)
    assert (second.course, second.valid, second.lac, second.cell_id) == (185, True, 10342, 3822)
    assert (second.voltage_level, second.gsm_signal, second.alarm, second.serial) == (
        2,
        4,
        "low_battery",
        0x1D,
    )


# --- hand-assembled frames -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "lat_raw", "lon_raw", "latitude", "longitude"),
    [
        (NORTH, DEG_25, DEG_50, 25.0, 50.0),
        (0, DEG_25, DEG_50, -25.0, 50.0),
        (NORTH | WEST, DEG_25, DEG_50, 25.0, -50.0),
        (WEST, DEG_25, DEG_50, -25.0, -50.0),
        (NORTH, 162_000_000, 324_000_000, 90.0, 180.0),
        (WEST, 162_000_000, 324_000_000, -90.0, -180.0),
        (0, 1, 1, -0.000001, 0.000001),  # 1 / 1.8e6 = 5.6e-7 rounds to 1e-6
    ],
)
def test_hemispheres(
    flags: int, lat_raw: int, lon_raw: int, latitude: float, longitude: float
) -> None:
    frame = decode_frame(wrap(0x12, position(flags | FIX, lat_raw, lon_raw) + CELL, 1))
    assert (frame.latitude, frame.longitude) == (latitude, longitude)


def test_zero_south_is_not_negative_zero() -> None:
    frame = decode_frame(wrap(0x12, position(WEST, 0, 0) + CELL, 1))
    assert (str(frame.latitude), str(frame.longitude)) == ("0.0", "0.0")


@pytest.mark.parametrize(
    ("flags", "course", "valid"),
    [
        (0x154C, 332, True),  # the document's worked example: fix, north, east, 332 degrees
        (0x0400 | 359, 359, False),
        (0x3400 | 180, 180, True),  # differential bit 13 changes nothing reported
        (0x0400, 0, False),
    ],
)
def test_course_and_fix_bits(flags: int, course: int, valid: bool) -> None:
    frame = decode_frame(wrap(0x12, position(flags) + CELL, 1))
    assert (frame.course, frame.valid, frame.latitude, frame.longitude) == (
        course,
        valid,
        25.0,
        50.0,
    )
    assert (frame.time, frame.satellites, frame.speed_kmh) == ("2026-11-23T10:03:44Z", 9, 60)


def test_two_byte_mnc_flag() -> None:
    cell = h("819401B61005003039")  # bit 15 set on MCC 404: MNC 0x01B6 = 438 in 2 bytes
    frame = decode_frame(wrap(0x22, position(NORTH | FIX) + cell + h("010300"), 1))
    assert (frame.mcc, frame.mnc, frame.lac, frame.cell_id) == (404, 438, 4101, 12345)
    assert (frame.acc, frame.upload_mode, frame.reupload) == (True, 3, False)


def test_0x22_with_and_without_mileage() -> None:
    base = position(NORTH | FIX) + CELL + h("000100")
    without = decode_frame(wrap(0x22, base, 1))
    assert (without.acc, without.upload_mode, without.reupload, without.mileage) == (
        False,
        1,
        False,
        None,
    )
    with_mileage = decode_frame(wrap(0x22, base + h("0001E240"), 1))
    assert with_mileage.mileage == 123456


@pytest.mark.parametrize(
    "content",
    [
        position(NORTH) + CELL[:-1],  # cell id cut short
        position(NORTH, lat_raw=162_000_001) + CELL + h("000000"),  # beyond 90 degrees
        position(NORTH, lon_raw=324_000_001) + CELL + h("000000"),  # beyond 180 degrees
        position(NORTH | 361) + CELL + h("000000"),
        bytes([26, 13, 1, 0, 0, 0]) + position(NORTH)[6:] + CELL + h("000000"),  # month 13
        b"",
    ],
)
def test_impossible_location_content(content: bytes) -> None:
    with pytest.raises(FrameError) as caught:
        decode_frame(wrap(0x22, content, 1))
    assert caught.value.reason == "bad_content"
    assert "0x22" in str(caught.value)


def test_heartbeat_fields_and_ack() -> None:
    frame = decode_frame(wrap(0x13, h("4605020002"), 0x1234))  # GPS on, charging, ACC high
    assert frame == Frame(
        type="heartbeat",
        protocol=0x13,
        serial=0x1234,
        acc=True,
        charging=True,
        voltage_level=5,
        gsm_signal=2,
    )
    assert ack_for(frame) == wrap(0x13, b"", 0x1234)
    with pytest.raises(FrameError, match="bad_content"):
        decode_frame(wrap(0x13, h("460502"), 1))


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (0x00, "normal"),
        (0x01, "sos"),
        (0x02, "power_cut"),
        (0x03, "vibration"),
        (0x04, "enter_fence"),
        (0x05, "exit_fence"),
        (0x06, "overspeed"),
        (0x09, "moving"),
        (0x0E, "low_battery"),
        (0x13, "tamper"),
        (0x7F, "other"),  # a code no table names: a fixed word, never text built from the input
        (0x29, "acceleration"),
        (0x30, "jamming"),
    ],
)
def test_alarm_codes(code: int, name: str) -> None:
    content = position(FIX) + b"\x09" + CELL + bytes([0x02, 3, 1, code, 0x02])
    frame = decode_frame(wrap(0x16, content, 7))
    assert (frame.type, frame.alarm, frame.acc, frame.voltage_level, frame.gsm_signal) == (
        "alarm",
        name,
        True,
        3,
        1,
    )
    assert frame.latitude == -25.0


@pytest.mark.parametrize("protocol", [0x16, 0x26])
def test_alarm_ack_echoes_protocol_and_serial(protocol: int) -> None:
    content = position(NORTH | FIX) + b"\x09" + CELL + h("0206040102")
    ack = ack_for(decode_frame(wrap(protocol, content, 0xBEEF)))
    assert ack == wrap(protocol, b"", 0xBEEF)
    assert ack[:6] == bytes([0x78, 0x78, 0x05, protocol, 0xBE, 0xEF])


def test_alarm_cell_variants() -> None:
    tail = h("0206040102")
    surplus = decode_frame(wrap(0x26, position(NORTH) + b"\x0b" + CELL + h("AAAA") + tail, 1))
    assert (surplus.cell_id, surplus.alarm) == (12345, "sos")  # two unknown cell bytes skipped
    no_cell = decode_frame(wrap(0x26, position(NORTH) + b"\x00" + tail, 1))
    assert (no_cell.mcc, no_cell.alarm, no_cell.gsm_signal) == (None, "sos", 4)
    mileage = decode_frame(wrap(0x26, position(NORTH) + b"\x09" + CELL + tail + h("00000400"), 1))
    assert mileage.mileage == 1024


def test_extended_frames() -> None:
    content = DOC_LOCATION_22[4:-6]
    long_form = wrap(0x22, content, 8, extended=True)
    assert long_form[:4] == h("79790022")
    assert decode_frame(long_form) == decode_frame(DOC_LOCATION_22)
    assert build_frame(0x22, content, 8, extended=True) == long_form
    info = decode_frame(DOC_INFO_94)  # the document's fuel-sensor example, CRC 0x0D12
    assert info == Frame(type="heartbeat", protocol=0x94, serial=0x83A7)  # sub-type 0x0D: nothing kept
    assert ack_for(info, DOC_INFO_94) is None  # information packets are not answered
    with pytest.raises(ValueError):
        build_frame(0x94, bytes(251), 1)


def test_unknown_protocol() -> None:
    frame = decode_frame(DOC_TIME_REQUEST)
    assert frame == Frame(type="request", protocol=0x8A, serial=6)  # answered with the time when sent
    assert ack_for(frame) is None
    echo = decode_frame(wrap(0x80, b"\x01\x02", 3))  # a server command echoed back
    assert echo == Frame(type="unknown", protocol=0x80, serial=3)
    assert ack_for(echo) is None


def test_frame_serialises_without_absent_fields() -> None:
    frame = decode_frame(DOC_HEARTBEAT)
    assert msgspec.json.decode(msgspec.json.encode(frame)) == {
        "type": "heartbeat",
        "protocol": 19,
        "serial": 15,
        "acc": False,
        "voltage_level": 4,
        "gsm_signal": 4,
        "charging": False,
    }


# --- framing errors --------------------------------------------------------------------------


def corrupt(frame: bytes, index: int, value: int) -> bytes:
    changed = bytearray(frame)
    changed[index] = value
    return bytes(changed)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (corrupt(DOC_LOGIN, -3, DOC_LOGIN[-3] ^ 1), "bad_crc"),
        (corrupt(DOC_LOGIN, 9, DOC_LOGIN[9] ^ 1), "bad_crc"),
        (corrupt(DOC_LOGIN, -1, 0x0B), "bad_stop"),
        (DOC_LOGIN + b"\x00", "bad_length"),
        (DOC_LOGIN[:-1], "bad_length"),
        (h("78780401000100000D0A"), "bad_length"),  # LEN 4 cannot hold PROTO + SERIAL + CRC
        (DOC_LOGIN[:1], "bad_length"),
        (b"GET / HTTP/1.1\r\n", "garbage"),
        (wrap(0x01, h("01234567890123"), 1), "bad_content"),  # 7-byte terminal id
    ],
)
def test_decode_errors(raw: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as caught:
        decode_frame(raw)
    assert caught.value.reason == reason
    message = str(caught.value)
    assert message.startswith(reason)
    assert "12345" not in message and not re.search(
        r"[0-9A-Fa-f]{6}", message
    )  # no payload in logs


# --- Framer ----------------------------------------------------------------------------------


def frames_and_errors(items: list[bytes | FrameError]) -> tuple[list[bytes], list[str]]:
    return (
        [item for item in items if isinstance(item, bytes)],
        [item.reason for item in items if isinstance(item, FrameError)],
    )


def feed_all(framer: Framer, chunks: list[bytes]) -> list[bytes | FrameError]:
    return [item for chunk in chunks for item in framer.feed(chunk)]


def test_framer_byte_at_a_time_and_coalesced() -> None:
    stream = DOC_LOGIN + DOC_INFO_94 + DOC_HEARTBEAT + DOC_LOCATION_22
    expected = [DOC_LOGIN, DOC_INFO_94, DOC_HEARTBEAT, DOC_LOCATION_22]
    framer = Framer()
    assert feed_all(framer, [bytes([b]) for b in stream]) == expected
    assert framer.bytes_buffered == 0
    assert Framer().feed(stream) == expected


def test_framer_keeps_partial_frame() -> None:
    framer = Framer()
    assert framer.feed(DOC_LOCATION_22[:1]) == []  # a lone 78 may be half a start marker
    assert framer.bytes_buffered == 1
    assert framer.feed(DOC_LOCATION_22[1:20]) == []
    assert framer.bytes_buffered == 20
    assert framer.feed(DOC_LOCATION_22[20:] + DOC_LOGIN[:5]) == [DOC_LOCATION_22]
    assert framer.bytes_buffered == 5


def test_framer_content_may_hold_stop_bytes() -> None:
    raw = h("7979000E9B0332382E33A1E60D0A0289BE490D0A")  # Traccar capture: 0D 0A inside the content
    assert Framer().feed(raw[:12]) == []
    framer = Framer()
    assert feed_all(framer, [raw[:14], raw[14:]]) == [raw]


def test_framer_reports_garbage_once_per_run() -> None:
    framer = Framer()
    items = feed_all(
        framer, [b"GET / HTTP", b"/1.1\r\n", DOC_LOGIN, b"\x00\x01", DOC_HEARTBEAT, b"\xff"]
    )
    assert [getattr(item, "reason", item) for item in items] == [
        "garbage", DOC_LOGIN, "garbage", DOC_HEARTBEAT, "garbage",
    ]  # fmt: skip
    assert framer.bytes_buffered == 0


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (h("787802"), "bad_length"),
        (h("79790001"), "bad_length"),
        (h("79790400"), "oversize"),  # 1024 + 6 bytes announced
        (corrupt(DOC_LOGIN, -3, 0), "bad_crc"),
        (corrupt(DOC_HEARTBEAT, -2, 0), "bad_stop"),
    ],
)
def test_framer_resyncs_after_bad_frame(bad: bytes, reason: str) -> None:
    framer = Framer()
    items = framer.feed(bad + DOC_LOGIN + bad + b"junk" + DOC_HEARTBEAT)
    assert frames_and_errors(items) == ([DOC_LOGIN, DOC_HEARTBEAT], [reason, reason])


def test_framer_max_frame() -> None:
    big = wrap(0x94, bytes(100), 1, extended=True)  # 2 + 2 + 1 + 100 + 2 + 2 + 2 = 111 bytes
    items = Framer(max_frame=64, max_buffer=64).feed(big + DOC_LOGIN)
    assert frames_and_errors(items) == ([DOC_LOGIN], ["oversize"])
    assert Framer(max_frame=111, max_buffer=111).feed(big) == [big]


def test_framer_max_buffer() -> None:
    with pytest.raises(ValueError):
        Framer(max_frame=2048, max_buffer=1024)
    framer = Framer(max_frame=64, max_buffer=64)
    stream = (DOC_HEARTBEAT + DOC_LOGIN) * 200  # 6600 bytes in one read
    assert framer.feed(stream + DOC_LOGIN[:7]) == [DOC_HEARTBEAT, DOC_LOGIN] * 200
    assert framer.bytes_buffered == 7


SERIALS = st.integers(0, 0xFFFF)
ANY_FRAME = st.one_of(
    st.builds(build_login, imei=st.from_regex(r"[0-9]{15}", fullmatch=True), serial=SERIALS),
    st.builds(
        build_heartbeat,
        serial=SERIALS,
        acc=st.booleans(),
        charging=st.booleans(),
        voltage_level=st.integers(0, 6),
        gsm_signal=st.integers(0, 4),
    ),
    st.builds(
        build_location,
        serial=SERIALS,
        when=st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31), timezones=st.just(UTC)),
        lat=st.floats(-90, 90),
        lon=st.floats(-180, 180),
        speed_kmh=st.integers(0, 255),
        course=st.integers(0, 360),
        satellites=st.integers(0, 15),
    ),
    st.builds(
        build_frame,
        protocol=st.integers(0x80, 0xFF),
        content=st.binary(max_size=300),
        serial=SERIALS,
    ),
    st.builds(
        build_frame,
        protocol=st.integers(0x80, 0xFF),
        content=st.binary(max_size=300),
        serial=SERIALS,
        extended=st.just(True),
    ),
)


def split(stream: bytes, data: st.DataObject) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(ANY_FRAME, min_size=1, max_size=6), data=st.data())
def test_framer_any_split_with_garbage_between(frames: list[bytes], data: st.DataObject) -> None:
    no_marker = st.binary(max_size=24).map(lambda b: bytes(x for x in b if x not in (0x78, 0x79)))
    garbage = [data.draw(no_marker) for _ in range(len(frames) + 1)]
    stream = garbage[0] + b"".join(
        frame + junk for frame, junk in zip(frames, garbage[1:], strict=True)
    )
    framer = Framer(max_frame=512, max_buffer=512)
    items: list[bytes | FrameError] = []
    for chunk in split(stream, data):
        items += framer.feed(chunk)
        assert framer.bytes_buffered <= 512
    assert frames_and_errors(items) == (frames, ["garbage"] * sum(1 for junk in garbage if junk))
    assert framer.bytes_buffered == 0


MARKER_LIKE = st.lists(
    st.one_of(
        st.binary(max_size=4),
        st.sampled_from([b"\x78\x78", b"\x79\x79", b"\x78", b"\x79", b"\r\n"]),
    ),
    max_size=8,
).map(b"".join)


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(ANY_FRAME, min_size=1, max_size=6), data=st.data())
def test_framer_survives_marker_like_garbage(frames: list[bytes], data: st.DataObject) -> None:
    garbage = [data.draw(MARKER_LIKE) for _ in range(len(frames))]
    stream = b"".join(junk + frame for junk, frame in zip(garbage, frames, strict=True))
    stream += bytes(1100)  # lets a bogus header's announced length run out and be rejected
    found, _ = frames_and_errors(feed_all(Framer(), split(stream, data)))
    assert found == frames


@given(
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    course=st.integers(0, 360),
    valid=st.booleans(),
    mnc=st.integers(0, 999),
)
def test_location_builder_round_trip(
    lat: float, lon: float, course: int, valid: bool, mnc: int
) -> None:
    frame = decode_frame(build_location(9, WHEN, lat, lon, 33, course, 7, valid=valid, mnc=mnc))
    assert (frame.latitude, frame.longitude) == pytest.approx((lat, lon), abs=1e-6)
    assert (frame.course, frame.valid, frame.mnc, frame.time) == (
        course,
        valid,
        mnc,
        "2026-11-23T10:03:44Z",
    )


# --- builders against the layout -------------------------------------------------------------


def test_build_location_0x12_layout() -> None:
    built = build_location(0x0102, WHEN, -25.0, 50.0, 60, 90, 9, protocol=0x12)
    assert built == wrap(0x12, position(FIX | 90) + CELL, 0x0102)


def test_build_location_0x22_layout() -> None:
    plus_two = datetime(2026, 11, 23, 12, 3, 44, tzinfo=timezone(timedelta(hours=2)))
    built = build_location(1, plus_two, 25.0, -50.0, 60, 0, 9, valid=False, acc=False, mileage=1024)
    assert built == wrap(0x22, position(NORTH | WEST) + CELL + h("00000000000400"), 1)
    two_byte_mnc = build_location(1, WHEN, 25.0, 50.0, 60, 0, 9, mnc=438)
    assert two_byte_mnc == wrap(
        0x22, position(NORTH | FIX) + h("819401B61005003039") + h("010000"), 1
    )


def test_build_location_rejects_impossible_values() -> None:
    for kwargs in (
        {"lat": 90.5},
        {"lon": -181.0},
        {"course": 361},
        {"satellites": 16},
        {"protocol": 0x16},
    ):
        args = {"lat": 0.0, "lon": 0.0, "course": 0, "satellites": 4} | kwargs
        with pytest.raises(ValueError):
            build_location(1, WHEN, speed_kmh=0, **args)
    with pytest.raises(ValueError):
        build_location(1, WHEN, 0.0, 0.0, 0, 0, 4, protocol=0x12, mileage=5)


def test_build_heartbeat_layout() -> None:
    assert build_heartbeat(7) == wrap(0x13, h("0204030002"), 7)
    assert build_heartbeat(8, acc=False, charging=True, voltage_level=6, gsm_signal=0) == wrap(
        0x13, h("0406000002"), 8
    )


def test_build_alarm_layout() -> None:
    built = build_alarm(9, WHEN, 25.0, -50.0, "sos", satellites=8, protocol=0x16)
    expected = position(FIX | NORTH | WEST, gps=0xC8, speed=0) + b"\x09" + CELL + h("0204030102")
    assert built == wrap(0x16, expected, 9)
    unnamed = decode_frame(build_alarm(10, WHEN, 0.0, 0.0, "alarm_0x7f"))
    assert (unnamed.protocol, unnamed.alarm) == (0x26, "other")
    for bad in ("fire", "alarm_0x123"):
        with pytest.raises(ValueError):
            build_alarm(1, WHEN, 0.0, 0.0, bad)


# --- `gateway decode gt06` -------------------------------------------------------------------


def run(*arguments: str) -> tuple[int, list[dict[str, object]]]:
    out = io.StringIO()
    code = decode_hex_command(list(arguments), out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_frame_to_json_keys() -> None:
    assert frame_to_json(decode_frame(DOC_LOCATION_22)) == {
        "type": "location",
        "protocol": 34,
        "serial": 8,
        "time": "2015-12-29T02:51:05Z",
        "latitude": 23.111693,
        "longitude": 114.409298,
        "speed_kmh": 0,
        "course": 0,
        "valid": True,
        "satellites": 9,
        "mcc": 460,
        "mnc": 0,
        "lac": 10365,
        "cell_id": 8049,
        "acc": False,  # trailer 00 00 01: ACC off, upload by interval, re-upload
        "ack": None,
    }


def test_decode_command_several_frames_per_argument() -> None:
    code, lines = run(
        "78 78 0D 01 01 23 45 67 89 01 23 45 00 01 8C DD 0D 0A" + DOC_HEARTBEAT.hex(),
        DOC_ALARM_26.hex(),
    )
    assert code == 0
    assert lines[0] == {
        "type": "login",
        "protocol": 1,
        "serial": 1,
        "imei": "123456789012345",
        "ack": "787805010001D9DC0D0A",
    }
    assert lines[1] == {  # 40 04 04 00 01: GPS on, ACC off, not charging; levels 4 and 4
        "type": "heartbeat",
        "protocol": 19,
        "serial": 15,
        "acc": False,
        "charging": False,
        "voltage_level": 4,
        "gsm_signal": 4,
        "ack": wrap(0x13, b"", 15).hex().upper(),
    }
    assert (lines[2]["type"], lines[2]["alarm"], lines[2]["ack"]) == (
        "alarm",
        "vibration",
        wrap(0x26, b"", 13).hex().upper(),
    )
    assert len(lines) == 3


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        (corrupt(DOC_LOGIN, -3, 0).hex(), [{"error": "bad_crc"}]),
        ("zz", [{"error": "bad_hex"}]),
        ("787", [{"error": "bad_hex"}]),
        ("", [{"error": "bad_hex"}]),
        (DOC_LOGIN[:9].hex(), [{"error": "bad_length"}]),
        (wrap(0x12, b"\x00", 1).hex(), [{"error": "bad_content"}]),
        (
            "00" + DOC_TIME_REQUEST.hex(),
            [{"error": "garbage"}, {"type": "request", "protocol": 138, "serial": 6, "ack": None}],
        ),
    ],
)
def test_decode_command_errors(argument: str, expected: list[dict[str, object]]) -> None:
    assert run(argument) == (1, expected)


def test_decode_command_error_in_one_argument_fails_the_run() -> None:
    code, lines = run(DOC_LOGIN.hex(), "nothex", DOC_HEARTBEAT.hex())
    assert code == 1
    assert [line.get("type", line.get("error")) for line in lines] == [
        "login",
        "bad_hex",
        "heartbeat",
    ]

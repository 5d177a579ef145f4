"""The GT06 family beyond the six classic messages: published captures, time zones, replies, privacy.

Vectors are frames from devices in the field, as published with Traccar's GT06 decoder tests
(the values Traccar asserts are repeated here); every other expected value is worked out by hand
from the bytes in the comment next to it. Frames the tests build themselves use an independent
bit-by-bit CRC (``wrap``).
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gt06_server import IMEI, Start, ack, pack_engine, start

from devices.gt06.frames import build_lbs_report, build_location, build_login, build_wifi_report
from gateway.ingest.gt06.codec import Cell, CountedFrame, FrameError, Framer, ack_for, decode_frame
from gateway.ingest.gt06.decoders import timezone_offset
from gateway.ingest.gt06.describe import decode_hex_command
from gateway.ingest.gt06.listener import Limits
from gateway.ingest.gt06.record import to_message
from gateway.pipeline import Forward

__all__ = ["start"]

h = bytes.fromhex


def ref_crc(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


def wrap(protocol: int, content: bytes, serial: int, extended: bool = False) -> bytes:
    size = 1 + len(content) + 4
    body = size.to_bytes(2 if extended else 1, "big") + bytes([protocol]) + content + serial.to_bytes(2, "big")
    return (b"\x79\x79" if extended else b"\x78\x78") + body + ref_crc(body).to_bytes(2, "big") + b"\r\n"


# --- published captures ---------------------------------------------------------------------------

# (frame, kind, fields) -- a subset of each decoded frame, checked by hand against the bytes.
CAPTURES = [
    pytest.param(  # Traccar asserts 2015-10-20 14:21:11, valid, 54.94535, 24.01762
        "78781f120f0a140e150bc505e51e780293a9e800540000f601006e0055da00035f240d0a", "location",
        {"time": "2015-10-20T14:21:11Z", "valid": True, "latitude": 54.945347, "longitude": 24.017622,
         "satellites": 5, "mcc": 246, "mnc": 1, "lac": 110, "cell_id": 0x55DA},
        id="0x12-lithuania",
    ),
    pytest.param(  # Traccar asserts ignition off (VXT01, LEN 0x24): status 40, power 0x0571 = 13.93 V, GSM 04
        "7878241216040e102c22cf00915ffb04c6016300195a02d402283b00753f400571040001dda4880d0a", "location",
        {"acc": False, "power_v": 13.93, "gsm_signal": 4, "mcc": 724, "lac": 0x283B, "cell_id": 0x753F},
        id="0x12-vxt01",
    ),
    pytest.param(  # S5 (LEN 0x2B): status 45 (charging, ACC off), power 0x04B6 = 12.06 V
        "78782b1215050d03041bcf031ff30a0be795bc001c17014e14a065dd95314504b6040000001c00000cd90ab8fb6f0d0a",
        "location", {"acc": False, "charging": True, "power_v": 12.06, "mcc": 334, "mnc": 0x14},
        id="0x12-s5",
    ),
    pytest.param(  # GPS only: 0x027AC7FD / 1.8e6, flags 0x1521 = fix, north, course 289
        "787819100B031A0B1B31CC027AC7FD0C4657BF0115210001001CC6070D0A", "location",
        {"time": "2011-03-26T11:27:49Z", "latitude": 23.111678, "longitude": 114.409208, "speed_kmh": 1,
         "course": 289, "satellites": 12, "valid": True},
        id="0x10-gps-only",
    ),
    pytest.param(  # flags 0x3C00: north and WEST; MCC 0x812E has the 2-byte MNC flag; CID 4 bytes
        "78782111150b0b022c30c804b7af7808810cb0003c00012e02d075df0084890c000679950d0a", "location",
        {"time": "2021-11-11T02:44:48Z", "latitude": 43.970484, "longitude": -79.263956, "mcc": 302,
         "mnc": 720, "lac": 0x75DF, "cell_id": 0x0084890C},
        id="0x11-canada",
    ),
    pytest.param(  # trailer 01 03 01: ACC on, upload mode 3, re-upload
        "787822221106160a1016c60278019407c7783800040001940504700046fc01030100065f570d0a", "location",
        {"time": "2017-06-22T10:16:22Z", "latitude": 23.010642, "longitude": 72.507196, "valid": False,
         "mcc": 404, "mnc": 5, "lac": 0x0470, "cell_id": 0x0046FC, "acc": True},
        id="0x22-india",
    ),
    pytest.param(  # module 0x002E (mileage) 0x00002328 = 9000
        "7878353714080d05000ac500a886eb0b7522f000100001fe0a05ea004f1b000001002e0400002328003b0217c0003c0401020001002c468a0d0a",
        "location", {"time": "2020-08-13T05:00:10Z", "latitude": -6.135882, "mileage": 9000, "mcc": 510},
        id="0x37-module",
    ),
    pytest.param(  # 7 cells of which 4 have a LAC; RSSI bytes 3E 31 2D 18 are -dBm
        "78783B2810010D02020201CC00287D001F713E287D001F7231287D001E232D287D001F4018000000000000000000000000000000000000FF00020005B14B0D0A",
        "location",
        {"time": "2016-01-13T02:02:02Z", "mcc": 460, "mnc": 0, "cells": [
            {"mcc": 460, "mnc": 0, "lac": 10365, "cell_id": 8049, "rssi": -62},
            {"mcc": 460, "mnc": 0, "lac": 10365, "cell_id": 8050, "rssi": -49},
            {"mcc": 460, "mnc": 0, "lac": 10365, "cell_id": 7715, "rssi": -45},
            {"mcc": 460, "mnc": 0, "lac": 10365, "cell_id": 8000, "rssi": -24}]},
        id="0x28-lbs-multiple",
    ),
    pytest.param(  # after 7 cells and TA 07: one access point 00:18:01:eb:40:39
        "7878412c11030b011c1f013604cb8a00b17754cb8a00bef357cb8a00b73f5fcb8900b0e25fcb8900b6655fcb8a00b74960cb8a00b178620701001801eb40393800bbbde10d0a",
        "location", {"time": "2017-03-11T01:28:31Z", "mcc": 310, "mnc": 4, "wifi_aps": ["00:18:01:eb:40:39"]},
        id="0x2C-lbs-wifi",
    ),
    pytest.param(  # counted Wi-Fi report: LEN 00 access points, BCD time, 2 cells of MCC 204
        "787800691710231108500200cc080c4e2fa5640c4e2fa66e0d0a", "location",
        {"time": "2017-10-23T11:08:50Z", "mcc": 204, "mnc": 8, "cells": [
            {"mcc": 204, "mnc": 8, "lac": 3150, "cell_id": 12197, "rssi": -100},
            {"mcc": 204, "mnc": 8, "lac": 3150, "cell_id": 12198, "rssi": -110}]},
        id="0x69-counted",
    ),
    pytest.param(  # LEN 08: eight access points, the first ac:9e:17:b3:08:08
        "78780869170928113413ac9e17b30808514494fcf6e148596cb0ce2c67bd4a6eb0ce2c67bd4b0018e7d4333e55ec086be7f2df5fe48d8c94fc6657e48d8cb8f378510600cc0400d37a3d4600d37a3c5000d37a3b6400d376716400d305ac6400d393506e0d0a",
        "location", {"time": "2017-09-28T11:34:13Z", "mcc": 204, "mnc": 4},
        id="0x69-eight-aps",
    ),
    pytest.param(  # the document's alarm: status 0C 06 04, alarm 03
        "7878252612030C063816C3026C10540C38C9700144030901CC002866000EEE0C06040302000DA2DB0D0A", "alarm",
        {"alarm": "vibration", "latitude": 22.575833, "charging": True, "voltage_level": 6},
        id="0x26-document",
    ),
    pytest.param(  # Traccar asserts removing: terminal info 0x7C, bits 3-5 = 111
        "7878251613020C12141AC5027951430C2A16F60014000900000000001A00007C550300020002F1E70D0A", "alarm",
        {"alarm": "removing", "time": "2019-02-12T18:20:26Z"},
        id="0x16-removing",
    ),
    pytest.param(  # a 4G cell behind length 0x11: MCC 0x81CC (2-byte MNC 0001), LAC 0x260E, CID 0x0615F801
        "78782EA4110C0C02281BF6026C18720C38D22800149C1181CC00010000260E000000000615F8012C05041102FF001058FD0D0A",
        "alarm", {"alarm": "power_off", "mcc": 460, "mnc": 1, "lac": 0x260E, "cell_id": 0x0615F801},
        id="0xA4-fence-4g",
    ),
    pytest.param(  # no GPS: 4G cell, then status 04 05 04 00 01
        "787819a501cc0000009191000000000906170304050400010005f44d0d0a", "alarm",
        {"alarm": "normal", "mcc": 460, "lac": 0x9191, "cell_id": 0x09061703, "charging": True},
        id="0xA5-lbs-alarm",
    ),
    pytest.param(  # Traccar asserts a general alarm: short form, event 01
        "78780c95130a071223200100013ad10d0a", "alarm", {"alarm": "general", "time": "2019-10-07T18:35:32Z"},
        id="0x95-general",
    ),
    pytest.param(  # Traccar asserts acceleration: event 0x90
        "78780c95130a0209321c90000112800d0a", "alarm", {"alarm": "acceleration"}, id="0x95-acceleration",
    ),
    pytest.param(  # Traccar asserts battery level 6 (the 16-byte 0x13 variant)
        "7878151330802b00000642014f0008720000802b5ee4d4c90d0a", "heartbeat", {"battery_level": 6},
        id="0x13-battery",
    ),
    pytest.param(  # GK310 heartbeat: status C0, battery 0x0122 = 2.90 V, GSM 4
        "78780B23C00122040001000818720D0A", "heartbeat", {"battery_v": 2.9, "gsm_signal": 4}, id="0x23",
    ),
    pytest.param(  # external voltage 0x04EB = 12.59 V
        "7878079404eb001c705d0d0a", "heartbeat", {"power_v": 12.59}, id="0x94-short-voltage",
    ),
    pytest.param(  # Traccar asserts the ICCID; IMSI 0520050218721401 after the IMEI
        "79790020940a035985708236675805200502187214018966051912408052452f000355560d0a", "heartbeat",
        {"iccid": "8966051912408052452", "imsi": "520050218721401"},
        id="0x94-iccid",
    ),
    pytest.param(  # door flags 00
        "7979000794050000c9b63e0d0a", "heartbeat", {"door": False}, id="0x94-door",
    ),
    pytest.param(  # Traccar asserts the ICCID from a command answer "<ICCID:...>"
        "7878281520000000003c49434349443a38393838323339303030303039373330323635303e00020d446f260d0a",
        "heartbeat", {"iccid": "89882390000097302650"}, id="0x15-iccid",
    ),
    pytest.param(  # "Current position!Lat:N54.739332,Lon:E25.273270,Course:126.53,...,DateTime:2017-05-26  10:27:47"
        "7979007121000000000143757272656e7420706f736974696f6e214c61743a4e35342e3733393333322c4c6f6e3a4532352e3237333237302c436f757273653a3132362e35332c53706565643a302e303030302c4461746554696d653a323031372d30352d3236202031303a32373a3437000bbee30d0a",
        "location", {"time": "2017-05-26T10:27:47Z", "latitude": 54.739332, "longitude": 25.27327, "course": 127},
        id="0x21-text-position",
    ),
    pytest.param(  # Traccar asserts removing (module 0x2B event 0x14); module 0x33: Unix 0x5D7E3A18, alt 0xD5
        "797900a87000000001020035000101003300125d7e3a180600d504b598f708814b3a001d1500340006125d7e39dc000011000a012e02620000000000000001000803537601000129800002000803102608593397620003000a89012608522933976266001800020172002b000114002c00045d7df3c70009000106000a000109002800010d002e00040000f25d002a000111002900040000017e0030000a000100b4000a00b402d0000591250d0a",
        "alarm", {"alarm": "removing", "time": "2019-09-15T13:18:16Z", "altitude": 213, "latitude": 43.894466,
                  "longitude": -79.27285, "course": 277, "battery_v": 3.7},
        id="0x70-modular",
    ),
    pytest.param(  # AZ735 extended: GPS length 0C, 9 satellites, position 0x00A87558 / 0x0B7AB4F0
        "7979004a321106170c1b180cc900a875580b7ab4f00010350901fe0a007c0009112424007c000912240081004efe2100c500100f1200000000000000000000000000000000000000000000bc7c900d0a",
        "location", {"time": "2017-06-23T12:27:24Z", "latitude": -6.133382, "longitude": 106.995049, "satellites": 9},
        id="0x32-az735",
    ),
    pytest.param(  # X1: odometer 0x00000000, cell 0194 0B 00B1 000047FF; the driver id is not kept
        "78783c340000000011061809130c0903107d2408488a5800144c00000000000001940b00b1000047ff000000000500018f42210000000100050003010b69450d0a",
        "location", {"time": "2017-06-24T09:19:12Z", "mcc": 404, "mnc": 11, "lac": 0xB1, "cell_id": 0x47FF},
        id="0x34-x1",
    ),
]  # fmt: skip


HEX = {param.id: param.values[0] for param in CAPTURES}


@pytest.mark.parametrize(("hex_frame", "kind", "fields"), CAPTURES)
def test_published_captures(hex_frame: str, kind: str, fields: dict[str, object]) -> None:
    raw = h(hex_frame)
    [item] = Framer(max_frame=4096, max_buffer=4096).feed(raw)
    assert isinstance(item, bytes), item  # framing and CRC (or the Wi-Fi count) hold
    frame = decode_frame(item)
    assert frame.type == kind
    decoded = msgspec.to_builtins(frame)
    assert {key: decoded.get(key) for key in fields} == fields


def test_every_published_capture_decodes_to_something() -> None:
    """No capture above is "unknown" and each becomes a record the pack accepts as it is."""
    engine = pack_engine()
    for param in CAPTURES:
        frame = decode_frame(h(param.values[0]))
        topic, payload = to_message(frame, IMEI) or ("", b"")
        result = engine.process(topic, payload)
        assert isinstance(result, Forward), (param.id, result)
        assert result.unknown == 0, param.id  # every field is one the pack names


def test_a_dashcam_alarm_whose_crc_does_not_match() -> None:
    """Published from a JC100 dashcam whose CRC the standard does not produce: rejected and counted
    by default, decoded with the listener's ``accept_bad_crc`` (``strict_crc=False``)."""
    raw = h(
        "78788b95140a070c1434055D4A800209D9C014280100004556454e545f3335333337363131303032333139365f30303030303030"
        "305f323032305f31305f30375f31345f32305f35325f32342e6d70342c4556454e545f3335333337363131303032333139365f30"
        "303030303030305f323032305f31305f30375f31345f32305f35325f32332e6d7034003f6b260d0a"
    )
    [strict] = Framer().feed(raw)
    assert isinstance(strict, FrameError) and strict.reason == "bad_crc"
    [lenient] = Framer(strict_crc=False).feed(raw)
    frame = decode_frame(lenient, strict_crc=False)
    # long form: time, 0x055D4A80 = 50.0, 0x0209D9C0 = 19.0, flags 0x1428, event 01 = SOS
    assert (frame.type, frame.alarm, frame.latitude, frame.longitude) == ("alarm", "sos", 50.0, 19.0)
    assert b"353376110023196" not in (to_message(frame, IMEI) or ("", b""))[1]  # file names embed an IMEI


def test_eight_access_points_of_a_counted_report() -> None:
    frame = decode_frame(h(HEX["0x69-eight-aps"]))
    assert frame.wifi_aps is not None and len(frame.wifi_aps) == 8
    assert frame.wifi_aps[0] == "ac:9e:17:b3:08:08"
    assert frame.cells is not None and len(frame.cells) == 6
    assert frame.cells[0] == Cell(mcc=204, mnc=4, lac=0xD3, cell_id=0x7A3D, rssi=-0x46)


# --- logins and time zones ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "offset"),
    [(0x3200, 480), (0x3208, -480), (0x2120, 5 * 60 + 30), (0x0000, 0), (0x1908, -240), (0x5DC0, None)],
    ids=["+8", "-8", "+5:30", "utc", "-4", "impossible"],
)
def test_timezone_word(word: int, offset: int | None) -> None:
    # hours * 100 + minutes in the top 12 bits (0x320 = 800: 8 h; 0x212 = 530: 5 h 30), bit 3 = west;
    # 0x5DC = 1500 would be 15 h
    assert timezone_offset(word) == offset


def test_login_carries_the_time_zone_and_later_local_times_become_utc() -> None:
    login = decode_frame(h("787811010864717003664467100f190a0002c6d20d0a"))  # word 0x190A: 4 h west
    assert (login.imei, login.type_id, login.timezone) == ("864717003664467", 0x100F, "-04:00")
    local = datetime(2026, 11, 23, 10, 3, 44, tzinfo=UTC)  # what the device's clock says
    raw = build_location(2, local, 12.97, 77.59, 30, 90, 9)
    assert decode_frame(raw).time == "2026-11-23T10:03:44Z"
    assert decode_frame(raw, utc_offset=-240).time == "2026-11-23T14:03:44Z"  # 4 h west of UTC
    assert decode_frame(raw, utc_offset=330).time == "2026-11-23T04:33:44Z"  # India


def test_decode_command_applies_the_login_time_zone() -> None:
    import io
    import json

    login = wrap(0x01, h("0358756091234567") + h("3601") + h("2120"), 1)  # 0x212 = 530: +05:30
    position = build_location(2, datetime(2026, 11, 23, 10, 3, 44), 12.97, 77.59, 30, 90, 9)
    out = io.StringIO()
    assert decode_hex_command([login.hex() + position.hex()], out) == 0
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["timezone"] == "+05:30"
    assert second["time"] == "2026-11-23T04:33:44Z"


# --- replies ------------------------------------------------------------------------------------


def test_replies_by_message_type() -> None:
    # positions and information packets are not answered; alarms, status and LBS reports are
    for hex_frame, reply in [
        (HEX["0x12-lithuania"], None),
        (HEX["0x28-lbs-multiple"], wrap(0x28, b"", 5)),  # serial 0005
        (HEX["0xA4-fence-4g"], wrap(0xA4, b"", 0x10)),
        (HEX["0x95-general"], wrap(0x95, b"", 1)),
        (HEX["0x23"], wrap(0x23, b"", 8)),
        (HEX["0x94-short-voltage"], None),
        (HEX["0x26-document"], wrap(0x26, b"", 0x0D)),
    ]:
        raw = h(hex_frame)
        assert ack_for(decode_frame(raw), raw) == reply, hex_frame[:10]


def test_counted_wifi_report_is_answered_with_its_time_and_no_crc() -> None:
    raw = h("787800691710231108500200cc080c4e2fa5640c4e2fa66e0d0a")
    [item] = Framer().feed(raw)
    assert isinstance(item, CountedFrame)
    assert ack_for(decode_frame(item), item) == h("78780069171023110850") + b"\r\n"


def test_az735_is_answered_in_an_extended_frame() -> None:
    raw = h(HEX["0x32-az735"])
    assert ack_for(decode_frame(raw), raw) == wrap(0x32, b"", 0xBC, extended=True)


def test_address_request_gets_the_not_available_answer() -> None:
    raw = h("78782E2A0F0C1D071139CA027AC8000C4658000014D83132353230313335333231373730373900000000000001002A6ECE0D0A")
    frame = decode_frame(raw)
    assert frame.type == "request"  # carries a phone number: answered, never forwarded
    text = b"NA&&NA&&0##"
    assert ack_for(frame, raw) == wrap(0x97, bytes([len(text)]) + bytes(4) + text, 0x2A, extended=True)


# --- robustness ----------------------------------------------------------------------------------

PROTOCOLS = sorted(
    {0x01, 0x10, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1E, 0x21, 0x22, 0x23, 0x24, 0x26, 0x27,
     0x28, 0x2A, 0x2C, 0x2D, 0x2E, 0x31, 0x32, 0x33, 0x34, 0x36, 0x37, 0x69, 0x70, 0x8A, 0x8C, 0x94, 0x95, 0x9B,
     0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA7, 0xF3}
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(PROTOCOLS), st.binary(max_size=120), st.booleans(), st.integers(-720, 840))
def test_any_content_decodes_or_is_a_counted_rejection(protocol: int, content: bytes, long: bool, offset: int) -> None:
    raw = wrap(protocol, content, 1, extended=long)
    try:
        frame = decode_frame(raw, utc_offset=offset)
    except FrameError as exc:
        assert exc.reason == "bad_content"
        assert re.fullmatch(r"bad_content: protocol 0x[0-9A-F]{2}: [a-zA-Z0-9 -]+", str(exc)), str(exc)  # no payload
        return
    assert frame.alarm is None or frame.alarm in {
        "normal", "sos", "power_cut", "vibration", "enter_fence", "exit_fence", "geofence", "overspeed", "moving",
        "low_battery", "low_power", "power_off", "tamper", "removing", "door", "acceleration", "braking",
        "cornering", "accident", "fall_down", "jamming", "temperature", "general", "other",
    }  # fmt: skip
    if frame.latitude is not None:
        assert -90 <= frame.latitude <= 90 and -180 <= (frame.longitude or 0) <= 180
    message = to_message(frame, IMEI)
    if message is not None:
        msgspec.json.decode(message[1])  # always a JSON record


# --- the listener and the pack -------------------------------------------------------------------


async def test_lbs_and_wifi_reports_reach_the_pack_without_cells_or_bssids(start: Start) -> None:
    listener = await start()
    tracker = await listener.connect()
    await tracker.login()
    engine = pack_engine()
    lbs = [h(HEX[name]) for name in ("0x28-lbs-multiple", "0x2C-lbs-wifi", "0x69-eight-aps")]
    for raw in lbs:
        await tracker.send(raw)
    messages = await listener.recorder.wait_for(1 + len(lbs))
    assert await tracker.receive(10) == ack(0x28, 5)
    assert await tracker.receive(10) == ack(0x2C, 0xBB)
    assert await tracker.receive(12) == h("78780069170928113413") + b"\r\n"
    for topic, payload in messages[1:]:
        assert payload["cells"] or payload["wifi_aps"]
        result = engine.process(topic, msgspec.json.encode(payload))
        assert isinstance(result, Forward)
        out = msgspec.json.decode(result.payload)
        assert "wifi_aps" not in out and "lac" not in out and "cell_id" not in out
        assert all(set(cell) == {"mcc", "mnc"} for cell in out.get("cells", []))
        for cell in payload.get("cells", []):  # no cell id or LAC value in any form
            assert str(cell["cell_id"]).encode() not in result.payload.replace(b'"mcc"', b"")
        for bssid in payload.get("wifi_aps", []):
            assert bssid.encode() not in result.payload


async def test_local_times_after_a_login_with_a_time_zone(start: Start) -> None:
    listener = await start()
    tracker = await listener.connect()
    await tracker.send(wrap(0x01, h("0358756091234567") + h("3601") + h("3200"), 1))  # +08:00
    assert await tracker.receive(10) == ack(0x01, 1)
    await tracker.send(build_location(2, datetime(2026, 11, 23, 10, 3, 44), 12.97, 77.59, 30, 90, 9))
    _, (_, location) = await listener.recorder.wait_for(2)
    assert location["time"] == "2026-11-23T02:03:44Z"


async def test_bad_crc_is_counted_and_only_accepted_when_configured(start: Start) -> None:
    position = bytearray(build_location(2, datetime(2026, 11, 23, 10, 3, 44), 12.97, 77.59, 30, 90, 9))
    position[-3] ^= 0xFF  # a model that miscomputes the CRC
    strict = await start()
    tracker = await strict.connect()
    await tracker.login()
    await tracker.send(bytes(position))
    await strict.counted("bad_crc")
    assert strict.counters.messages == 1  # the login only
    lenient = await start(Limits(accept_bad_crc=True, max_frames_per_second=1e5, frame_burst=10**5))
    tracker = await lenient.connect()
    await tracker.login()
    await tracker.send(bytes(position))
    _, (_, location) = await lenient.recorder.wait_for(2)
    assert location["latitude"] == 12.97
    assert lenient.counters.bad_crc_accepted == 1 and lenient.counters.bad_crc == 0
    broken_stop = bytes(position[:-1]) + b"\x00"
    await tracker.send(broken_stop + build_login(IMEI, 9))  # stop bytes are still checked
    assert await tracker.receive(10) == ack(0x01, 9)
    assert lenient.counters.bad_stop == 1


async def test_address_and_time_requests_are_answered_and_not_forwarded(start: Start) -> None:
    listener = await start()
    tracker = await listener.connect()
    await tracker.login()
    raw = h("78782E2A0F0C1D071139CA027AC8000C4658000014D83132353230313335333231373730373900000000000001002A6ECE0D0A")
    await tracker.send(raw)
    reply = await tracker.receive(2 + 2 + 1 + 1 + 4 + 11 + 2 + 2 + 2)
    assert reply[:5] == h("7979001597") and b"NA&&NA&&0##" in reply  # LEN 0x15: 1 + 16 + 2 + 2
    await asyncio.sleep(0)
    assert listener.counters.address_requests == 1 and listener.counters.messages == 1  # the login only


def test_the_configuration_example_for_bad_crc_models_loads() -> None:
    import tomllib
    from pathlib import Path

    from gateway.service.config import Gt06

    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", doc, re.S) if "accept_bad_crc = true" in b]
    assert len(blocks) == 1
    cfg = msgspec.convert(tomllib.loads(blocks[0])["ingest"]["gt06"], Gt06)
    assert cfg.accept_bad_crc and cfg.max_connections_per_peer == 10_000
    assert Gt06().accept_bad_crc is False  # strict by default


# --- frames built like a simulated tracker's, decoded back ------------------------------------------

_MAC = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
_CELL = st.tuples(st.integers(1, 0xFFFF), st.integers(0, 0xFFFFFF), st.integers(-255, 0))
_WHEN = st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(lambda d: d.replace(microsecond=0))


@settings(max_examples=150, deadline=None)
@given(_WHEN, st.integers(0, 999), st.integers(0, 999), st.lists(_CELL, max_size=7),
       st.lists(st.tuples(_MAC, st.integers(-255, 0)), max_size=10), st.sampled_from([0x28, 0x2C]))
def test_lbs_reports_round_trip(when, mcc, mnc, cells, wifi, protocol) -> None:  # type: ignore[no-untyped-def]
    raw = build_lbs_report(3, when, mcc, mnc, cells, wifi if protocol == 0x2C else None, protocol)
    [item] = Framer().feed(raw)
    frame = decode_frame(item)
    assert (frame.type, frame.time) == ("location", when.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert (frame.mcc, frame.mnc) == (mcc, mnc)
    assert [(c.lac, c.cell_id, c.rssi) for c in frame.cells or []] == cells
    assert frame.wifi_aps == ([b for b, _ in wifi] or None if protocol == 0x2C else None)
    assert ack_for(frame, item) == wrap(protocol, b"", 3)


@settings(max_examples=150, deadline=None)
@given(_WHEN, st.lists(st.tuples(_MAC, st.integers(-255, 0)), max_size=20), st.integers(0, 999),
       st.integers(0, 255), st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(-255, 0)),
                                     max_size=8), st.integers(0, 40))
def test_counted_wifi_reports_round_trip_in_any_split(when, aps, mcc, mnc, cells, cut) -> None:  # type: ignore[no-untyped-def]
    raw = build_wifi_report(when, aps, mcc, mnc, cells)
    framer = Framer()
    items = framer.feed(raw[:cut]) + framer.feed(raw[cut:] + build_login(IMEI, 4))
    assert len(items) == 2 and isinstance(items[0], CountedFrame), items
    frame = decode_frame(items[0])
    assert frame.time == when.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert frame.wifi_aps == ([b for b, _ in aps] or None)
    assert [(c.lac, c.cell_id, c.rssi) for c in frame.cells or []] == cells
    assert decode_frame(items[1]).imei == IMEI  # the stream goes on after it


def test_4g_lbs_report() -> None:
    raw = build_lbs_report(7, datetime(2026, 11, 23, 10, 3, 44), 404, 45, [(0x01020304, 0x0A0B0C0D0E0F, -70)],
                           protocol=0xA1)
    frame = decode_frame(raw)
    assert frame.cells == [Cell(mcc=404, mnc=45, lac=0x01020304, cell_id=0x0A0B0C0D0E0F, rssi=-70)]


def _gps_block() -> bytes:
    """18 bytes: 2026-11-23 10:03:44, 9 satellites, 12.97 N 77.59 E, 30 km/h, course 90, fix."""
    return build_location(1, datetime(2026, 11, 23, 10, 3, 44), 12.97, 77.59, 30, 90, 9)[4:22]


def test_seeworld_position_with_a_four_byte_cell_id() -> None:
    # LEN 0x2F: cell 0194 05 0470 0A0B0C0D, ACC 01, mode 00, re-upload 00, odometer 0x00001F40,
    # travel time, temperature and humidity (not kept)
    content = _gps_block() + h("0194 05 0470 0A0B0C0D 01 00 00 00001F40 00000010 0100 0200".replace(" ", ""))
    raw = wrap(0x22, content, 3)
    assert raw[2] == 0x2F
    frame = decode_frame(raw)
    assert (frame.mcc, frame.mnc, frame.lac, frame.cell_id) == (404, 5, 0x0470, 0x0A0B0C0D)
    assert (frame.acc, frame.mileage, frame.latitude, frame.longitude) == (True, 8000, 12.97, 77.59)


def test_alarm_cell_length_picks_the_cell_id_width() -> None:
    status = h("0604030102")  # ACC on, charging, levels 4 and 3, SOS, language
    for cell, lac, cid in [
        (h("09 0194 05 0470 0A0B0C".replace(" ", "")), 0x0470, 0x0A0B0C),  # 2G
        (h("0A 0194 05 0470 0A0B0C0D".replace(" ", "")), 0x0470, 0x0A0B0C0D),  # 4-byte CID
        (h("10 0194 05 00000470 000000000A0B0C0D".replace(" ", "")), 0x0470, 0x0A0B0C0D),  # 4G
        (h("08 0194 05 0470 0A0B0C".replace(" ", "")), 0x0470, 0x0A0B0C),  # the length without itself
    ]:
        frame = decode_frame(wrap(0x26, _gps_block() + cell + status, 9))
        assert (frame.lac, frame.cell_id, frame.alarm, frame.voltage_level) == (lac, cid, "sos", 4), cell.hex()

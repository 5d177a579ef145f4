"""GT06 frame builders for simulated trackers: login, location, heartbeat and alarm frames.

The gateway only decodes these (``gateway/ingest/gt06/codec.py``); building them belongs to
the device side. Framing and CRC come from the codec, so a built frame is exactly what the
listener accepts.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from gateway.ingest.gt06.codec import (
    PROTO_ALARM,
    PROTO_ALARM_UTC,
    PROTO_HEARTBEAT,
    PROTO_LOCATION,
    PROTO_LOCATION_UTC,
    PROTO_LOGIN,
    SHORT_START,
    STOP,
    build_frame,
)
from gateway.ingest.gt06.decoders import ACC_ON, CHARGING, FIX, MNC_2_BYTES, NORTH, UNITS_PER_DEGREE, WEST

__all__ = [
    "build_alarm",
    "build_frame",
    "build_heartbeat",
    "build_lbs_report",
    "build_location",
    "build_login",
    "build_wifi_report",
]

_LANGUAGE_ENGLISH = 0x02
_TIMEZONE_UTC = b"\x00\x00"  # login time-zone/language word: GMT+0, east
# The codes a simulated tracker sends for each alarm name (the decoder maps several codes to
# some names; these are the ones the Concox document lists first).
_ALARM_CODES = {
    "normal": 0x00, "sos": 0x01, "power_cut": 0x02, "vibration": 0x03, "enter_fence": 0x04, "exit_fence": 0x05,
    "overspeed": 0x06, "moving": 0x09, "low_battery": 0x0E, "power_off": 0x11, "tamper": 0x13, "door": 0x14,
}  # fmt: skip
_UNNAMED_ALARM = re.compile(r"alarm_0x([0-9a-f]{2})")
_IMEI = re.compile(r"[0-9]{15}")


def build_login(imei: str, serial: int, type_id: int | None = None) -> bytes:
    """Login frame; ``type_id`` selects the newer layout, which adds a time-zone word (UTC)."""
    if not _IMEI.fullmatch(imei):
        raise ValueError("IMEI must be 15 digits")
    content = bytes.fromhex("0" + imei)
    if type_id is not None:
        content += type_id.to_bytes(2, "big") + _TIMEZONE_UTC
    return build_frame(PROTO_LOGIN, content, serial)


def _position_bytes(
    when: datetime,
    lat: float,
    lon: float,
    speed_kmh: int,
    course: int,
    satellites: int,
    valid: bool,
) -> bytes:
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError("coordinates out of range")
    if not (0 <= course <= 360 and 0 <= satellites <= 15):
        raise ValueError("course must be 0-360 and satellites 0-15")
    utc = when.astimezone(UTC) if when.tzinfo else when  # naive datetimes are taken as UTC
    stamp = bytes([utc.year - 2000, utc.month, utc.day, utc.hour, utc.minute, utc.second])
    flags = (
        course | (NORTH if lat >= 0 else 0) | (WEST if lon < 0 else 0) | (FIX if valid else 0)
    )
    return (
        stamp
        + bytes([0xC0 | satellites])  # 12-byte GPS block
        + round(abs(lat) * UNITS_PER_DEGREE).to_bytes(4, "big")
        + round(abs(lon) * UNITS_PER_DEGREE).to_bytes(4, "big")
        + bytes([speed_kmh])
        + flags.to_bytes(2, "big")
    )


def _cell_bytes(mcc: int, mnc: int, lac: int, cell_id: int) -> bytes:
    wide = mnc > 0xFF
    return (
        (mcc | (MNC_2_BYTES if wide else 0)).to_bytes(2, "big")
        + mnc.to_bytes(2 if wide else 1, "big")
        + lac.to_bytes(2, "big")
        + cell_id.to_bytes(3, "big")
    )


def _terminal_info(acc: bool, charging: bool) -> int:
    return (ACC_ON if acc else 0) | (CHARGING if charging else 0)


def build_location(
    serial: int,
    when: datetime,
    lat: float,
    lon: float,
    speed_kmh: int,
    course: int,
    satellites: int,
    valid: bool = True,
    mcc: int = 404,
    mnc: int = 45,
    lac: int = 4101,
    cell_id: int = 12345,
    protocol: int = PROTO_LOCATION_UTC,
    acc: bool = True,
    mileage: int | None = None,
) -> bytes:
    """Location frame: 0x12 (position + cell) or 0x22 (adds ACC, upload mode, optional mileage)."""
    if protocol not in (PROTO_LOCATION, PROTO_LOCATION_UTC):
        raise ValueError("location protocol must be 0x12 or 0x22")
    content = _position_bytes(when, lat, lon, speed_kmh, course, satellites, valid)
    content += _cell_bytes(mcc, mnc, lac, cell_id)
    if protocol == PROTO_LOCATION_UTC:
        content += bytes([int(acc), 0x00, 0x00])  # upload by time interval, real-time
        if mileage is not None:
            content += mileage.to_bytes(4, "big")
    elif mileage is not None:
        raise ValueError("mileage needs protocol 0x22")
    return build_frame(protocol, content, serial)


def build_heartbeat(
    serial: int,
    acc: bool = True,
    charging: bool = False,
    voltage_level: int = 4,
    gsm_signal: int = 3,
) -> bytes:
    """Heartbeat/status frame (0x13) with a normal alarm byte."""
    content = bytes(
        [_terminal_info(acc, charging), voltage_level, gsm_signal, 0x00, _LANGUAGE_ENGLISH]
    )
    return build_frame(PROTO_HEARTBEAT, content, serial)


def _alarm_code(alarm: str) -> int:
    if alarm in _ALARM_CODES:
        return _ALARM_CODES[alarm]
    unnamed = _UNNAMED_ALARM.fullmatch(alarm)
    if unnamed is None:
        raise ValueError(f"unknown alarm {alarm!r}")
    return int(unnamed.group(1), 16)


def build_alarm(
    serial: int,
    when: datetime,
    lat: float,
    lon: float,
    alarm: str,
    speed_kmh: int = 0,
    course: int = 0,
    satellites: int = 8,
    valid: bool = True,
    mcc: int = 404,
    mnc: int = 45,
    lac: int = 4101,
    cell_id: int = 12345,
    acc: bool = True,
    charging: bool = False,
    voltage_level: int = 4,
    gsm_signal: int = 3,
    protocol: int = PROTO_ALARM_UTC,
) -> bytes:
    """Alarm frame (0x16 or 0x26); ``alarm`` is a name as decoded, including "alarm_0xNN"."""
    if protocol not in (PROTO_ALARM, PROTO_ALARM_UTC):
        raise ValueError("alarm protocol must be 0x16 or 0x26")
    cell = _cell_bytes(mcc, mnc, lac, cell_id)
    content = (
        _position_bytes(when, lat, lon, speed_kmh, course, satellites, valid)
        + bytes([1 + len(cell)])  # the length byte counts itself
        + cell
        + bytes([_terminal_info(acc, charging), voltage_level, gsm_signal])
        + bytes([_alarm_code(alarm), _LANGUAGE_ENGLISH])
    )
    return build_frame(protocol, content, serial)


def _stamp(when: datetime) -> bytes:
    utc = when.astimezone(UTC) if when.tzinfo else when
    return bytes([utc.year - 2000, utc.month, utc.day, utc.hour, utc.minute, utc.second])


def _bssid_bytes(bssid: str) -> bytes:
    return bytes.fromhex(bssid.replace(":", ""))


def build_lbs_report(
    serial: int,
    when: datetime,
    mcc: int,
    mnc: int,
    cells: list[tuple[int, int, int]],
    wifi: list[tuple[str, int]] | None = None,
    protocol: int = 0x28,
) -> bytes:
    """LBS report without GPS: 0x28 (7 cells), 0x2C (7 cells + access points) or 0xA1 (4G cells).

    ``cells`` are (lac, cell_id, rssi dBm) with a LAC > 0, at most 7 (the rest of the 7 slots are
    sent empty, as devices do); ``wifi`` (0x2C only) are (BSSID, rssi dBm).
    """
    if protocol not in (0x28, 0x2C, 0xA1) or len(cells) > 7 or (wifi and protocol != 0x2C):
        raise ValueError("protocol 0x28, 0x2C or 0xA1 with at most 7 cells; access points only in 0x2C")
    lac_bytes, cid_bytes = (4, 8) if protocol == 0xA1 else (2, 3)
    wide = mnc > 0xFF
    content = _stamp(when) + (mcc | (MNC_2_BYTES if wide else 0)).to_bytes(2, "big")
    content += mnc.to_bytes(2 if wide else 1, "big")
    for lac, cid, rssi in [*cells, *[(0, 0, 0)] * (7 - len(cells))]:
        content += lac.to_bytes(lac_bytes, "big") + cid.to_bytes(cid_bytes, "big") + bytes([-rssi])
    content += b"\xff"  # timing advance
    if protocol == 0x2C:
        aps = wifi or []
        content += bytes([len(aps)]) + b"".join(_bssid_bytes(b) + bytes([-rssi]) for b, rssi in aps)
    return build_frame(protocol, content, serial)


def build_wifi_report(
    when: datetime, aps: list[tuple[str, int]], mcc: int, mnc: int, cells: list[tuple[int, int, int]],
    protocol: int = 0x69,
) -> bytes:
    """Counted Wi-Fi report (0x69 / 0x17): LEN is the access-point count, BCD UTC time, no serial or CRC."""
    utc = when.astimezone(UTC) if when.tzinfo else when
    digits = f"{utc.year - 2000:02d}{utc.month:02d}{utc.day:02d}{utc.hour:02d}{utc.minute:02d}{utc.second:02d}"
    content = bytes.fromhex(digits)
    content += b"".join(_bssid_bytes(b) + bytes([-rssi]) for b, rssi in aps)
    content += bytes([len(cells)]) + mcc.to_bytes(2, "big") + bytes([mnc])
    content += b"".join(lac.to_bytes(2, "big") + cid.to_bytes(2, "big") + bytes([-rssi]) for lac, cid, rssi in cells)
    return SHORT_START + bytes([len(aps), protocol]) + content + STOP

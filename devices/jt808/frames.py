"""What a JT/T 808 terminal sends: registration, authentication, heartbeat, positions (single and batch).

Builders for tests and the simulator; the framing itself (escaping, checksum, headers) is the
product's ``gateway.ingest.jt808.codec.frame``.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

from gateway.ingest.jt808 import codec

__all__ = ["ALARM_BITS", "authentication", "batch", "heartbeat", "location_body", "logout", "position", "registration"]

ALARM_BITS = {name: bit for bit, name in codec.ALARM_BITS.items()}


def _bcd_time(when: datetime) -> bytes:
    local = when.astimezone(UTC) + timedelta(hours=8)  # terminals send GMT+8
    return bytes.fromhex(local.strftime("%y%m%d%H%M%S"))


def location_body(
    when: datetime, latitude: float, longitude: float, *, speed_kmh: float = 0, course: int = 0, altitude: int = 0,
    valid: bool = True, acc: bool = True, alarms: tuple[str, ...] = (), satellites: int | None = 9,
    mileage_km: float | None = None, cells: tuple[tuple[int, int, int, int], ...] = (),
    wifi: tuple[str, ...] = (), signal: int | None = None,
) -> bytes:
    """A 0x0200 body: basic information and the additional items given."""
    alarm = 0
    for name in alarms:
        alarm |= 1 << ALARM_BITS[name]
    status = (1 if acc else 0) | (2 if valid else 0) | (4 if latitude < 0 else 0) | (8 if longitude < 0 else 0)
    body = struct.pack(">IIIIHHH", alarm, status, round(abs(latitude) * 1e6), round(abs(longitude) * 1e6),
                       altitude & 0xFFFF, round(speed_kmh * 10), course) + _bcd_time(when)
    if mileage_km is not None:
        body += bytes([0x01, 4]) + round(mileage_km * 10).to_bytes(4, "big")
    if signal is not None:
        body += bytes([0x30, 1, signal])
    if satellites is not None:
        body += bytes([0x31, 1, satellites])
    if cells:
        items = b"".join(struct.pack(">HBHIB", mcc, mnc, lac, cid, 20) for mcc, mnc, lac, cid in cells)
        body += bytes([0x5D, 1 + len(items), len(cells)]) + items
    if wifi:
        items = b"".join(bytes.fromhex(mac.replace(":", "")) + bytes([60]) for mac in wifi)
        body += bytes([0x54, 1 + len(items), len(wifi)]) + items
    return body


def registration(terminal: str, serial: int, version: int | None = None) -> bytes:
    body = struct.pack(">HH", 44, 300) + b"JIMI\x00" + b"JM-VL03".ljust(20, b"\x00") + b"A1B2C3D" + b"\x00"
    return codec.frame(codec.REGISTRATION, terminal, serial, body, version)


def authentication(terminal: str, serial: int, code: str, version: int | None = None) -> bytes:
    body = bytes([len(code)]) + code.encode() + b"358756091234567" + b"1.0".ljust(20, b"\x00") \
        if version is not None else code.encode()
    return codec.frame(codec.AUTHENTICATION, terminal, serial, body, version)


def heartbeat(terminal: str, serial: int, version: int | None = None) -> bytes:
    return codec.frame(codec.HEARTBEAT, terminal, serial, b"", version)


def logout(terminal: str, serial: int, version: int | None = None) -> bytes:
    return codec.frame(codec.LOGOUT, terminal, serial, b"", version)


def position(terminal: str, serial: int, body: bytes, version: int | None = None) -> bytes:
    return codec.frame(codec.LOCATION, terminal, serial, body, version)


def batch(terminal: str, serial: int, bodies: list[bytes], blind: bool = True, version: int | None = None) -> bytes:
    """0x0704: positions stored while offline (``blind``) or a normal bulk report."""
    items = b"".join(struct.pack(">H", len(b)) + b for b in bodies)
    return codec.frame(codec.BATCH_LOCATION, terminal, serial, struct.pack(">HB", len(bodies), blind) + items, version)

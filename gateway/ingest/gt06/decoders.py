"""GT06 message layouts: the content of each protocol number, decoded to ``Frame`` fields.

The GT06 family is one framing with many content layouts, one per protocol number and device
generation (Concox GT06N/GT800, Jimi JM-VL0x and 4G models, GK310, JC100/JC400, AZ735, X1,
Wanway S20, SL4X). Layouts come from the Concox protocol documents and from what Traccar's
decoder accepts from devices in the field; ``tests/test_gt06_family.py`` holds published captures.

Times: GT06 devices send their local time. The login's time-zone word (when present) gives the
offset, and every local time after it is converted to UTC; Wi-Fi reports (BCD) and the modular
0x70 report (Unix time) are UTC already. Coordinates are minutes * 30000, hemisphere in flags.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.ingest.gt06.frame import Cell, FrameError

__all__ = ["ALARM_PROTOCOLS", "NO_ACK", "Content", "decode_content", "timezone_offset"]

UNITS_PER_DEGREE = 1_800_000
COURSE_MASK = 0x03FF
NORTH = 1 << 10
WEST = 1 << 11
FIX = 1 << 12
ACC_KNOWN = 1 << 14
ACC_FLAG = 1 << 15
MNC_2_BYTES = 0x8000
ACC_ON = 0x02
CHARGING = 0x04

Fields = dict[str, Any]

# Alarm byte of status blocks (0x13, 0x16, 0x26, 0x27, 0x19, 0xA4, ...).
STATUS_ALARMS = {
    0x00: "normal", 0x01: "sos", 0x02: "power_cut", 0x03: "vibration", 0x04: "enter_fence", 0x05: "exit_fence",
    0x06: "overspeed", 0x09: "moving", 0x0C: "tamper", 0x0E: "low_battery", 0x0F: "low_battery",
    0x11: "power_off", 0x13: "tamper", 0x14: "door", 0x18: "removing", 0x19: "low_battery", 0x1A: "braking",
    0x1B: "cornering", 0x23: "fall_down", 0x25: "tamper", 0x28: "braking", 0x29: "acceleration",
    0x2A: "cornering", 0x2B: "cornering", 0x2C: "accident", 0x2E: "cornering", 0x30: "jamming",
}  # fmt: skip
# Bits 3-5 of the terminal-info byte, for devices that signal the alarm there.
INFO_ALARMS = {1: "vibration", 2: "power_cut", 3: "low_battery", 4: "sos", 6: "geofence", 7: "removing"}
# 0x95 (JC100 / JC400 dashcams).
EVENT_ALARMS = {
    0x0E: "low_power", 0x76: "temperature", 0x80: "vibration", 0x87: "overspeed", 0x88: "power_cut",
    0x90: "acceleration", 0x91: "braking", 0x92: "cornering", 0x93: "accident",
}  # fmt: skip
MODULAR_ALARMS = {0x11: "low_battery", 0x12: "low_power", 0x13: "power_cut", 0x14: "removing"}
AZ735_ALARMS = {0xA2: "low_battery", 0xA3: "low_battery", 0xA4: "general", 0xA5: "door"}

# Frames the device sends without waiting for an answer (Concox: positions need none); the
# rest get the standard reply (protocol and serial echoed) once the message is safe.
NO_ACK = frozenset({
    0x10, 0x11, 0x12, 0x22, 0x37, 0x2D, 0x31, 0xA0, 0x1A, 0x1E, 0x34, 0x94, 0x21, 0x9B, 0x8C, 0xF3,
})  # fmt: skip
# Protocols whose record is an alarm (even a "normal" one: the frame is the alarm report).
ALARM_PROTOCOLS = frozenset({0x16, 0x26, 0x27, 0x32, 0x19, 0xA3, 0xA4, 0xA5, 0x95})


class Content:
    """Walks a frame's content; running out means the content is too short for its protocol."""

    def __init__(self, data: bytes, protocol: int, length: int, extended: bool, offset_min: int) -> None:
        self.data = data
        self.pos = 0
        self.protocol = protocol
        self.length = length  # the frame's LEN field
        self.extended = extended
        self.offset = timedelta(minutes=offset_min)

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if size < 0 or end > len(self.data):
            raise self.error("content too short")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def sint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big", signed=True)

    def skip(self, size: int) -> None:
        self.take(min(size, self.remaining))

    def error(self, what: str) -> FrameError:
        return FrameError("bad_content", f"protocol 0x{self.protocol:02X}: {what}")


# --- blocks ----------------------------------------------------------------------------------


def _iso(r: Content, parts: tuple[int, ...] | bytes, local: bool = True) -> str:
    year, month, day, hour, minute, second = parts
    try:
        when = datetime(2000 + year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise r.error("impossible date-time") from None
    if local:
        when -= r.offset
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(r: Content, local: bool = True) -> str:
    return _iso(r, r.take(6), local)


def _bcd_time(r: Content) -> str:
    """Six BCD bytes (YY MM DD hh mm ss, UTC), read digit by digit as devices write them."""
    return _iso(r, tuple((b >> 4) * 10 + (b & 0x0F) for b in r.take(6)), local=False)


def _signed(degrees: float, negative: bool) -> float:
    return round(-degrees if negative and degrees else degrees, 6)


def _coordinates(r: Content, fields: Fields, speed_bytes: int = 1) -> None:
    latitude = r.uint(4) / UNITS_PER_DEGREE
    longitude = r.uint(4) / UNITS_PER_DEGREE
    if speed_bytes:
        fields["speed_kmh"] = r.uint(speed_bytes)
    flags = r.uint(2)
    if latitude > 90 or longitude > 180:
        raise r.error("coordinates out of range")
    if flags & COURSE_MASK > 360:
        raise r.error("course out of range")
    fields["latitude"] = _signed(latitude, negative=not flags & NORTH)
    fields["longitude"] = _signed(longitude, negative=bool(flags & WEST))
    fields["course"] = flags & COURSE_MASK
    fields["valid"] = bool(flags & FIX)
    if flags & ACC_KNOWN:
        fields["acc"] = bool(flags & ACC_FLAG)


def _gps(r: Content, satellites: bool = True, speed_bytes: int = 1) -> Fields:
    """Date-time, satellites (low nibble; the high one is the block length), position, flags."""
    fields: Fields = {"time": _time(r)}
    if satellites:
        fields["satellites"] = r.uint(1) & 0x0F
    _coordinates(r, fields, speed_bytes)
    return fields


def _cell(r: Content, lac_bytes: int = 2, cid_bytes: int = 3, wide_mnc: bool = False) -> Fields:
    mcc = r.uint(2)
    mnc = r.uint(2 if mcc & MNC_2_BYTES or wide_mnc else 1)
    return {"mcc": mcc & ~MNC_2_BYTES, "mnc": mnc, "lac": r.uint(lac_bytes), "cell_id": r.uint(cid_bytes)}


def _sized_cell(r: Content) -> Fields:
    """A cell behind a length byte (alarm layouts). The length picks 2G (LAC 2, CID 3), a 4-byte
    CID (SeeWorld) or 4G (LAC 4, CID 8) cells; it only ever skips surplus bytes (the Concox document counts the
    length byte itself, its own 0x26 example does not), and 0 means no cell."""
    declared = r.uint(1)
    if not declared:
        _skip_zeroed_cell(r)
        return {}
    start = r.pos
    mcc = int.from_bytes(r.data[r.pos : r.pos + 2], "big")
    rest = declared - 1 - 2 - (2 if mcc & MNC_2_BYTES else 1)  # bytes for LAC and CID
    lac_bytes, cid_bytes = (4, 8) if rest >= 12 else (2, 4) if rest == 6 else (2, 3)
    cell = _cell(r, lac_bytes, cid_bytes)
    r.skip(max(0, declared - 1 - (r.pos - start)))
    return cell


def _skip_zeroed_cell(r: Content) -> None:
    """A zero cell length followed by a zero-filled 45-byte cell area (devices without service)."""
    if r.remaining >= 45 and not any(r.data[r.pos + 9 : r.pos + 45]):
        r.skip(45)


def _status(r: Content) -> Fields:
    """Terminal info, voltage level, GSM level and the alarm byte.

    The levels are not range-checked: device captures send values such as 0x55 and 0x1B where
    the document allows 0-6 and 0-4.
    """
    info = r.uint(1)
    fields: Fields = {
        "acc": bool(info & ACC_ON),
        "charging": bool(info & CHARGING),
        "voltage_level": r.uint(1),
        "gsm_signal": r.uint(1),
    }
    code = r.uint(1)
    if code:
        fields["alarm"] = STATUS_ALARMS.get(code, "other")
    else:
        fields["alarm"] = INFO_ALARMS.get((info >> 3) & 0x07, "normal")
    return fields


def _trailer(r: Content, fields: Fields) -> None:
    """ACC, upload mode and re-upload flag, then a mileage, as 0x12/0x22 variants append them."""
    if r.remaining in (3, 7) or (r.protocol in (0x22, 0x37, 0x2D, 0x31, 0xA0) and r.remaining >= 3):
        fields["acc"] = r.uint(1) != 0
        fields["upload_mode"] = r.uint(1)
        fields["reupload"] = r.uint(1) != 0
    if r.remaining == 4:
        fields["mileage"] = r.uint(4)


# --- layouts -----------------------------------------------------------------------------------


def timezone_offset(word: int) -> int | None:
    """Minutes east of UTC from the login's time-zone word (12 bits of hhmm * 100, bit 3 = west)."""
    hours, minutes = divmod(word >> 4, 100)
    if hours > 14 or minutes >= 60:
        return None
    offset = hours * 60 + minutes
    return -offset if word & 0x08 else offset


def _login(r: Content) -> Fields:
    digits = r.take(8).hex()
    if not digits.isdigit() or digits[0] != "0":
        raise r.error("terminal id is not a 15-digit BCD IMEI")
    fields: Fields = {"imei": digits[1:]}
    if r.remaining >= 2:  # newer devices: type id, then a time-zone/language word
        fields["type_id"] = r.uint(2)
    if r.remaining >= 2:
        offset = timezone_offset(r.uint(2))
        if offset is not None:
            sign = "-" if offset < 0 else "+"
            fields["timezone"] = f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    return fields


def _position(r: Content) -> Fields:
    """GPS and serving cell: 0x12, 0x22, 0x2D, 0x31, 0x37, 0xA0 (4G cell), 0x11 (wide cell id), 0x10."""
    fields = _gps(r)
    proto = r.protocol
    if proto == 0x10:
        return fields
    if proto == 0xA0:
        fields |= _cell(r, 4, 8)
    elif proto == 0x22 and r.length == _SEEWORLD_LENGTH:  # CID 4 bytes, then a fixed trailer
        fields |= _cell(r, 2, 4)
        fields["acc"] = r.uint(1) != 0
        fields["upload_mode"] = r.uint(1)
        fields["reupload"] = r.uint(1) != 0
        fields["mileage"] = r.uint(4)
        return fields
    elif proto == 0x11:
        fields |= _cell(r, 2, 4, wide_mnc=True)
    elif r.remaining:  # a GPS-only variant ends here; otherwise the cell is all there
        fields |= _cell(r)
    if proto == 0x12 and r.length in _STATUS_VARIANTS and r.remaining >= 5:
        info = r.uint(1)  # VXT01 (LEN 0x24) and S5 (LEN 0x2B) append a status block
        fields |= {"acc": bool(info & ACC_ON), "charging": bool(info & CHARGING)}
        fields["power_v"] = round(r.uint(2) * 0.01, 2)
        fields["gsm_signal"] = r.uint(1)
        return fields  # then an alarm extension and, on the S5, fuel, temperature, odometer
    _trailer(r, fields)
    if proto == 0x37 and r.remaining >= 3:  # one extension module: type, length, value
        module, size = r.uint(2), r.uint(1)
        if module == 0x0027 and size >= 2:
            fields["power_v"] = round(r.uint(2) * 0.01, 2)
        elif module == 0x002E and size >= 4:
            fields["mileage"] = r.uint(4)
        else:
            r.skip(size)
    return fields


_STATUS_VARIANTS = (0x24, 0x2B)
_SEEWORLD_LENGTH = 0x2F


def _gps_only(r: Content) -> Fields:
    """0x1A (position with a phone number) and 0x1E (with extra cells): the position only."""
    return _gps(r)


def _status_position(r: Content) -> Fields:
    """GPS, cell behind a length byte, status and alarm: 0x16, 0x26, 0x27, 0x32, 0xA3, 0xA4."""
    fields = _gps(r) | _sized_cell(r) | _status(r)
    r.skip(1)  # language
    if r.remaining == 4:
        fields["mileage"] = r.uint(4)
    return fields


def _lbs_status(r: Content) -> Fields:
    """Serving cell and status without GPS: 0x19 (2G), 0xA5 (4G cell)."""
    wide = r.protocol == 0xA5
    return _cell(r, 4 if wide else 2, 8 if wide else 3) | _status(r)


def _fence_alarm(r: Content) -> Fields:
    """0xA3 (GK310 / JM-LL301 single fence): GPS, the fence number, a 4G cell, status."""
    fields = _gps(r)
    r.skip(1)
    return fields | _cell(r, 4, 8) | _status(r)


def _status_only(r: Content) -> Fields:
    """0x13: terminal info, voltage, GSM, alarm, language; a 16-byte variant carries a battery %."""
    if r.remaining == 16:
        r.take(1 + 2 + 1 + 1)  # information content, satellites, alarm, language
        return {"battery_level": r.uint(1)}
    return _status(r)


def _heartbeat_23(r: Content) -> Fields:
    """GK310 heartbeat: terminal info, battery voltage (0.01 V), GSM level."""
    info = r.uint(1)
    fields: Fields = {"acc": bool(info & ACC_ON), "charging": bool(info & CHARGING)}
    if r.remaining >= 2:
        fields["battery_v"] = round(r.uint(2) * 0.01, 2)
    if r.remaining >= 1:
        fields["gsm_signal"] = r.uint(1)
    return fields


def _status_36(r: Content) -> Fields:
    """Jimi 4G status: the status block, language, then type-length-value modules."""
    fields = _status(r)
    r.skip(1)
    while r.remaining >= 3:
        module, size = r.uint(2), r.uint(1)
        value = r.take(min(size, r.remaining))
        if module == 0x0018 and len(value) >= 2:
            fields["battery_v"] = round(int.from_bytes(value[:2], "big") / 100, 2)
        elif module == 0x006A and value:
            fields["battery_level"] = value[0]
    return fields


def _info(r: Content) -> Fields:
    """0x94 information packets: external voltage, door, ICCID/IMSI, network; others carry nothing kept."""
    if not r.extended:
        return {"power_v": round(r.sint(2) * 0.01, 2)}
    sub = r.uint(1)
    if sub == 0x00:
        return {"power_v": round(r.uint(2) * 0.01, 2)}
    if sub == 0x05:
        if r.remaining >= 7:
            r.take(6)  # the time the door changed
        return {"door": bool(r.uint(1) & 0x01)}
    if sub == 0x0A:
        r.take(8)  # the IMEI again
        imsi = r.take(8).hex().lstrip("0") or None
        iccid = r.take(10).hex().replace("f", "") or None
        return {"imsi": imsi, "iccid": iccid}
    if sub == 0x0B:
        return {"network": "4G" if r.uint(1) else "2G"}
    return {}  # fuel sensor, status text, driver card, ...: nothing the record carries


def _lbs_multi(r: Content) -> Fields:
    """LBS (and Wi-Fi) reports: up to 7 cells, then access points; no GPS.

    0x28/0x2E/0x24/0x18/0x2C (2G cells), 0xA1/0xA2 (4G cells: LAC 4, CID 8), 0x33/0x34 (CID 4).
    """
    proto = r.protocol
    wanway = proto == 0x24 and r.length == 0x31  # Wanway S20: TA first and a cell count
    sl4x = proto == 0x34  # the listener routes 0x34 here only with SL4X's length
    fields: Fields = {"time": _time(r)}
    if wanway or sl4x:
        r.skip(1)  # timing advance
    mcc = r.uint(2)
    mnc = r.uint(2 if mcc & MNC_2_BYTES or sl4x else 1)
    mcc &= ~MNC_2_BYTES
    count = r.uint(1) if wanway else 6 if proto == 0x33 else 7
    lac_bytes, cid_bytes = (4, 8) if proto in (0xA1, 0xA2) else (2, 4) if proto in (0x33, 0x34) else (2, 3)
    cells = []
    for _ in range(count):
        lac, cid, rssi = r.uint(lac_bytes), r.uint(cid_bytes), r.uint(1)
        if lac:
            cells.append(Cell(mcc=mcc, mnc=mnc, lac=lac, cell_id=cid, rssi=-rssi))
    if not (wanway or sl4x):
        r.skip(1)  # timing advance
    fields["mcc"], fields["mnc"] = mcc, mnc
    if cells:
        fields["cells"] = cells
    if proto not in (0x28, 0x2E, 0x24, 0xA1, 0x34) and r.remaining >= 1:
        aps = [_bssid(r) for _ in range(r.uint(1)) if r.remaining >= 7]
        if aps:
            fields["wifi_aps"] = aps
    return fields


def _bssid(r: Content, rssi: bool = True) -> str:
    mac = r.take(6)
    if rssi:
        r.skip(1)
    return ":".join(f"{b:02x}" for b in mac)


def _wifi_counted(r: Content) -> Fields:
    """0x17 / 0x69: BCD time, LEN access points (BSSID + RSSI), then a cell count and cells."""
    fields: Fields = {"time": _bcd_time(r)}
    aps = [_bssid(r) for _ in range(r.length)]
    if aps:
        fields["wifi_aps"] = aps
    count, mcc, mnc = r.uint(1), r.uint(2), r.uint(1)
    cells = [Cell(mcc=mcc, mnc=mnc, lac=r.uint(2), cell_id=r.uint(2), rssi=-r.uint(1)) for _ in range(count)]
    fields["mcc"], fields["mnc"] = mcc, mnc
    if cells:
        fields["cells"] = cells
    return fields


def _wifi_f3(r: Content) -> Fields:
    """0xF3: time, a count, then access points (two reserved bytes and a BSSID each)."""
    fields: Fields = {"time": _bcd_time(r)}
    aps = []
    for _ in range(r.uint(1)):
        r.take(2)
        aps.append(_bssid(r, rssi=False))
    if aps:
        fields["wifi_aps"] = aps
    return fields


def _alarm_95(r: Content) -> Fields:
    """JC100/JC400 alarms: a position (no satellites or speed) or just a time, then the event."""
    extended = r.length - 5 > 7
    jc400 = extended and r.data[:2] == b"\xff\xff"
    if jc400:
        r.take(3)  # marker, version
    fields: Fields = {"time": _time(r)}
    if extended:
        if jc400:
            fields["satellites"] = r.uint(1) & 0x0F
        _coordinates(r, fields, speed_bytes=2 if jc400 else 0)
        if jc400:
            fields["power_v"] = round(r.uint(2) * 0.1, 1)
    event = r.uint(1)
    if event == 0x01:
        fields["alarm"] = "sos" if extended else "general"
    else:
        fields["alarm"] = EVENT_ALARMS.get(event, "general")
    return fields  # what follows (dashcam file names, which embed the IMEI) is not kept


def _string_15(r: Content) -> Fields:
    """A command's answer: only an ICCID answer is kept; free text is not forwarded."""
    size = r.uint(1)
    if size > 4:
        r.take(4)  # server flag
        text = r.take(min(size - 4, r.remaining)).decode("ascii", "replace")
        if text.startswith("<ICCID:"):
            return {"iccid": text[7:27]}
    return {}


_CURRENT_POSITION = re.compile(
    r"Current position!Lat:([NS])(\d+\.\d+),Lon:([EW])(\d+\.\d+),Course:(\d+\.\d+),Speed:(\d+\.\d+),"
    r"DateTime:(\d{4})-(\d\d)-(\d\d) +(\d\d):(\d\d):(\d\d)"
)


def _string_21(r: Content) -> Fields:
    """0x21 text: a "Current position!" answer is a position; any other text is not forwarded."""
    r.take(4)  # server flag
    encoding = r.uint(1)
    raw = r.take(r.remaining)
    text = raw.decode("ascii" if encoding == 1 else "utf-16-be", "replace")
    match = _CURRENT_POSITION.search(text)
    if not match:
        return {}
    ns, lat, ew, lon, course, speed, *stamp = match.groups()
    year, month, day, hour, minute, second = (int(x) for x in stamp)
    latitude, longitude = float(lat), float(lon)
    if latitude > 90 or longitude > 180:
        raise r.error("coordinates out of range")
    return {
        "time": _iso(r, (year - 2000, month, day, hour, minute, second)),
        "latitude": _signed(latitude, ns == "S"),
        "longitude": _signed(longitude, ew == "W"),
        "course": min(360, round(float(course))),
        "speed_kmh": round(float(speed)),
        "valid": True,
    }


def _x1(r: Content) -> Fields:
    """X1 position: data/alarm word, GPS, terminal info, odometer, cell (CID 4); the driver id is not kept."""
    r.take(4)
    fields = _gps(r)
    r.take(2)
    fields["mileage"] = r.uint(4)
    fields |= {"mcc": r.uint(2), "mnc": r.uint(1), "lac": r.uint(2), "cell_id": r.uint(4)}
    r.take(4)  # driver id
    fields["battery_v"] = round(r.uint(2) * 0.01, 2)
    fields["power_v"] = round(r.uint(2) * 0.01, 2)
    return fields


def _obd(r: Content) -> Fields:
    """OBD report: time and ignition; the key=value text (which includes the VIN) is not kept."""
    fields: Fields = {"time": _time(r)}
    fields["acc"] = r.uint(1) > 0
    return fields


def _modular(r: Content) -> Fields:
    """0x70: type-length-value modules (position, cell, battery, events, ...)."""
    fields: Fields = {}
    while r.remaining >= 4:
        module, size = r.uint(2), r.uint(2)
        body = Content(r.take(min(size, r.remaining)), r.protocol, r.length, r.extended, 0)
        if module == 0x33 and body.remaining >= 18:
            stamp = datetime.fromtimestamp(body.uint(4), UTC)
            fields["time"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
            fields["satellites"] = body.uint(1)
            fields["altitude"] = body.sint(2)
            _coordinates(body, fields)
        elif module == 0x11 and body.remaining >= 10:
            cell = {"mcc": body.uint(2), "mnc": body.uint(2), "lac": body.uint(2), "cell_id": body.uint(3)}
            if cell["cell_id"]:
                fields |= cell
        elif module == 0x18 and body.remaining >= 2:
            fields["battery_v"] = round(body.uint(2) * 0.01, 2)
        elif module == 0x09 and body.remaining >= 1:
            fields.setdefault("satellites", body.uint(1))
        elif module == 0x2B and body.remaining >= 1:
            event = body.uint(1)
            if event in MODULAR_ALARMS:
                fields["alarm"] = MODULAR_ALARMS[event]
        elif module == 0x2E and body.remaining >= 4:
            fields["mileage"] = int.from_bytes(body.take(4), "little")
        elif module == 0x03 and body.remaining >= 10:
            fields["iccid"] = body.take(10).hex()
    return fields


def _az735(r: Content) -> Fields:
    """AZ735 (extended 0x32 / 0x33): GPS behind a length byte, cell behind one, then status."""
    fields: Fields = {"time": _time(r)}
    if r.uint(1):
        fields["satellites"] = r.uint(1) & 0x0F
        _coordinates(r, fields)
    declared = r.uint(1)
    if declared:
        start = r.pos
        fields |= _cell(r)
        r.skip(max(0, declared - 1 - (r.pos - start)))
        fields["gsm_signal"] = r.uint(1)
    else:
        _skip_zeroed_cell(r)
    r.skip(r.uint(1))  # further cells
    r.skip(r.uint(1))  # access points
    status = r.uint(1)
    if r.protocol == 0x33:
        fields["alarm"] = AZ735_ALARMS.get(status, "normal")
    return fields


def _nothing(r: Content) -> Fields:
    return {}


Decoder = Callable[[Content], Fields]

# protocol -> (record kind, decoder); extended-only layouts are in _EXTENDED.
_BASIC: dict[int, tuple[str, Decoder]] = {
    0x01: ("login", _login),
    0x10: ("location", _position), 0x11: ("location", _position), 0x12: ("location", _position),
    0x22: ("location", _position), 0x2D: ("location", _position), 0x31: ("location", _position),
    0x37: ("location", _position), 0xA0: ("location", _position),
    0x1A: ("location", _gps_only), 0x1E: ("location", _gps_only),
    0x16: ("alarm", _status_position), 0x26: ("alarm", _status_position), 0x27: ("alarm", _status_position),
    0x32: ("alarm", _status_position), 0xA3: ("alarm", _fence_alarm), 0xA4: ("alarm", _status_position),
    0x19: ("alarm", _lbs_status), 0xA5: ("alarm", _lbs_status),
    0x95: ("alarm", _alarm_95),
    0x13: ("heartbeat", _status_only), 0x23: ("heartbeat", _heartbeat_23), 0x36: ("heartbeat", _status_36),
    0x94: ("heartbeat", _info), 0x15: ("heartbeat", _string_15), 0x8C: ("heartbeat", _obd),
    0x9B: ("heartbeat", _nothing),
    0x28: ("location", _lbs_multi), 0x2E: ("location", _lbs_multi), 0x24: ("location", _lbs_multi),
    0x18: ("location", _lbs_multi), 0x2C: ("location", _lbs_multi), 0xA1: ("location", _lbs_multi),
    0xA2: ("location", _lbs_multi), 0x33: ("location", _lbs_multi),
    0x17: ("location", _wifi_counted), 0x69: ("location", _wifi_counted), 0xF3: ("location", _wifi_f3),
    0x34: ("location", _x1),
    0x70: ("location", _modular),
    0x8A: ("request", _nothing), 0x2A: ("request", _nothing), 0xA7: ("request", _nothing),
}  # fmt: skip
_EXTENDED: dict[int, tuple[str, Decoder]] = {
    0x21: ("location", _string_21),
    0x32: ("location", _az735), 0x33: ("alarm", _az735),
}  # fmt: skip
SL4X_LBS_LENGTH = 0x37  # 0x34 with this length is an SL4X LBS report, not an X1 position
SPACE10X_LENGTH = 0x17  # 0x19 this long is a Space10X multi-cell report of unpublished layout


def decode_content(r: Content) -> tuple[str, Fields]:
    """The record kind and fields for a frame's content; ("unknown", {}) for other protocols."""
    proto = r.protocol
    if r.extended and proto in _EXTENDED:
        kind, decode = _EXTENDED[proto]
    elif proto == 0x34 and r.length == SL4X_LBS_LENGTH:
        kind, decode = "location", _lbs_multi
    elif proto == 0x19 and r.length >= SPACE10X_LENGTH and not r.extended:
        kind, decode = "unknown", _nothing
    else:
        kind, decode = _BASIC.get(proto, ("unknown", _nothing))
    fields = decode(r)
    if proto == 0x13 and fields.get("alarm", "normal") != "normal":
        kind = "alarm"  # a status report that raises an alarm is forwarded as the alarm
    elif kind == "heartbeat":
        fields.pop("alarm", None)
    if proto == 0x70 and "alarm" in fields:
        kind = "alarm"
    if kind == "location" and "latitude" not in fields and "time" not in fields and proto in (0x21, 0x70):
        kind = "heartbeat"  # a text answer or a modular report without a position
    return kind, {k: v for k, v in fields.items() if v is not None}

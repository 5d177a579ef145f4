"""What a decoded GT06 frame is: ``Frame`` (the fields any message type can carry) and ``FrameError``."""

from __future__ import annotations

import msgspec

from gateway.ingest.tracksolid import Cell

__all__ = ["ALARM_KINDS", "Cell", "Frame", "FrameError"]

# The fixed list of alarm kinds a frame can carry. Device codes map onto these (decoders.py);
# a code no table names becomes "other", never a name built from the input.
ALARM_KINDS = (
    "normal", "sos", "power_cut", "vibration", "enter_fence", "exit_fence", "geofence", "overspeed", "moving",
    "low_battery", "low_power", "power_off", "tamper", "removing", "door", "acceleration", "braking", "cornering",
    "accident", "fall_down", "jamming", "temperature", "general", "other",
)  # fmt: skip


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
    """One decoded device frame; fields a protocol does not carry stay None.

    ``type`` is the kind of Tracksolid record the frame becomes (login, location, heartbeat,
    alarm), "request" for a question the server answers without forwarding anything (time,
    address), or "unknown" for a protocol number no decoder handles. ``ack`` is the reply the
    device expects, written once the message is safe.
    """

    type: str
    protocol: int
    serial: int
    imei: str | None = None
    type_id: int | None = None
    timezone: str | None = None  # login: the device's UTC offset, "+08:00"; later times are converted
    time: str | None = None  # ISO 8601 UTC
    latitude: float | None = None
    longitude: float | None = None
    altitude: int | None = None  # metres
    speed_kmh: int | None = None
    course: int | None = None
    valid: bool | None = None
    satellites: int | None = None
    mcc: int | None = None  # serving cell
    mnc: int | None = None
    lac: int | None = None
    cell_id: int | None = None
    cells: list[Cell] | None = None  # every cell an LBS / Wi-Fi report lists
    wifi_aps: list[str] | None = None  # BSSIDs, "aa:bb:cc:dd:ee:ff"
    acc: bool | None = None
    voltage_level: int | None = None
    gsm_signal: int | None = None
    charging: bool | None = None
    battery_v: float | None = None
    battery_level: int | None = None  # percent
    power_v: float | None = None  # external supply
    door: bool | None = None
    network: str | None = None  # "2G" | "4G"
    iccid: str | None = None
    imsi: str | None = None
    alarm: str | None = None  # one of ALARM_KINDS
    mileage: int | None = None
    upload_mode: int | None = None
    reupload: bool | None = None

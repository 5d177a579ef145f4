"""Tracksolid message types: the normalised tracker record on ``tracksolid/{imei}/{kind}``.

GT06 frames (``gateway/ingest/gt06``) and MQTT trackers both end up as one of these Structs, so the
``rules/jimi-tracksolid.toml`` pack sees one shape whatever the transport. Field names are the
pack's paths; a field the device did not send stays ``None`` and is omitted on encode (the pack
would remove an unnamed field anyway, but a missing one must not appear as ``null``).

The ``type`` field is the msgspec tag: ``encode(Location(...))`` writes ``"type": "location"``
and ``decode`` picks the Struct from it.

Public names: ``Location``, ``Heartbeat``, ``Alarm``, ``Login``, ``Media``, ``Message`` (their
union), ``BY_KIND`` (topic kind -> Struct), ``KINDS``, ``encode``, ``decode``, and the topic layout
``PATTERN`` / ``SUBSCRIBE`` / ``topic``.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = [
    "BY_KIND",
    "KINDS",
    "PATTERN",
    "SUBSCRIBE",
    "Alarm",
    "Cell",
    "Heartbeat",
    "Location",
    "Login",
    "Media",
    "Message",
    "decode",
    "encode",
    "topic",
]


class _Base(msgspec.Struct, omit_defaults=True, frozen=True, kw_only=True, tag_field="type"):
    imei: str  # 15 digits, Luhn check digit last
    time: str | None = None  # ISO 8601 UTC, e.g. "2026-11-23T10:03:44Z"


class Cell(msgspec.Struct, omit_defaults=True, frozen=True, kw_only=True):
    """A cell tower the device sees (LBS reports list up to seven). With a public cell database
    it locates the device to tens or hundreds of metres: the pack keeps MCC/MNC only."""

    mcc: int
    mnc: int
    lac: int
    cell_id: int
    rssi: int | None = None  # dBm


class Media(msgspec.Struct, omit_defaults=True, frozen=True, kw_only=True):
    """A picture, recording or video the device uploaded with an alarm (Tracksolid 1.5)."""

    type: str  # picture | recording | video
    ref: str  # vendor file name or URL; often embeds the IMEI, so the pack scrubs it


class Location(_Base, tag="location", frozen=True):
    """A GNSS fix with the serving cell (GT06 0x12 / 0x22 / 0xA0 ...), or an LBS / Wi-Fi report
    (GT06 0x28 / 0x2C / 0x69 ...) whose cells and access points stand in for the fix."""

    latitude: float | None = None
    longitude: float | None = None
    altitude: int | None = None  # metres
    speed_kmh: float | None = None
    course: int | None = None  # degrees, 0-360
    valid: bool | None = None  # GNSS fix
    satellites: int | None = None
    mcc: int | None = None
    mnc: int | None = None
    lac: int | None = None
    cell_id: int | None = None
    cells: list[Cell] | None = None  # every cell an LBS report lists
    wifi_aps: list[str] | None = None  # BSSIDs seen, for Wi-Fi positioning
    acc: bool | None = None  # ignition
    mileage: int | None = None  # odometer, km
    battery_v: float | None = None
    power_v: float | None = None  # external supply


class Heartbeat(_Base, tag="heartbeat", frozen=True):
    """Status report (GT06 0x13 / 0x23 / 0x36, information packets 0x94); MQTT trackers add the
    network and configuration they run with."""

    acc: bool | None = None
    charging: bool | None = None
    voltage_level: int | None = None  # 0-6
    gsm_signal: int | None = None  # 0-4
    battery_v: float | None = None
    battery_level: int | None = None  # percent
    power_v: float | None = None  # external supply
    door: bool | None = None
    network: str | None = None  # "2G" | "4G"
    login_ip: str | None = None  # IPv4 or IPv6 address the device connects from
    sos_numbers: list[str] | None = None  # E.164 numbers configured on the device
    iccid: str | None = None
    imsi: str | None = None


class Alarm(_Base, tag="alarm", frozen=True):
    """An alarm with the position and status at the time (GT06 0x16 / 0x26 / 0x27 / 0x95 / 0xA4 ...)."""

    alarm: str  # sos | power_cut | vibration | enter_fence | exit_fence | overspeed | ... (a fixed list)
    latitude: float | None = None
    longitude: float | None = None
    altitude: int | None = None
    speed_kmh: float | None = None
    course: int | None = None
    valid: bool | None = None
    satellites: int | None = None
    mcc: int | None = None
    mnc: int | None = None
    lac: int | None = None
    cell_id: int | None = None
    acc: bool | None = None
    charging: bool | None = None
    voltage_level: int | None = None
    gsm_signal: int | None = None
    battery_v: float | None = None
    power_v: float | None = None
    mileage: int | None = None
    media: Media | None = None


class Login(_Base, tag="login", frozen=True):
    """The first message of a connection (GT06 0x01): where the device connects from."""

    login_ip: str | None = None
    iccid: str | None = None
    imsi: str | None = None


Message = Location | Heartbeat | Alarm | Login

BY_KIND: Final[dict[str, type[Message]]] = {
    "location": Location,
    "heartbeat": Heartbeat,
    "alarm": Alarm,
    "login": Login,
}
KINDS: Final = tuple(BY_KIND)  # the ``{kind}`` topic level = ``type``

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Message)


def encode(message: Message) -> bytes:
    """JSON bytes as a device publishes them (``None`` fields left out)."""
    return _encoder.encode(message)


def decode(payload: bytes) -> Message:
    """Parse a Tracksolid JSON payload into its Struct (raises ``msgspec.ValidationError``)."""
    return _decoder.decode(payload)


PATTERN: Final = "tracksolid/{imei}/{kind}"  # as ``[route] topics`` in the pack
SUBSCRIBE: Final = "tracksolid/+/+"


def topic(imei: str, kind: str) -> str:
    """The topic a tracker publishes a message of ``kind`` (its ``type``) on."""
    return PATTERN.format(imei=imei, kind=kind)

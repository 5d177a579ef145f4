"""Simulated Tracksolid fleet: D trackers driving Indian highways, publishing JSON over MQTT.

Ordinary traffic is mostly positions, with heartbeats, logins and the odd alarm. About one
message in 40 is an awkward case that real fleets send (``AWKWARD``: the case and the outcome
the pack gives it, "" = forwarded minimised, else the reject reason).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import msgspec

from devices.common import Clock, Route, Sample, Schedule, encode, imei, ipv4, ipv6, luhn_complete, mobile, pick
from devices.jimi_tracksolid.messages import Alarm, Heartbeat, Location, Login, Media, Message
from devices.jimi_tracksolid.topics import topic

SYSTEM = "jimi-tracksolid"

AWKWARD: dict[str, str] = {
    "ipv6_login": "",  # a login over IPv6 (Jio/Airtel hand out v6 first)
    "invalid_login_ip": "",  # firmware reports "0.0.0.0:0" before the socket is up
    "nulls": "",  # unset sensor values sent as null
    "no_fix": "",  # no GNSS fix: valid=false, cell only, no coordinates
    "vendor_fields": "",  # extra vendor fields (external voltage, firmware debug)
    "wifi_positioning": "",  # BSSIDs for Wi-Fi positioning indoors
    "sim_ids": "",  # ICCID and IMSI in a heartbeat
    "sos_numbers": "",  # configured SOS numbers echoed in a heartbeat
    "media_imei": "",  # dashcam picture whose file name embeds the IMEI
    "unknown_kind": "",  # a kind the pack does not know (OBD data)
    "phone_in_alarm": "",  # alarm text with the number the SOS call went to: forwarded as alarm "other"
    "latitude_as_text": "wrong_type",  # old firmware sends coordinates as strings
}

_KINDS = {"location": 80, "heartbeat": 12, "alarm": 3, "login": 5}
_ALARMS = ("sos", "power_cut", "vibration", "enter_fence", "exit_fence", "overspeed", "low_battery", "tamper")
_REPORT_S = 15.0  # a tracker's reporting interval while moving


class _Tracker:
    def __init__(self, rng: random.Random) -> None:
        self.imei = imei(rng, rng.choice(("35875609", "86720604", "86803103")))
        self.route = Route(rng)
        self.mileage = rng.uniform(2_000, 180_000)  # km; sent as whole km
        self.last = 0.0
        self.iccid = luhn_complete("89914" + f"{rng.randrange(10**14):014d}")  # 20 digits, India
        self.imsi = "40445" + f"{rng.randrange(10**10):010d}"
        self.lac, self.cell = rng.randrange(1000, 65000), rng.randrange(1, 2**24)


class _Fleet:
    def __init__(self, devices: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = Clock()
        self.trackers = [_Tracker(self.rng) for _ in range(devices)]
        self.schedule = Schedule(self.rng, list(AWKWARD))
        self.tick = _REPORT_S / max(devices, 1)

    def _fix(self, t: _Tracker) -> dict[str, Any]:
        rng, now = self.rng, self.clock.now.timestamp()
        lat, lon = t.route.drive(rng, now - t.last if t.last else _REPORT_S)
        t.mileage += t.route.speed_kmh * _REPORT_S / 3600
        t.last = now
        if rng.random() < 0.05:
            t.cell = rng.randrange(1, 2**24)  # handover
        return {
            "time": self.clock.iso(),
            "latitude": lat,
            "longitude": lon,
            "speed_kmh": round(t.route.speed_kmh),
            "course": t.route.course,
            "valid": True,
            "satellites": rng.randint(5, 14),
            "mcc": 404,
            "mnc": rng.choice((45, 10, 49)),
            "lac": t.lac,
            "cell_id": t.cell,
        }

    def _status(self) -> dict[str, Any]:
        rng = self.rng
        return {
            "acc": rng.random() < 0.8,
            "charging": rng.random() < 0.9,
            "voltage_level": rng.randint(3, 6),
            "gsm_signal": rng.randint(1, 4),
        }

    def message(self, t: _Tracker, kind: str) -> Message:
        rng = self.rng
        if kind == "location":
            return Location(imei=t.imei, acc=True, mileage=int(t.mileage), **self._fix(t))
        if kind == "heartbeat":
            return Heartbeat(imei=t.imei, time=self.clock.iso(), **self._status())
        if kind == "alarm":
            fix = self._fix(t)
            fix.pop("lac"), fix.pop("cell_id")  # alarm frames often carry no cell block
            return Alarm(imei=t.imei, alarm=rng.choice(_ALARMS), mileage=int(t.mileage), **fix, **self._status())
        return Login(imei=t.imei, time=self.clock.iso(), login_ip=ipv4(rng))

    def awkward(self, t: _Tracker, case: str) -> tuple[str, dict[str, Any]]:
        """(kind, payload) for one awkward case: a dict, since most are outside the schema."""
        rng = self.rng
        if case in ("ipv6_login", "invalid_login_ip"):
            ip = ipv6(rng) if case == "ipv6_login" else "0.0.0.0:0"
            return "login", msgspec.to_builtins(
                Login(imei=t.imei, time=self.clock.iso(), login_ip=ip, iccid=t.iccid, imsi=t.imsi)
            )
        if case in ("sim_ids", "sos_numbers"):
            extra = (
                {"iccid": t.iccid, "imsi": t.imsi}
                if case == "sim_ids"
                else {"sos_numbers": [mobile(rng) for _ in range(rng.randint(1, 3))]}
            )
            return "heartbeat", msgspec.to_builtins(
                Heartbeat(imei=t.imei, time=self.clock.iso(), **self._status(), **extra)
            )
        if case == "media_imei":
            ref = f"pic_{t.imei}_{self.clock.now:%Y%m%d%H%M%S}.jpg"
            base = self.message(t, "alarm")
            return "alarm", msgspec.to_builtins(
                msgspec.structs.replace(base, alarm="collision", media=Media(type="picture", ref=ref))
            )
        if case == "phone_in_alarm":
            number = mobile(rng)
            return "alarm", {
                "type": "alarm",
                "imei": t.imei,
                "time": self.clock.iso(),
                "alarm": f"sos call {number[:3]} {number[3:8]} {number[8:]}",
            }
        if case == "unknown_kind":
            return "obd", {
                "type": "obd",
                "imei": t.imei,
                "time": self.clock.iso(),
                "rpm": rng.randint(700, 3500),
                "coolant_c": rng.randint(70, 98),
            }
        body = msgspec.to_builtins(self.message(t, "location"))
        if case == "nulls":
            body.update(speed_kmh=None, course=None, satellites=None)
        elif case == "no_fix":
            for key in ("latitude", "longitude", "speed_kmh", "course"):
                body.pop(key)
            body.update(valid=False, satellites=0)
        elif case == "vendor_fields":
            body.update(ext_voltage_mv=rng.randint(11800, 14200), fw="GT06N_20_60DM2_B25E_V2", gps_ant="ok")
        elif case == "wifi_positioning":
            body["wifi_aps"] = [":".join(f"{rng.randrange(256):02x}" for _ in range(6)) for _ in range(3)]
        elif case == "latitude_as_text":
            body["latitude"] = f"{body['latitude']:.6f}"
        return "location", body

    def step(self) -> Sample:
        rng = self.rng
        self.clock.tick(rng, 0.2 * self.tick, 1.8 * self.tick)
        t = rng.choice(self.trackers)
        case = self.schedule.next()
        if case:
            kind, body = self.awkward(t, case)
            return Sample(topic(t.imei, kind), encode(body), kind, case)
        kind = pick(rng, _KINDS)
        return Sample(topic(t.imei, kind), encode(self.message(t, kind)), kind)


def messages(devices: int = 10, seed: int = 1) -> Iterator[Sample]:
    """Endless, deterministic Tracksolid traffic from ``devices`` trackers."""
    fleet = _Fleet(devices, seed)
    while True:
        yield fleet.step()

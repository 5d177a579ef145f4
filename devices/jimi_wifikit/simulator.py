"""Simulated WiFiKit users: D paired devices, each with an app account, moving around Indian cities.

Ordinary traffic is mostly locations and status, with logins, usage, alarms, media and the odd
crash. About one message in 40 is an awkward case (``AWKWARD``: the case and the outcome the
pack gives it, "" = forwarded minimised, else the reject reason).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from typing import Any

import msgspec

from devices.common import Clock, Route, Sample, Schedule, email, encode, imei, ipv4, ipv6, mobile, pick
from devices.jimi_wifikit.messages import Alarm, Crash, Location, Login, Media, MediaRef, Status, Usage
from devices.jimi_wifikit.topics import topic

SYSTEM = "jimi-wifikit"

AWKWARD: dict[str, str] = {
    "ipv6_login": "",  # a login over a mobile network's IPv6
    "mobile_as_integer": "",  # the mobile number as a JSON number
    "invalid_login_ip": "",  # the web console could not tell the address
    "unknown_platform": "",  # an OS and browser the pack does not know (KaiOS, UC Browser)
    "crash_email_token": "",  # a crash log with the user's e-mail, a bearer token and an IP
    "crash_phone_ipv6": "",  # a crash log with phone numbers, an IPv6 address and a token
    "media_imei_blob": "",  # a media file name with the IMEI, inline bytes and EXIF
    "tracking_ids": "",  # push token, cookie, anonymous id and a trip-share link in a login
    "nulls": "",  # e-mail and login IP sent as null
    "lone_latitude": "",  # half a fix: latitude without longitude
    "unknown_kind": "",  # a debug kind the pack does not know
    "phone_in_status": "leak",  # a status text with a phone number in it
    "latitude_as_text": "wrong_type",  # a fix with coordinates as strings
    "structured_crash_log": "wrong_type",  # an SDK that sends the crash log as an object
}

_KINDS = {"location": 55, "status": 15, "login": 8, "usage": 12, "alarm": 4, "media": 4, "crash": 2}
_MODELS = (
    ("Redmi Note 12", "Android 14.1"),
    ("Galaxy M34", "Android 13"),
    ("Pixel 7a", "Android 14"),
    ("iPhone 13", "iOS 17.4.1"),
    ("OnePlus Nord CE 3", "Android 13"),
    ("vivo Y56", "Android 13"),
)
_BROWSERS = (
    "Chrome 120.0.6099.144",
    "Mobile Safari 17.2",
    "Firefox 121.0",
    "Edge 120.0.2210.91",
    "Samsung Internet 23.0",
)
_APP_VERSIONS = ("3.2.1.7", "3.2.2.0", "3.3.0.1")
_ALARMS = ("sos", "low_battery", "exit_fence", "enter_fence", "power_cut")
_SCREENS = ("map", "history", "fence", "alarms", "settings", "share")
_AREAS = (
    "Koramangala, Bengaluru",
    "Andheri East, Mumbai",
    "Hitech City, Hyderabad",
    "Velachery, Chennai",
    "Sector 62, Noida",
    "Kothrud, Pune",
)


class _User:
    def __init__(self, rng: random.Random) -> None:
        self.device = imei(rng, rng.choice(("86210405", "35209378")))
        self.email = email(rng)
        self.mobile = mobile(rng)
        self.model, self.os = rng.choice(_MODELS)
        self.app_version = rng.choice(_APP_VERSIONS)
        self.route = Route(rng)
        self.last = 0.0


class _Users:
    def __init__(self, devices: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = Clock()
        self.users = [_User(self.rng) for _ in range(devices)]
        self.schedule = Schedule(self.rng, list(AWKWARD))
        self.tick = 20.0 / max(devices, 1)

    def _fix(self, u: _User) -> tuple[float, float]:
        now = self.clock.now.timestamp()
        point = u.route.drive(self.rng, now - u.last if u.last else 20.0)
        u.last = now
        return point

    def message(self, u: _User, kind: str) -> msgspec.Struct:
        rng, ids = self.rng, {"device_uid": u.device, "app_version": u.app_version}
        network = rng.choice(("WIFI", "4G", "4G", "5G"))
        if kind == "location":
            lat, lon = self._fix(u)
            return Location(
                **ids,
                lat=lat,
                lon=lon,
                alt=round(rng.uniform(5, 920), 1),
                speed=round(u.route.speed_kmh, 1),
                course=u.route.course,
                gps_ts=self.clock.iso(),
                address=rng.choice(_AREAS),
            )
        if kind == "status":
            return Status(**ids, device_model=u.model, network_type=network, network_status="connected")
        if kind == "login":
            web = rng.random() < 0.2
            return Login(
                **ids,
                email=u.email,
                mobile=u.mobile,
                device_model=None if web else u.model,
                os="Windows 11" if web else u.os,
                browser=rng.choice(_BROWSERS) if web else None,
                login_ip=ipv4(rng),
                network_type=network,
                network_status="connected",
            )
        if kind == "usage":
            return Usage(
                **ids, os=u.os, network_type=network, screen=rng.choice(_SCREENS), duration_s=rng.randint(3, 600)
            )
        if kind == "alarm":
            lat, lon = self._fix(u)
            return Alarm(**ids, alarm=rng.choice(_ALARMS), lat=lat, lon=lon, gps_ts=self.clock.iso())
        if kind == "media":
            return Media(**ids, media=MediaRef(type=rng.choice(("picture", "recording", "video")), ref=f"https://media.jimi.example/{rng.getrandbits(64):016x}.jpg"))
        return Crash(
            **ids,
            os=u.os,
            device_model=u.model,
            crash_log=f"java.lang.IllegalStateException at MapFragment.onResume:{rng.randint(80, 400)}",
        )

    def awkward(self, u: _User, case: str) -> tuple[str, dict[str, Any]]:
        """(kind, payload) for one awkward case: a dict, since most are outside the schema."""
        rng = self.rng
        if case in ("crash_email_token", "crash_phone_ipv6", "structured_crash_log"):
            body = msgspec.to_builtins(self.message(u, "crash"))
            if case == "crash_email_token":
                token = base64.urlsafe_b64encode(rng.randbytes(18)).decode().rstrip("=")
                body["crash_log"] = (
                    f"NullPointerException at LoginActivity:212 user={u.email} "
                    f"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.{token} from {ipv4(rng)}"
                )
            elif case == "crash_phone_ipv6":
                body["crash_log"] = (
                    f"SmsRetry failed for {u.mobile[:3]} {u.mobile[3:8]} {u.mobile[8:]} "
                    f"via {ipv6(rng)} token={rng.getrandbits(40):010x}"
                )
            else:
                body["crash_log"] = {"exception": "java.lang.OutOfMemoryError", "thread": "main", "user": u.email}
            return "crash", body
        if case == "media_imei_blob":
            blob = base64.b64encode(rng.randbytes(30)).decode()
            media = {
                "type": "picture",
                "ref": f"pic_{u.device}_{self.clock.now:%Y%m%d}.jpg",
                "blob": "/9j/4AAQSkZJRg" + blob,
                "exif": {"gps": f"{self._fix(u)}"},
            }
            return "media", {"device_uid": u.device, "media": media}
        if case in ("lone_latitude", "latitude_as_text"):
            body = msgspec.to_builtins(self.message(u, "location"))
            if case == "lone_latitude":
                del body["lon"]
            else:
                body.update(lat=f"{body['lat']:.6f}", lon=f"{body['lon']:.6f}")
            return "location", body
        if case == "phone_in_status":
            body = msgspec.to_builtins(self.message(u, "status"))
            body["network_status"] = f"call {u.mobile[:3]} {u.mobile[3:8]} {u.mobile[8:]}"
            return "status", body
        if case == "unknown_kind":
            return "debug", {"device_uid": u.device, "app_version": u.app_version, "heap_kb": rng.randint(20000, 90000)}
        body = msgspec.to_builtins(self.message(u, "login"))
        if case == "ipv6_login":
            body["login_ip"] = ipv6(rng)
        elif case == "mobile_as_integer":
            body["mobile"] = int(u.mobile[3:])
        elif case == "invalid_login_ip":
            body["login_ip"] = "unknown"
        elif case == "unknown_platform":
            body.update(os="KaiOS 3.1", browser="UCBrowser 15.3", device_model="JioPhone Next")
        elif case == "tracking_ids":
            body.update(
                push_token=f"{rng.getrandbits(128):032x}",
                cookie=f"sid={rng.getrandbits(64):016x}",
                anon_id=f"a-{rng.getrandbits(16):04x}",
                trip={"share": f"https://t.jimi.example/s/{rng.getrandbits(32):08x}"},
            )
        elif case == "nulls":
            body.update(email=None, login_ip=None)
        return "login", body

    def step(self) -> Sample:
        rng = self.rng
        self.clock.tick(rng, 0.2 * self.tick, 1.8 * self.tick)
        u = rng.choice(self.users)
        case = self.schedule.next()
        if case:
            kind, body = self.awkward(u, case)
            return Sample(topic(u.device, kind), encode(body), kind, case)
        kind = pick(rng, _KINDS)
        return Sample(topic(u.device, kind), encode(self.message(u, kind)), kind)


def messages(devices: int = 10, seed: int = 1) -> Iterator[Sample]:
    """Endless, deterministic WiFiKit traffic from ``devices`` paired devices."""
    users = _Users(devices, seed)
    while True:
        yield users.step()

"""Simulated Mi-Jack Power In-Lock app: D enterprise phones and tablets across a few tenants.

Ordinary traffic is mostly feature usage, with sign-ins, handled errors and the odd crash. About
one message in 40 is an awkward case (``AWKWARD``: the case and the outcome the pack gives it,
"" = forwarded minimised, else the reject reason).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from datetime import timedelta, timezone
from typing import Any

import msgspec

from devices.common import Clock, Sample, Schedule, encode, ipv4, ipv6, mobile, person, pick
from devices.mijack_power_inlock.messages import Auth, Crash, Error, ErrorEvent, Usage
from devices.mijack_power_inlock.topics import topic

SYSTEM = "mijack-power-inlock"

AWKWARD: dict[str, str] = {
    "password_field": "credential",  # a sign-in event that carries the password (sometimes empty)
    "crash_email_ipv6_bearer": "",  # a stack trace with an e-mail, an IPv6 address and a bearer token
    "config_password_text": "",  # the config snapshot has password=... in it
    "config_url_credentials": "",  # the config snapshot has https://user:pass@host
    "ipv6_address": "",  # a crash from an IPv6 network
    "ipv4_mapped": "",  # an IPv4-mapped IPv6 address
    "epoch_ms": "",  # ts as epoch milliseconds
    "hardware_ids": "",  # serial, MAC, ad id, cookies, a location and vendor debug
    "unknown_values": "",  # an OS, event and topic kind the pack does not know
    "invalid_ip_and_time": "",  # ip "unknown", ts "yesterday"
    "nulls": "",  # username, ip and os_version sent as null
    "phone_in_error": "",  # a callback number in the error message
    "structured_config": "wrong_type",  # the config snapshot as an object, password included
    "email_in_feature": "leak",  # a feature id that embeds the user's e-mail
}

_KINDS = {"usage": 75, "auth": 12, "error": 9, "crash": 4}
_TENANTS = {
    "acme-rail": "acme.example",
    "northline-terminals": "northline.example",
    "harbor-intermodal": "harbor.example",
}
_MODELS = (
    ("SM-G991B", "Android 14.1.2"),
    ("SM-T736B", "Android 13"),
    ("Pixel 8", "Android 15"),
    ("iPhone14,5", "iOS 17.4.1"),
    ("iPad13,1", "iPadOS 17.2"),
    ("CT60", "Android 11"),
)
_FEATURES = ("lock_status", "unlock_request", "reports", "crane_schedule", "maintenance_log", "settings", "alerts")
_APP_VERSIONS = ("3.2.0.14", "3.2.1.2", "3.3.0.1")
_ERRORS = (
    ("NPE", "null lock state", "at com.mijack.Lock.open(Lock.java:42)"),
    ("ANR", "main thread blocked 5s", "at com.mijack.sync.SyncJob.run(SyncJob.java:118)"),
    ("E_SYNC", "sync timeout", "at com.mijack.net.Http.post(Http.java:77)"),
)
_IST = timezone(timedelta(hours=5, minutes=30))


class _Phone:
    def __init__(self, rng: random.Random) -> None:
        self.tenant = rng.choice(list(_TENANTS))
        first, last = person(rng)
        self.username = f"{first[0]}{last}"
        self.email = f"{first}.{last}@{_TENANTS[self.tenant]}"
        self.model, self.os = rng.choice(_MODELS)
        self.device = f"{self.model.replace(',', '-').replace(' ', '-')}-{rng.getrandbits(16):04x}"
        if self.model.startswith("iP"):
            kind = self.model.rstrip("0123456789,")
        else:
            kind = "Galaxy Tab" if self.model.startswith("SM-T") else "phone"
        self.device_name = f"{first.title()}'s {kind}"
        self.device_id = f"{rng.getrandbits(64):016x}"
        self.app_version = rng.choice(_APP_VERSIONS)
        self.session = f"s-{rng.getrandbits(24):06x}"
        self.ip = ipv4(rng)


class _Fleet:
    def __init__(self, devices: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = Clock()
        self.phones = [_Phone(self.rng) for _ in range(devices)]
        self.schedule = Schedule(self.rng, list(AWKWARD))
        self.tick = 60.0 / max(devices, 1)

    def _who(self, p: _Phone, event: str) -> dict[str, Any]:
        ts = (
            self.clock.now.astimezone(_IST).isoformat(timespec="seconds")
            if self.rng.random() < 0.3
            else self.clock.iso()
        )
        return {
            "event": event,
            "ts": ts,
            "username": p.username,
            "session_id": p.session,
            "device_name": p.device_name,
            "device_id": p.device_id,
            "os_version": p.os,
            "device_model": p.model,
            "app_version": p.app_version,
        }

    def _config(self, p: _Phone) -> str:
        return (
            f"server=https://api.mi-jack.example/v2; tenant={p.tenant}; "
            f"sync_interval={self.rng.choice((60, 300, 900))}; token={self.rng.getrandbits(48):012x}"
        )

    def message(self, p: _Phone, kind: str) -> msgspec.Struct:
        rng = self.rng
        if kind == "usage":
            return Usage(**self._who(p, "feature_open"), feature=rng.choice(_FEATURES))
        if kind == "auth":
            event = rng.choice(("login", "logout"))
            if event == "login":
                p.session = f"s-{rng.getrandbits(24):06x}"
            token = base64.urlsafe_b64encode(rng.randbytes(12)).decode()
            return Auth(**self._who(p, event), auth_token=f"eyJhbGciOiJIUzI1NiJ9.{token}")
        code, message, stack = rng.choice(_ERRORS)
        error = Error(code=code, message=message, stack=stack)
        if kind == "error":
            return ErrorEvent(**self._who(p, "error"), ip=p.ip, app_config=self._config(p), error=error)
        return Crash(
            **self._who(p, "crash"), user_id=rng.randrange(1000, 9999), ip=p.ip, app_config=self._config(p), error=error
        )

    def awkward(self, p: _Phone, case: str) -> tuple[str, dict[str, Any]]:
        """(kind, payload) for one awkward case: a dict, since most are outside the schema."""
        rng = self.rng
        if case == "password_field":
            body = msgspec.to_builtins(Auth(**self._who(p, "login")))
            body["password"] = rng.choice(("", f"Winter{rng.randrange(2020, 2027)}!", f"{p.username}@123"))
            return "auth", body
        if case == "email_in_feature":
            return "usage", msgspec.to_builtins(
                Usage(**self._who(p, "feature_open"), feature=f"share_report:{p.email}")
            )
        if case == "hardware_ids":
            body = msgspec.to_builtins(self.message(p, "usage"))
            body.update(
                serial=f"R58N{rng.getrandbits(28):07X}",
                mac=":".join(f"{rng.randrange(256):02x}" for _ in range(6)),
                advertising_id="38400000-8cf0-11bd-b23e-10b96e40000d",
                cookies={"sid": f"{rng.getrandbits(32):08x}"},
                location={"lat": 41.8781, "lon": -87.6298},
                vendor_debug={"heap": rng.randint(1000, 9000)},
            )
            return "usage", body
        if case == "unknown_values":
            body = msgspec.to_builtins(self.message(p, "usage"))
            body.update(event="debug_dump", os_version="HarmonyOS 4.0")
            return "telemetry", body
        kind = "error" if case == "phone_in_error" else "crash"
        body = msgspec.to_builtins(self.message(p, kind))
        error = body["error"]
        if case == "crash_email_ipv6_bearer":
            token = base64.urlsafe_b64encode(rng.randbytes(15)).decode()
            error["stack"] = (
                f"POST /sync failed for {p.email} via {ipv6(rng)} "
                f"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.{token}\n{error['stack']}"
            )
        elif case == "config_password_text":
            body["app_config"] = f"db_user=svc; password=Hunter{rng.randrange(100)}; region=ap-south-1"
        elif case == "config_url_credentials":
            body["app_config"] = (
                f"proxy=https://{p.username}:Hunter{rng.randrange(100)}@10.0.{rng.randrange(256)}.5/x; "
                "sync_interval=300"
            )
        elif case == "ipv6_address":
            body["ip"] = ipv6(rng)
        elif case == "ipv4_mapped":
            body["ip"] = f"::ffff:{ipv4(rng)}"
        elif case == "epoch_ms":
            body["ts"] = self.clock.epoch_ms()
        elif case == "invalid_ip_and_time":
            body.update(ip="unknown", ts="yesterday")
        elif case == "nulls":
            body.update(username=None, ip=None, os_version=None)
        elif case == "phone_in_error":
            number = mobile(rng)
            error.update(code="E_CALLBACK", message=f"callback to {number[:3]} {number[3:8]} {number[8:]} failed")
        elif case == "structured_config":
            body["app_config"] = {"server": "https://api.mi-jack.example", "password": f"Hunter{rng.randrange(100)}"}
        return kind, body

    def step(self) -> Sample:
        rng = self.rng
        self.clock.tick(rng, 0.2 * self.tick, 1.8 * self.tick)
        p = rng.choice(self.phones)
        case = self.schedule.next()
        if case:
            kind, body = self.awkward(p, case)
            return Sample(topic(p.tenant, p.device, kind), encode(body), kind, case)
        kind = pick(rng, _KINDS)
        return Sample(topic(p.tenant, p.device, kind), encode(self.message(p, kind)), kind)


def messages(devices: int = 10, seed: int = 1) -> Iterator[Sample]:
    """Endless, deterministic Mi-Jack app traffic from ``devices`` enterprise devices."""
    fleet = _Fleet(devices, seed)
    while True:
        yield fleet.step()

"""Simulated SmartLocker sites: D cabinets renting lockers, taking UPI payments, reporting health.

Ordinary traffic is lock events, card/QR/app access, UPI payments and diagnostics. About one
message in 40 is an awkward case (``AWKWARD``: the case and the outcome the pack gives it,
"" = forwarded minimised, else the reject reason).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from typing import Any

import msgspec

from devices.common import Clock, Sample, Schedule, card_number, email, encode, mobile, person, pick, utr, vpa
from devices.smartlocker_jenix.messages import (
    Access,
    AccessEvent,
    App,
    Diagnostics,
    Fix,
    LockEvent,
    Operator,
    Payment,
    PaymentEvent,
)
from devices.smartlocker_jenix.topics import topic

SYSTEM = "smartlocker-jenix"

AWKWARD: dict[str, str] = {
    "pin_access": "credential",  # keypad mode: the credential is the PIN
    "face_access": "credential",  # face mode: the credential is a face template
    "otp_field": "credential",  # an app-mode event that echoes the OTP typed on the keypad
    "upi_pin": "credential",  # a payment that carries the UPI PIN
    "operator_password": "credential",  # a service login dumped into diagnostics
    "card_in_note": "",  # the agent pasted the customer's card number and phone into the note
    "card_number_field": "",  # a card fallback payment with the full card number
    "utr_as_integer": "",  # the UTR as a JSON number
    "error_ipv6_token": "",  # an MQTT error log with an IPv6 address and a token
    "gps_fix": "",  # the modem's GPS fix in diagnostics
    "face_and_snapshot": "",  # card access with a face blob and a camera frame attached
    "epoch_ms": "",  # old firmware: ts in epoch milliseconds, locker id as text
    "unknown_event": "",  # a relay glitch with a vendor event name
    "vendor_topic": "",  # a raw vendor kind with extra vendor fields
    "nulls": "",  # board id and status sent as null
    "phone_in_status": "leak",  # firmware put the owner's number in the status text
}

_KINDS = {"event": 55, "access": 20, "payment": 15, "diagnostics": 10}
_SITES = {
    "blr-01": (12.9716, 77.5946),
    "blr-04": (12.9352, 77.6245),
    "hyd-02": (17.4435, 78.3772),
    "pune-03": (18.5590, 73.7868),
    "mum-07": (19.1176, 72.9060),
    "del-05": (28.5355, 77.3910),
}
_EVENTS = {"deposit": 30, "pickup": 30, "opened": 15, "closed": 20, "door_left_open": 4, "tamper": 1}
_MODES = {"card": 35, "qr": 35, "app": 25, "api": 5}
_FIRMWARE = ("2.1.0.4", "2.1.1.0", "2.2.0.3")
_OS = ("Android 14", "Android 13", "Android 12", "iOS 17.4", "iOS 18.1")


class _Cabinet:
    def __init__(self, rng: random.Random, n: int) -> None:
        self.site = rng.choice(list(_SITES))
        self.cabinet = f"CAB-{1000 + n * 37 % 9000:04d}"
        self.boards = [f"BRD-{i}" for i in range(1, rng.randint(2, 4) + 1)]
        self.lockers = rng.choice((12, 24, 36, 48))
        self.firmware = rng.choice(_FIRMWARE)


class _Sites:
    def __init__(self, devices: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = Clock()
        self.cabinets = [_Cabinet(self.rng, n) for n in range(devices)]
        self.schedule = Schedule(self.rng, list(AWKWARD))
        self.operators = [
            Operator(
                id=f"OP-{i}",
                name=" ".join(p.title() for p in person(self.rng)),
                phone=mobile(self.rng),
                email=email(self.rng, "jenix-partners.in"),
            )
            for i in range(11, 17)
        ]
        self.tick = 30.0 / max(devices, 1)  # a busy cabinet sends a message every half minute

    def _base(self, c: _Cabinet) -> dict[str, Any]:
        return {
            "cabinet_id": c.cabinet,
            "board_id": self.rng.choice(c.boards),
            "locker_id": self.rng.randint(1, c.lockers),
            "ts": self.clock.iso(),
        }

    def _access(self, mode: str) -> Access:
        rng = self.rng
        if mode == "card":
            return Access(mode=mode, credential=f"04{rng.getrandbits(48):012X}")  # 7-byte MIFARE UID
        if mode == "qr":
            return Access(mode=mode, credential=f"QR-{rng.getrandbits(40):010x}")
        return Access(mode=mode)

    def message(self, c: _Cabinet, kind: str) -> msgspec.Struct:
        rng = self.rng
        if kind == "event":
            event = pick(rng, _EVENTS)
            operator = rng.choice(self.operators) if event in ("door_left_open", "tamper") else None
            status = {"deposit": "occupied", "pickup": "free", "opened": "door_open", "closed": "locked"}.get(
                event, "alert"
            )
            return LockEvent(**self._base(c), event=event, status=status, operator=operator)
        if kind == "access":
            mode = pick(rng, _MODES)
            app = (
                App(
                    permissions=["bluetooth", "camera", "notifications"],
                    os=rng.choice(_OS),
                    ble_mac=":".join(f"{rng.randrange(256):02X}" for _ in range(6)),
                )
                if mode == "app"
                else None
            )
            return AccessEvent(
                **self._base(c), access=self._access(mode), user_id=f"U-{rng.randrange(10000, 99999)}", app=app
            )
        if kind == "payment":
            status = rng.choices(("success", "failed", "pending"), (90, 7, 3))[0]
            pay = Payment(
                upi_ref=utr(rng), payer_vpa=vpa(rng), amount=rng.choice((20, 30, 49.5, 60, 99)), status=status
            )
            return PaymentEvent(**self._base(c), payment=pay, user_id=f"U-{rng.randrange(10000, 99999)}")
        return Diagnostics(
            **self._base(c) | {"locker_id": None}, firmware=c.firmware, rssi=rng.randint(-95, -55), status="ok"
        )

    def awkward(self, c: _Cabinet, case: str) -> tuple[str, dict[str, Any]]:
        """(kind, payload) for one awkward case: a dict, since most are outside the schema."""
        rng = self.rng
        base = self._base(c)
        if case in ("pin_access", "face_access", "otp_field", "face_and_snapshot"):
            mode = {"pin_access": "pin", "face_access": "face", "otp_field": "app"}.get(case, "card")
            body = msgspec.to_builtins(
                AccessEvent(**base, access=self._access(mode), user_id=f"U-{rng.randrange(10000, 99999)}")
            )
            blob = base64.b64encode(rng.randbytes(24)).decode()
            if case == "pin_access":
                body["access"]["credential"] = f"{rng.randrange(10**6):06d}"
            elif case == "face_access":
                body["access"]["credential"] = blob
            elif case == "otp_field":
                body["access"]["pin"] = f"{rng.randrange(10**4):04d}"
            else:
                body["access"]["face"] = blob
                body["camera"] = {"snapshot": "/9j/4AAQSkZJRg" + blob}
            return "access", body
        if case in ("upi_pin", "card_in_note", "card_number_field", "utr_as_integer"):
            body = msgspec.to_builtins(self.message(c, "payment"))
            pay = body["payment"]
            if case == "upi_pin":
                pay["upi_pin"] = f"{rng.randrange(10**6):06d}"
            elif case == "card_in_note":
                card, phone = card_number(rng), mobile(rng)
                body["note"] = (
                    "UPI failed, customer paid with card "
                    f"{' '.join(card[i : i + 4] for i in range(0, 16, 4))}, call {phone[3:8]} {phone[8:]}"
                )
            elif case == "card_number_field":
                pay["card_number"] = card_number(rng)
            else:
                pay["upi_ref"] = int(pay["upi_ref"])
            return "payment", body
        if case in ("operator_password", "error_ipv6_token", "gps_fix"):
            body = msgspec.to_builtins(self.message(c, "diagnostics"))
            if case == "operator_password":
                body["operator"] = {
                    "id": rng.choice(self.operators).id,
                    "password": f"jenix@{rng.randrange(1000, 9999)}",
                }
            elif case == "error_ipv6_token":
                addr = f"2406:da1a:{rng.randrange(0x10000):x}::{rng.randrange(0x10000):x}"
                body["error"] = {
                    "code": "E42",
                    "message": f"MQTT reconnect to {addr} failed, token={rng.getrandbits(64):016x}",
                }
            else:
                lat, lon = _SITES[c.site]
                body["location"] = msgspec.to_builtins(
                    Fix(lat=round(lat + rng.uniform(-0.002, 0.002), 6), lon=round(lon + rng.uniform(-0.002, 0.002), 6))
                )
            return "diagnostics", body
        body = msgspec.to_builtins(self.message(c, "event"))
        if case == "epoch_ms":
            body.update(ts=self.clock.epoch_ms(), locker_id=f"A{body['locker_id']:02d}")
        elif case == "unknown_event":
            body.update(event=f"relay_glitch_0x{rng.randrange(256):02x}")
        elif case == "vendor_topic":
            body.update(
                vendor_dbg=f"crc={rng.getrandbits(16):04x}", relay={"ch": rng.randint(1, 8), "ms": rng.randint(80, 200)}
            )
            return "raw", body
        elif case == "nulls":
            body.update(board_id=None, status=None)
        elif case == "phone_in_status":
            phone = mobile(rng)
            body.update(status=f"call owner {phone[3:8]} {phone[8:]}")
        return "event", body

    def step(self) -> Sample:
        rng = self.rng
        self.clock.tick(rng, 0.2 * self.tick, 1.8 * self.tick)
        c = rng.choice(self.cabinets)
        case = self.schedule.next()
        if case:
            kind, body = self.awkward(c, case)
            return Sample(topic(c.site, c.cabinet, kind), encode(body), kind, case)
        kind = pick(rng, _KINDS)
        return Sample(topic(c.site, c.cabinet, kind), encode(self.message(c, kind)), kind)


def messages(devices: int = 10, seed: int = 1) -> Iterator[Sample]:
    """Endless, deterministic SmartLocker traffic from ``devices`` cabinets."""
    sites = _Sites(devices, seed)
    while True:
        yield sites.step()

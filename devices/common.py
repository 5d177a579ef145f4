"""What the five device simulators share: the ``Sample`` they yield and realistic value makers.

Every simulator is deterministic: all randomness comes from one ``random.Random(seed)`` and all
time from a ``Clock`` that starts at a fixed instant, so the same seed gives the same bytes on
every machine (tests use the inputs as canaries, demos are repeatable). Identifier makers
produce values the leak guard's detectors recognise (Luhn-valid IMEIs and cards, 12-digit UTRs,
``name@handle`` VPAs), because a simulator that sent fake-looking ids would not test the guard.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

__all__ = [
    "Clock",
    "Route",
    "Sample",
    "Schedule",
    "card_number",
    "email",
    "encode",
    "imei",
    "ipv4",
    "ipv6",
    "luhn_complete",
    "mobile",
    "person",
    "pick",
    "utr",
    "vpa",
]


class Sample(msgspec.Struct, frozen=True):
    """One message as a device would publish it.

    ``kind`` is the message kind (the topic's kind level); ``awkward`` names the awkward case
    this message exercises ("" for ordinary traffic), a key of the simulator's ``AWKWARD``.
    """

    topic: str
    payload: bytes
    kind: str
    awkward: str = ""


_encoder = msgspec.json.Encoder()


def encode(message: Any) -> bytes:
    """JSON bytes of a Struct or of a plain dict (awkward cases are built as dicts)."""
    return _encoder.encode(message)


class Schedule:
    """Decides which messages carry an awkward case, and which one.

    Awkward messages come every ``gap`` messages on average (jittered), cycling through the
    cases in a seeded order: a realistic low rate that still reaches every case within
    about ``gap * 1.5 * len(cases)`` messages, for any seed.
    """

    def __init__(self, rng: random.Random, cases: Sequence[str], gap: int = 40) -> None:
        self._rng = rng
        self._cases = list(cases)
        self._gap = gap
        self._queue: list[str] = []
        self._countdown = rng.randint(1, gap)

    def next(self) -> str:
        """The awkward case for the next message, or "" for an ordinary one."""
        self._countdown -= 1
        if self._countdown > 0:
            return ""
        self._countdown = self._rng.randint(self._gap // 2, self._gap * 3 // 2)
        if not self._queue:
            self._queue = self._cases[:]
            self._rng.shuffle(self._queue)
        return self._queue.pop()


class Clock:
    """Simulated time: starts at a fixed instant and only moves forward."""

    def __init__(self, start: datetime = datetime(2026, 1, 15, 6, 0, tzinfo=UTC)) -> None:
        self.now = start

    def tick(self, rng: random.Random, low: float = 0.2, high: float = 3.0) -> datetime:
        """Advance by a random interval (seconds) and return the new time."""
        self.now += timedelta(seconds=round(rng.uniform(low, high), 3))
        return self.now

    def iso(self) -> str:
        """``2026-01-15T06:00:03Z``: the second-resolution UTC form devices send."""
        return self.now.strftime("%Y-%m-%dT%H:%M:%SZ")

    def epoch_ms(self) -> int:
        return int(self.now.timestamp() * 1000)


# Highways between Indian cities, as (lat, lon) waypoints; trackers drive them back and forth.
ROUTES: tuple[tuple[tuple[float, float], ...], ...] = (
    (
        (12.971599, 77.594566),
        (12.917155, 77.483710),
        (12.720712, 77.281685),
        (12.521862, 76.897472),
        (12.295810, 76.639381),
    ),  # Bengaluru - Mysuru
    ((19.076090, 72.877426), (19.033049, 73.029663), (18.754789, 73.408325), (18.520430, 73.856743)),  # Mumbai - Pune
    ((28.613939, 77.209023), (28.459497, 77.026634), (27.553101, 76.634598), (26.912434, 75.787270)),  # Delhi - Jaipur
    (
        (13.082680, 80.270721),
        (12.823000, 80.045000),
        (12.692600, 79.976700),
        (11.939100, 79.812200),
    ),  # Chennai - Puducherry
    (
        (17.385044, 78.486671),
        (17.240000, 78.430000),
        (16.750000, 78.000000),
        (15.828126, 78.037277),
    ),  # Hyderabad - Kurnool
)


class Route:
    """A vehicle moving along one of ``ROUTES`` and turning back at the ends."""

    def __init__(self, rng: random.Random) -> None:
        self.points = ROUTES[rng.randrange(len(ROUTES))]
        self.leg = rng.randrange(len(self.points) - 1)
        self.along = rng.random()  # fraction of the current leg done
        self.forward = rng.random() < 0.5
        self.speed_kmh = 0.0
        self.course = 0

    def _ends(self) -> tuple[tuple[float, float], tuple[float, float]]:
        a, b = self.points[self.leg], self.points[self.leg + 1]
        return (a, b) if self.forward else (b, a)

    def _leg_km(self) -> float:
        (lat1, lon1), (lat2, lon2) = self._ends()
        dy = (lat2 - lat1) * 111.32
        dx = (lon2 - lon1) * 111.32 * math.cos(math.radians((lat1 + lat2) / 2))
        return max(math.hypot(dx, dy), 0.1)

    def drive(self, rng: random.Random, seconds: float) -> tuple[float, float]:
        """Move for ``seconds`` at a traffic-like speed; return the new (lat, lon), 6 decimals."""
        self.speed_kmh = max(
            0.0, min(110.0, self.speed_kmh + rng.uniform(-15, 15) if self.speed_kmh else rng.uniform(0, 60))
        )
        self.along += self.speed_kmh * seconds / 3600 / self._leg_km()
        while self.along >= 1:
            self.along -= 1
            next_leg = self.leg + (1 if self.forward else -1)
            if 0 <= next_leg < len(self.points) - 1:
                self.leg = next_leg
            else:
                self.forward = not self.forward
        (lat1, lon1), (lat2, lon2) = self._ends()
        self.course = int(math.degrees(math.atan2(lon2 - lon1, lat2 - lat1))) % 360
        f = self.along
        jitter = rng.uniform(-0.00003, 0.00003)  # GNSS noise, a few metres
        return round(lat1 + (lat2 - lat1) * f + jitter, 6), round(lon1 + (lon2 - lon1) * f - jitter, 6)


def luhn_complete(body: str) -> str:
    """``body`` plus the Luhn check digit (IMEIs, card numbers)."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        x = int(ch) * (2 if i % 2 == 0 else 1)
        total += x - 9 if x > 9 else x
    return body + str((10 - total % 10) % 10)


# Type allocation codes of Jimi/Concox trackers and common Android phones sold in India.
TACS = ("35875609", "86210405", "86720604", "35209378", "86803103", "49015420")


def imei(rng: random.Random, tac: str | None = None) -> str:
    """A 15-digit Luhn-valid IMEI: 8-digit TAC, 6-digit serial, check digit."""
    return luhn_complete((tac or rng.choice(TACS)) + f"{rng.randrange(10**6):06d}")


def card_number(rng: random.Random) -> str:
    """A 16-digit Luhn-valid card number (Visa, Mastercard or RuPay ranges)."""
    prefix = rng.choice(("4", "51", "55", "6521", "6522", "508"))
    return luhn_complete(prefix + "".join(rng.choice("0123456789") for _ in range(15 - len(prefix))))


def utr(rng: random.Random) -> str:
    """A 12-digit UPI transaction reference (RRN); the first digit is the year's last."""
    return "6" + f"{rng.randrange(10**11):011d}"


def mobile(rng: random.Random) -> str:
    """An Indian mobile number in E.164 form."""
    return "+91" + rng.choice("6789") + f"{rng.randrange(10**9):09d}"


FIRST_NAMES = ("asha", "ravi", "priya", "arjun", "meera", "vikram", "neha", "kiran", "sunita", "rahul")
LAST_NAMES = ("rao", "kumar", "sharma", "iyer", "patel", "nair", "singh", "reddy", "gupta", "das")
UPI_HANDLES = ("okaxis", "oksbi", "okhdfcbank", "okicici", "ybl", "paytm", "upi", "ibl")


def person(rng: random.Random) -> tuple[str, str]:
    """(first, last) name, lower case."""
    return rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)


def vpa(rng: random.Random) -> str:
    """A payer VPA: ``name@handle`` or ``<mobile>@handle``."""
    first, last = person(rng)
    local = mobile(rng)[3:] if rng.random() < 0.4 else f"{first}.{last}{rng.randrange(100)}"
    return f"{local}@{rng.choice(UPI_HANDLES)}"


def email(rng: random.Random, domain: str | None = None) -> str:
    first, last = person(rng)
    number = rng.randrange(1000)
    domain = domain or rng.choice(("gmail.com", "yahoo.co.in", "outlook.com", "rediffmail.com"))
    return f"{first}.{last}{number}@{domain}"


# Public prefixes of Indian carriers (Jio, Airtel, BSNL, ACT Fibernet).
_V4_PREFIXES = ((49, 36), (49, 37), (106, 198), (122, 161), (117, 200), (157, 49))
_V6_PREFIXES = ("2409:4071", "2409:40f2", "2401:4900", "2402:3a80")


def ipv4(rng: random.Random, prefixes: Sequence[tuple[int, int]] = _V4_PREFIXES) -> str:
    """A public address from one of ``prefixes`` (first two octets); Indian carriers by default."""
    a, b = rng.choice(prefixes)
    return f"{a}.{b}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def ipv6(rng: random.Random) -> str:
    tail = ":".join(f"{rng.randrange(1, 0x10000):x}" for _ in range(6))
    return f"{rng.choice(_V6_PREFIXES)}:{tail}"


def pick(rng: random.Random, weights: dict[str, int]) -> str:
    """One key of ``weights``, drawn in proportion to its weight."""
    return rng.choices(list(weights), weights=list(weights.values()))[0]


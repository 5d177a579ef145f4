"""GT06 tracker simulator: many Jimi / Concox trackers over real TCP, for tests and load.

Each simulated tracker behaves as the devices do: one TCP connection, a login it must see
acknowledged before anything else, then 0x22 positions along a road in India, a 0x13
heartbeat every tenth frame, now and then a 0x26 alarm and a 0x2C LBS + Wi-Fi report (cells
and access points instead of a fix), each heartbeat, alarm and report waiting for its ACK.
What a tracker sends is a pure function of (seed, device index, start time), see
``script``, so a test can recompute exactly what the listener should have received.

    python -m devices.gt06.simulator --gt06 127.0.0.1:5023 --devices 10 --count 100
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec

from devices.gt06.frames import build_alarm, build_heartbeat, build_lbs_report, build_location, build_login
from gateway.ingest.gt06.codec import PROTO_ALARM_UTC, PROTO_HEARTBEAT, PROTO_LOGIN, SHORT_START, FrameError, Framer

__all__ = ["Stats", "Step", "imei_for", "main", "run", "script"]

# Waypoints (lat, lon) along national highways; trackers drive them back and forth.
ROUTES: tuple[tuple[tuple[float, float], ...], ...] = (
    # Bengaluru -> Mysuru (NH 275)
    ((12.9716, 77.5946), (12.7969, 77.3838), (12.7209, 77.2799), (12.6518, 77.2089),
     (12.5223, 76.8970), (12.4181, 76.6947), (12.2958, 76.6394)),
    # Mumbai -> Pune (expressway)
    ((19.0760, 72.8777), (18.9894, 73.1175), (18.7852, 73.3450), (18.7546, 73.4062),
     (18.7350, 73.6756), (18.5204, 73.8567)),
    # Delhi -> Agra (NH 19)
    ((28.6139, 77.2090), (28.4089, 77.3178), (28.1487, 77.3320), (27.4924, 77.6737),
     (27.1767, 78.0081)),
    # Chennai -> Vellore (NH 48)
    ((13.0827, 80.2707), (12.9675, 79.9419), (12.8342, 79.7036), (12.9165, 79.1325)),
)  # fmt: skip
ALARMS = ("sos", "overspeed", "enter_fence", "exit_fence", "vibration", "power_cut", "low_battery")
FIX_INTERVAL = timedelta(seconds=10)  # simulated time between fixes
HEARTBEAT_EVERY = 10  # every tenth frame is a heartbeat
ALARM_CHANCE = 0.03
LBS_CHANCE = 0.05  # an LBS + Wi-Fi report (0x2C) instead of a fix, as trackers send indoors
_TAC = "35875609"  # type allocation code of a Concox model: the first 8 IMEI digits
_KM_PER_DEGREE = 111.32


class Step(msgspec.Struct, frozen=True):
    """One frame a simulated tracker sends after its login."""

    kind: str  # location | heartbeat | alarm | lbs (cells and access points instead of a fix)
    time: datetime
    latitude: float
    longitude: float
    speed_kmh: int
    course: int
    alarm: str | None = None
    cells: tuple[tuple[int, int, int], ...] = ()  # lbs: (lac, cell id, rssi dBm)
    wifi: tuple[tuple[str, int], ...] = ()  # lbs: (BSSID, rssi dBm)

    @property
    def record(self) -> str:
        """The Tracksolid record kind the listener makes of it (an LBS report is a location)."""
        return "location" if self.kind == "lbs" else self.kind


class Stats(msgspec.Struct, kw_only=True):
    """What a run did; ``ok`` when every tracker logged in and got every ACK it waited for."""

    devices: int = 0
    logged_in: int = 0
    sent: dict[str, int] = msgspec.field(default_factory=dict)  # by kind, login included
    acks: dict[str, int] = msgspec.field(default_factory=dict)  # by acknowledged kind
    errors: dict[str, int] = msgspec.field(default_factory=dict)  # connect, no_login_ack, ...
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and self.logged_in == self.devices


def _luhn_digit(body: str) -> str:
    total = 0
    for i, char in enumerate(reversed(body)):
        digit = int(char) * (2 if i % 2 == 0 else 1)  # doubled: every second digit from the check
        total += digit - 9 if digit > 9 else digit
    return str(-total % 10)


def imei_for(device: int, seed: int = 1) -> str:
    """A Luhn-valid 15-digit IMEI, distinct for each device index of one seed (up to 10^6)."""
    serial = (device + seed * 7919) % 1_000_000
    body = f"{_TAC}{serial:06d}"
    return body + _luhn_digit(body)


def _bearing(a: tuple[float, float], b: tuple[float, float]) -> int:
    dy = b[0] - a[0]
    dx = (b[1] - a[1]) * math.cos(math.radians(a[0]))
    return round(math.degrees(math.atan2(dx, dy))) % 360


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    dy = b[0] - a[0]
    dx = (b[1] - a[1]) * math.cos(math.radians(a[0]))
    return math.hypot(dx, dy) * _KM_PER_DEGREE


def script(device: int, count: int, seed: int = 1, start: datetime | None = None) -> Iterator[Step]:
    """The ``count`` frames tracker ``device`` sends after its login, in order.

    Deterministic for a given seed, device and start (UTC, default now), which is what lets a
    test check the listener's output against what was sent.
    """
    rng = random.Random(f"{seed}/{device}")
    when = (start or datetime.now(UTC)).replace(microsecond=0)
    route = list(rng.choice(ROUTES))
    if rng.random() < 0.5:
        route.reverse()
    leg = rng.randrange(len(route) - 1)
    done = rng.random() * _km(route[leg], route[leg + 1])  # km along the current leg
    cruise = rng.uniform(30, 80)
    for i in range(count):
        a, b = route[leg], route[leg + 1]
        length = _km(a, b)
        share = min(done / length, 1.0)
        lat = round(a[0] + (b[0] - a[0]) * share, 6)
        lon = round(a[1] + (b[1] - a[1]) * share, 6)
        speed = max(0, min(120, round(rng.gauss(cruise, 8))))
        course = _bearing(a, b)
        if i % HEARTBEAT_EVERY == HEARTBEAT_EVERY - 1:
            yield Step("heartbeat", when, lat, lon, speed, course)
        elif rng.random() < ALARM_CHANCE:
            yield Step("alarm", when, lat, lon, speed, course, rng.choice(ALARMS))
        elif rng.random() < LBS_CHANCE:
            cells = tuple((4101 + rng.randrange(3), rng.randrange(1, 1 << 24), -rng.randrange(50, 110)) for _ in "abc")
            wifi = tuple((rng.randbytes(6).hex(":"), -rng.randrange(40, 90)) for _ in "ab")
            yield Step("lbs", when, lat, lon, speed, course, cells=cells, wifi=wifi)
        else:
            yield Step("location", when, lat, lon, speed, course)
        when += FIX_INTERVAL
        done += speed * FIX_INTERVAL.total_seconds() / 3600
        while done >= _km(route[leg], route[leg + 1]):
            done -= _km(route[leg], route[leg + 1])
            leg += 1
            if leg == len(route) - 1:  # end of the road: drive back
                route.reverse()
                leg = 0


def _frame(step: Step, serial: int) -> bytes:
    if step.kind == "lbs":
        return build_lbs_report(serial, step.time, 404, 45, list(step.cells), list(step.wifi), protocol=PROTO_LBS_WIFI)
    if step.kind == "heartbeat":
        return build_heartbeat(serial, acc=step.speed_kmh > 0)
    if step.kind == "alarm":
        assert step.alarm is not None
        return build_alarm(
            serial, step.time, step.latitude, step.longitude, step.alarm,
            speed_kmh=step.speed_kmh, course=step.course,
        )  # fmt: skip
    return build_location(
        serial, step.time, step.latitude, step.longitude, step.speed_kmh, step.course, satellites=9
    )


PROTO_LBS_WIFI = 0x2C
_ACK_KINDS = {PROTO_LOGIN: "login", PROTO_HEARTBEAT: "heartbeat", PROTO_ALARM_UTC: "alarm", PROTO_LBS_WIFI: "lbs"}
_ACK_PROTOCOL = {"heartbeat": PROTO_HEARTBEAT, "alarm": PROTO_ALARM_UTC, "lbs": PROTO_LBS_WIFI}


class _Acks:
    """Reads the listener's replies off one connection, as decoded frames."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._framer = Framer()
        self._ready: list[bytes] = []

    async def next(self, wait: float) -> tuple[int, int] | None:
        """(protocol, serial) of the next reply; None on EOF, timeout or a broken reply."""
        try:
            async with asyncio.timeout(wait):
                while not self._ready:
                    data = await self._reader.read(4096)
                    if not data:
                        return None
                    for item in self._framer.feed(data):
                        if isinstance(item, FrameError):
                            return None
                        self._ready.append(item)
        except (TimeoutError, ConnectionError):
            return None
        raw = self._ready.pop(0)  # checked by the framer; a reply has no content to decode
        protocol = raw[3] if raw[:2] == SHORT_START else raw[4]
        return protocol, int.from_bytes(raw[-6:-4], "big")


class _Run:
    """Shared settings and tallies of one simulator run."""

    def __init__(
        self, host: str, port: int, count: int, rate: float, seed: int,
        start: datetime, deadline: float, ack_timeout: float,
    ) -> None:  # fmt: skip
        self.host, self.port, self.count, self.rate, self.seed = host, port, count, rate, seed
        self.start, self.deadline, self.ack_timeout = start, deadline, ack_timeout
        self.sent: Counter[str] = Counter()
        self.acks: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.logged_in = 0

    async def _expect(self, acks: _Acks, protocol: int, serial: int) -> bool:
        reply = await acks.next(self.ack_timeout)
        if reply is None:
            self.errors[f"no_{_ACK_KINDS[protocol]}_ack"] += 1
            return False
        if reply != (protocol, serial):
            self.errors["wrong_ack"] += 1
            return False
        self.acks[_ACK_KINDS[protocol]] += 1
        return True

    async def tracker(self, device: int) -> None:
        rng = random.Random(f"{self.seed}/{device}/link")
        try:
            async with asyncio.timeout(self.ack_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError):
            self.errors["connect"] += 1
            return
        try:
            await self._session(device, rng, reader, writer)
        except ConnectionError:
            self.errors["connection_lost"] += 1
        finally:
            writer.transport.abort()

    async def _session(
        self, device: int, rng: random.Random, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        acks = _Acks(reader)
        type_id = rng.choice((None, 0x3601))  # half send the newer, longer login
        writer.write(build_login(imei_for(device, self.seed), 1, type_id=type_id))
        self.sent["login"] += 1
        if not await self._expect(acks, PROTO_LOGIN, 1):
            return
        self.logged_in += 1
        if self.rate:
            await asyncio.sleep(rng.uniform(0, 1 / self.rate))  # trackers do not tick in step
        serial = 1
        for step in script(device, self.count, self.seed, self.start):
            if loop.time() > self.deadline:
                break
            serial = serial % 0xFFFF + 1
            writer.write(_frame(step, serial))
            self.sent[step.record] += 1
            await writer.drain()
            answered = step.kind in _ACK_PROTOCOL  # positions are not
            if answered and not await self._expect(acks, _ACK_PROTOCOL[step.kind], serial):
                return
            if self.rate:
                await asyncio.sleep(1 / self.rate)
        writer.write_eof()  # done: the listener handles what it has, then hangs up
        if await acks.next(self.ack_timeout) is not None:
            self.errors["unexpected_reply"] += 1


async def run(
    host: str,
    port: int,
    devices: int = 10,
    count: int = 100,
    rate: float = 0.0,
    seed: int = 1,
    *,
    duration: float | None = None,
    start: datetime | None = None,
    ack_timeout: float = 10.0,
) -> Stats:
    """Run ``devices`` trackers at once, each sending up to ``count`` frames after its login.

    ``rate`` is frames per second per tracker (0: as fast as ACKs allow); ``duration`` stops
    sending after that many seconds; ``start`` is the first fix time (default now, UTC).
    """
    loop = asyncio.get_running_loop()
    began = time.perf_counter()
    deadline = loop.time() + duration if duration is not None else math.inf
    state = _Run(
        host, port, count, rate, seed, start or datetime.now(UTC), deadline, ack_timeout
    )  # fmt: skip
    await asyncio.gather(*(state.tracker(device) for device in range(devices)))
    return Stats(
        devices=devices,
        logged_in=state.logged_in,
        sent=dict(state.sent),
        acks=dict(state.acks),
        errors=dict(state.errors),
        seconds=round(time.perf_counter() - began, 3),
    )


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("expected host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    """Command line: prints the stats as JSON; exit 1 if any tracker failed."""
    parser = argparse.ArgumentParser(prog="python -m devices.gt06.simulator", description=__doc__.split("\n")[0])
    parser.add_argument("--gt06", type=_address, required=True, metavar="HOST:PORT", help="listener address")
    parser.add_argument("--devices", type=int, default=10, help="trackers, one connection each")
    parser.add_argument("--count", type=int, default=100, help="frames per tracker after its login")
    parser.add_argument("--rate", type=float, default=0.0, help="frames per second per tracker (0: no pause)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=None, help="stop sending after this many seconds")
    args = parser.parse_args(argv)
    host, port = args.gt06
    stats = asyncio.run(
        run(host, port, args.devices, args.count, args.rate, args.seed, duration=args.duration)
    )
    sys.stdout.write(msgspec.json.encode(stats).decode() + "\n")
    return 0 if stats.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

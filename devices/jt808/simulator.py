"""JT/T 808 terminal simulator: many terminals over real TCP, for tests, the demo and load.

Each terminal registers (0x0100) and keeps the authentication code from the answer (0x8100),
authenticates (0x0102), then reports what ``devices.gt06.simulator.script`` drives: positions
(0x0200, half with a 4G cell and Wi-Fi access points), alarms as alarm bits, a heartbeat every
tenth step and, every twentieth, a blind-area batch (0x0704) of three stored positions. It waits
for the platform's answer to each message, as terminals do; half the terminals use 2019 headers.

    python -m devices.jt808.simulator --jt808 127.0.0.1:8808 --devices 10 --count 100
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import struct
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import msgspec

from devices.gt06.simulator import Step, script
from devices.jt808 import frames
from gateway.ingest.jt808 import codec

__all__ = ["Stats", "main", "run", "terminal_for"]


class Stats(msgspec.Struct, kw_only=True):
    devices: int = 0
    registered: int = 0
    sent: dict[str, int] = msgspec.field(default_factory=dict)
    answered: dict[str, int] = msgspec.field(default_factory=dict)
    errors: dict[str, int] = msgspec.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and self.registered == self.devices


def terminal_for(device: int, seed: int = 1) -> str:
    """A 12-digit terminal number (the SIM's phone number as the standard has it), distinct per device."""
    return f"0139{(device + seed * 7919) % 100_000_000:08d}"


def _body(step: Step, rng: random.Random) -> bytes:
    located = rng.random() < 0.5
    return frames.location_body(
        step.time, step.latitude, step.longitude, speed_kmh=step.speed_kmh, course=step.course,
        alarms=(step.alarm,) if step.alarm in frames.ALARM_BITS else (), mileage_km=round(rng.uniform(0, 9e4), 1),
        cells=((460, 0, rng.randrange(1, 65535), rng.randrange(1, 2**28)),) if located else (),
        wifi=(":".join(f"{rng.randrange(256):02x}" for _ in range(6)),) if located else (), signal=rng.randrange(32),
    )


class _Answers:
    """The platform's answers on one connection: (msg id, answered serial, result, auth code)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader, self.framer, self.ready = reader, codec.Framer(), []

    async def next(self, timeout: float) -> tuple[int, int, int, str] | None:
        try:
            async with asyncio.timeout(timeout):
                while not self.ready:
                    data = await self.reader.read(4096)
                    if not data:
                        return None
                    for item in self.framer.feed(data):
                        if isinstance(item, codec.FrameError):
                            return None
                        self.ready.append(item)
        except (TimeoutError, ConnectionError):
            return None
        head, body = codec.header(self.ready.pop(0))
        if head.msg_id == codec.REGISTRATION_RESPONSE:
            serial, result = struct.unpack_from(">HB", body)
            return head.msg_id, serial, result, body[3:].decode()
        serial, _, result = struct.unpack_from(">HHB", body)
        return head.msg_id, serial, result, ""


class _Run:
    def __init__(self, host: str, port: int, count: int, rate: float, seed: int, start: datetime,
                 deadline: float, timeout: float) -> None:
        self.host, self.port, self.count, self.rate, self.seed = host, port, count, rate, seed
        self.start, self.deadline, self.timeout = start, deadline, timeout
        self.sent: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.registered = 0

    async def terminal(self, device: int) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError):
            self.errors["connect"] += 1
            return
        try:
            await self._session(device, reader, writer)
        except ConnectionError:
            self.errors["connection_lost"] += 1
        finally:
            writer.transport.abort()

    async def _send(self, writer: asyncio.StreamWriter, answers: _Answers, kind: str, data: bytes,
                    serial: int) -> tuple[int, int, int, str] | None:
        writer.write(data)
        self.sent[kind] += 1
        await writer.drain()
        answer = await answers.next(self.timeout)
        if answer is None:
            self.errors[f"no_answer_{kind}"] += 1
        elif answer[1] != serial or answer[2] != 0:
            self.errors[f"refused_{kind}"] += 1
            return None
        else:
            self.answered[kind] += 1
        return answer

    async def _session(self, device: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rng = random.Random(f"{self.seed}/{device}/jt808")
        terminal = terminal_for(device, self.seed)
        version = 1 if device % 2 else None  # half speak the 2019 header
        answers = _Answers(reader)
        loop = asyncio.get_running_loop()
        answer = await self._send(writer, answers, "registration", frames.registration(terminal, 1, version), 1)
        if answer is None:
            return
        if await self._send(writer, answers, "authentication",
                            frames.authentication(terminal, 2, answer[3], version), 2) is None:
            return
        self.registered += 1
        serial = 2
        steps = list(script(device, self.count, self.seed, self.start))
        for i, step in enumerate(steps):
            if loop.time() > self.deadline:
                break
            serial = serial % 0xFFFF + 1
            if step.kind == "heartbeat":
                kind, data = "heartbeat", frames.heartbeat(terminal, serial, version)
            elif i % 20 == 14:
                kind = "batch"
                data = frames.batch(terminal, serial, [_body(s, rng) for s in steps[max(0, i - 3) : i]], True, version)
            else:
                kind, data = step.kind, frames.position(terminal, serial, _body(step, rng), version)
            if await self._send(writer, answers, kind, data, serial) is None:
                return
            if self.rate:
                await asyncio.sleep(1 / self.rate)


async def run(host: str, port: int, devices: int = 10, count: int = 100, rate: float = 0.0, seed: int = 1, *,
              duration: float | None = None, start: datetime | None = None, timeout: float = 10.0) -> Stats:
    """Run ``devices`` terminals at once, each sending up to ``count`` messages after authenticating."""
    loop = asyncio.get_running_loop()
    began = time.perf_counter()
    deadline = loop.time() + duration if duration is not None else math.inf
    state = _Run(host, port, count, rate, seed, start or datetime.now(UTC), deadline, timeout)
    await asyncio.gather(*(state.terminal(device) for device in range(devices)))
    return Stats(devices=devices, registered=state.registered, sent=dict(state.sent), answered=dict(state.answered),
                 errors=dict(state.errors), seconds=round(time.perf_counter() - began, 3))


def main(argv: list[str] | None = None) -> int:
    """Command line: prints the stats as JSON; exit 1 if any terminal failed."""
    parser = argparse.ArgumentParser(prog="python -m devices.jt808.simulator", description=__doc__.split("\n")[0])
    parser.add_argument("--jt808", required=True, metavar="HOST:PORT", help="listener address")
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--count", type=int, default=100, help="messages per terminal after authentication")
    parser.add_argument("--rate", type=float, default=0.0, help="messages per second per terminal (0: no pause)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=None)
    args = parser.parse_args(argv)
    host, _, port = args.jt808.rpartition(":")
    stats = asyncio.run(run(host.strip("[]") or "127.0.0.1", int(port), args.devices, args.count, args.rate,
                            args.seed, duration=args.duration))
    sys.stdout.write(msgspec.json.encode(stats).decode() + "\n")
    return 0 if stats.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Publish a seed system's simulated traffic to any MQTT broker, e.g. to load-test a deployment.

    python -m devices.simulate --system smartjac --url mqtt://localhost:1883 --count 1000 --rate 200

Credentials come from ``MQTT_USERNAME`` / ``MQTT_PASSWORD`` (never from the command line, where
other users could read them in the process list). ``mqtts://`` uses TLS with the system's
trusted CAs. ``--system jimi-gt06 --gt06 host:port`` instead drives GT06 trackers over TCP, via
``devices.gt06.simulator``, and ``--system jimi-jt808 --jt808 host:port`` JT/T 808 terminals, via
``devices.jt808.simulator``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import os
import ssl
import sys
import time
from collections.abc import Iterable
from types import ModuleType
from typing import BinaryIO
from urllib.parse import urlsplit

import aiomqtt
import msgspec

from devices.common import Sample
from devices.jimi_tracksolid import simulator as jimi_tracksolid
from devices.jimi_wifikit import simulator as jimi_wifikit
from devices.mijack_power_inlock import simulator as mijack_power_inlock
from devices.smartjac import simulator as smartjac
from devices.smartlocker_jenix import simulator as smartlocker_jenix

__all__ = ["SYSTEMS", "Summary", "client_for", "main", "publish"]

SYSTEMS: dict[str, ModuleType] = {
    m.SYSTEM: m for m in (smartlocker_jenix, jimi_tracksolid, jimi_wifikit, mijack_power_inlock, smartjac)
}
GT06 = "jimi-gt06"
JT808 = "jimi-jt808"
TCP_SYSTEMS = (GT06, JT808)
_WINDOW = 256  # QoS 1 publishes awaiting their PUBACK at once: one at a time would be RTT-bound


class Summary(msgspec.Struct, frozen=True):
    sent: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def line(self, label: str) -> str:
        return f"{label}: sent {self.sent} messages in {self.seconds:.2f} s ({self.rate:.1f} msg/s)"


def client_for(url: str, identifier: str | None = None) -> aiomqtt.Client:
    """An MQTT 5 client for ``mqtt://host:port`` or ``mqtts://host:port``; credentials from the env."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {url!r}")
    tls = parts.scheme == "mqtts"
    return aiomqtt.Client(
        parts.hostname,
        parts.port or (8883 if tls else 1883),
        username=os.environ.get("MQTT_USERNAME") or None,
        password=os.environ.get("MQTT_PASSWORD") or None,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=ssl.create_default_context() if tls else None,
    )


async def publish(
    url: str,
    samples: Iterable[Sample],
    rate: float = 0,
    count: int | None = None,
    qos: int = 0,
    duration: float | None = None,
) -> Summary:
    """Publish ``samples`` to the broker at ``url``; stop after ``count`` messages or ``duration`` s.

    ``rate`` is messages per second (0: as fast as the client goes), paced against the start time
    so a slow moment is caught up rather than lost. With ``qos`` 1 the call returns once every
    message is acknowledged by the broker.
    """
    stream = iter(samples) if count is None else itertools.islice(samples, count)
    pending: set[asyncio.Task[None]] = set()
    sent = 0
    client = client_for(url)
    client.pending_calls_threshold = _WINDOW + 16  # the window is deliberate: no warning per publish
    async with client:
        start = time.monotonic()
        deadline = None if duration is None else start + duration
        for sample in stream:
            if rate > 0 and (wait := start + sent / rate - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            if deadline is not None and time.monotonic() >= deadline:
                break
            if qos == 0:
                await client.publish(sample.topic, sample.payload, qos=0)
            else:
                pending.add(asyncio.create_task(client.publish(sample.topic, sample.payload, qos=qos)))
                if len(pending) >= _WINDOW:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
            sent += 1
        if pending:
            for task in asyncio.as_completed(pending):
                await task
        return Summary(sent, time.monotonic() - start)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m devices.simulate", description=__doc__.split("\n\n")[0])
    p.add_argument("--system", required=True, choices=[*SYSTEMS, *TCP_SYSTEMS])
    p.add_argument("--url", help="broker, mqtt://host:port or mqtts://host:port (MQTT systems)")
    p.add_argument("--gt06", metavar="HOST:PORT", help="GT06 TCP listener (--system jimi-gt06)")
    p.add_argument("--jt808", metavar="HOST:PORT", help="JT/T 808 TCP listener (--system jimi-jt808)")
    p.add_argument("--rate", type=float, default=0, help="messages per second, 0 = as fast as possible (default)")
    p.add_argument("--count", type=int, help="stop after N messages")
    p.add_argument("--seconds", type=float, help="stop after S seconds")
    p.add_argument("--devices", type=int, default=10, help="simulated devices (default 10)")
    p.add_argument("--seed", type=int, default=1, help="random seed: the same seed sends the same bytes (default 1)")
    p.add_argument("--qos", type=int, choices=(0, 1), default=0)
    p.add_argument("--dump", metavar="FILE", help='write the stream as JSON lines {"topic", "payload"} '
                   "(for gateway diff) instead of publishing; - is stdout; --count defaults to 1000")
    args = p.parse_args(argv)
    if args.dump:
        if args.system in TCP_SYSTEMS:
            p.error("--dump writes MQTT systems' messages; tracker frames have no topic")
        return args
    if args.system == GT06 and not args.gt06:
        p.error("--system jimi-gt06 needs --gt06 host:port")
    if args.system == JT808 and not args.jt808:
        p.error("--system jimi-jt808 needs --jt808 host:port")
    if args.system not in TCP_SYSTEMS and not args.url:
        p.error(f"--system {args.system} needs --url mqtt://host:port")
    return args


async def _gt06(args: argparse.Namespace) -> int:
    """GT06 trackers over TCP: ``--count`` and ``--rate`` are per tracker there (one connection each)."""
    host, _, port = args.gt06.rpartition(":")
    try:
        gt06 = importlib.import_module("devices.gt06.simulator")
    except ImportError as exc:
        print(
            f"--system {GT06}: the GT06 tracker simulator (devices/gt06/simulator.py) is not available: {exc}",
            file=sys.stderr,
        )
        return 2
    bounds = {"count": args.count} if args.count is not None else {}
    if args.seconds is not None:
        bounds["duration"] = args.seconds
    stats = await gt06.run(
        host.strip("[]") or "127.0.0.1", int(port), devices=args.devices, rate=args.rate, seed=args.seed, **bounds
    )
    print(
        Summary(sum(stats.sent.values()), stats.seconds).line(GT06) + ("" if stats.ok else f", errors {stats.errors}")
    )
    return 0 if stats.ok else 1


def dump(samples: Iterable[Sample], count: int, out: BinaryIO) -> int:
    """Write ``count`` samples as ``{"topic": ..., "payload": ...}`` lines (the payload's own bytes)."""
    n = 0
    for sample in itertools.islice(samples, count):
        out.write(b'{"topic":' + msgspec.json.encode(sample.topic) + b',"payload":' + sample.payload + b"}\n")
        n += 1
    return n


async def _jt808(args: argparse.Namespace) -> int:
    """JT/T 808 terminals over TCP: ``--count`` and ``--rate`` are per terminal (one connection each)."""
    from devices.jt808 import simulator

    host, _, port = args.jt808.rpartition(":")
    bounds = {"count": args.count} if args.count is not None else {}
    if args.seconds is not None:
        bounds["duration"] = args.seconds
    stats = await simulator.run(host.strip("[]") or "127.0.0.1", int(port), devices=args.devices, rate=args.rate,
                                seed=args.seed, **bounds)
    errors = "" if stats.ok else f", errors {stats.errors}"
    print(Summary(sum(stats.sent.values()), stats.seconds).line(JT808) + errors)
    return 0 if stats.ok else 1


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.dump:
        samples = SYSTEMS[args.system].messages(devices=args.devices, seed=args.seed)
        if args.dump == "-":
            dump(samples, args.count or 1000, sys.stdout.buffer)
            sys.stdout.flush()
        else:
            with open(args.dump, "wb") as f:
                n = dump(samples, args.count or 1000, f)
            print(f"{args.system}: wrote {n} messages to {args.dump}", file=sys.stderr)
        return 0
    try:
        if args.system == GT06:
            return asyncio.run(_gt06(args))
        if args.system == JT808:
            return asyncio.run(_jt808(args))
        samples = SYSTEMS[args.system].messages(devices=args.devices, seed=args.seed)
        summary = asyncio.run(
            publish(args.url, samples, rate=args.rate, count=args.count, qos=args.qos, duration=args.seconds)
        )
    except KeyboardInterrupt:
        return 130
    except (aiomqtt.MqttError, OSError, ValueError) as exc:
        print(f"{args.system}: {exc}", file=sys.stderr)
        return 1
    print(summary.line(args.system))
    return 0


if __name__ == "__main__":
    sys.exit(main())

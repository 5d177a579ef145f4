"""Local sessions left behind by a change of worker count or client id.

The local session is persistent: whatever the gateway has not acknowledged waits
for its client id. Change ``--workers`` or ``[local] client_id`` and the old ids'
sessions stay at the broker, still subscribed (in a shared-subscription group they
even keep receiving their share of new messages), with no one to collect them
until ``session_expiry_s`` ends them and their messages are lost.

So worker 0 remembers the local client ids in use in a small file next to the
spool (``<spool>.sessions.json``, with the broker it names). At start, each id
recorded for the same broker but no longer in use is *swept*: connected with its
session, unsubscribed so nothing new arrives, its queue taken through the engine
and uplink like any message (acknowledged only once safe), connected again until a
connection finds nothing queued, and only then its session ended (a clean-start
connection with session expiry 0). An id stays on
record until its sweep finished, so a crash mid-sweep retries at the next start.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import aiomqtt
import msgspec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.service.acks import acker, enable_manual_acks
from gateway.service.client import Client
from gateway.service.config import Endpoint
from gateway.telemetry import get_logger

__all__ = ["SessionRecord", "Sweeper", "local_ids", "record_path"]

log = get_logger("gateway.sessions")
IDLE_S = 1.0  # a swept session is drained once nothing arrived for this long and all is acknowledged
MAX_SWEEP_S = 600.0  # give up (and retry at the next start) if a sweep takes longer


class SessionRecord(msgspec.Struct, kw_only=True):
    broker: str  # host:port of the local broker the ids' sessions live on
    ids: list[str]
    filters: list[str] = []  # what those sessions subscribed to (unsubscribed first when swept)


def local_ids(client_id: str, workers: int) -> list[str]:
    """The local client ids a run with ``workers`` workers uses (see Worker)."""
    return [client_id] if workers <= 1 else [f"{client_id}-{i}" for i in range(workers)]


def record_path(spool_path: str) -> Path:
    return Path(spool_path + ".sessions.json")


def read_record(path: Path, broker: str) -> SessionRecord:
    """What is recorded for ``broker`` (nothing for another broker, or an unreadable file: logged)."""
    empty = SessionRecord(broker=broker, ids=[])
    try:
        rec = msgspec.json.decode(path.read_bytes(), type=SessionRecord)
    except FileNotFoundError:
        return empty
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("session_record_unreadable", file=str(path), error=exc.__class__.__name__)
        return empty
    if rec.broker != broker:
        log.warning("session_record_other_broker", file=str(path), recorded=rec.broker, broker=broker,
                    note="sessions on the previous broker are not swept")
        return empty
    return rec


def write_record(path: Path, broker: str, ids: Iterable[str], filters: Iterable[str]) -> None:
    """Atomically replace the record (0600)."""
    tmp = path.with_name(path.name + ".tmp")
    data = msgspec.json.encode(SessionRecord(broker=broker, ids=sorted(set(ids)), filters=sorted(set(filters))))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# What the worker does with a message: take(topic, payload, qos, mid, dup, ack) where ack(mid) acknowledges it.
Take = Callable[[str, bytes, int, int, bool, Callable[[int], None]], None]


class Sweeper:
    """Takes what waits in old sessions, then ends them."""

    def __init__(self, endpoint: Endpoint, take: Take, filters: Callable[[], Iterable[str]]) -> None:
        self.endpoint = endpoint
        self.take = take
        self.filters = filters  # the subscriptions an old session may hold

    async def sweep(self, client_id: str) -> int:
        """Drain and end ``client_id``'s session; returns the messages taken. Raises on connection errors.

        MQTT cannot say that a session's queue is empty, but a broker sends what is queued
        right after CONNACK: so the session is connected again until one connection takes
        nothing within ``IDLE_S``, and only then ended.
        """
        deadline = time.monotonic() + MAX_SWEEP_S
        total = 0
        first = True
        while True:
            taken = await self._drain_once(client_id, deadline, unsubscribe=first)
            total += taken
            first = False
            if not taken:
                break
        # Everything taken is acknowledged and nothing more came: end the session (clean start, expiry 0).
        ep = self.endpoint
        user, password = ep.credentials()
        end = Properties(PacketTypes.CONNECT)
        end.SessionExpiryInterval = 0
        async with Client(ep.host, ep.port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
                          clean_start=True, properties=end, keepalive=ep.keepalive_s, username=user,
                          password=password, tls_context=ep.tls_context(), timeout=10):
            pass
        return total

    async def _drain_once(self, client_id: str, deadline: float, unsubscribe: bool) -> int:
        """One connection with the old session: take messages until all are acknowledged and
        nothing arrived (or was acknowledged) for ``IDLE_S``."""
        ep = self.endpoint
        user, password = ep.credentials()
        pending = 0
        taken = 0
        last = time.monotonic()
        raw_ack: Callable[[int], None] | None = None

        def ack(mid: int) -> None:
            nonlocal pending, last
            pending -= 1
            last = time.monotonic()  # the broker may now send more (its in-flight window has room)
            if raw_ack is not None:
                raw_ack(mid)

        def on_message(topic: str, payload: bytes, qos: int, mid: int, dup: bool) -> None:
            nonlocal pending, taken, last
            last = time.monotonic()
            taken += 1
            if qos:
                pending += 1
            self.take(topic, payload, qos, mid, dup, ack)

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = ep.session_expiry_s  # kept while we drain: a failure here loses nothing
        props.ReceiveMaximum = ep.max_inflight
        client = Client(ep.host, ep.port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
                        clean_start=False, properties=props, keepalive=ep.keepalive_s, username=user,
                        password=password, tls_context=ep.tls_context(), max_inflight_messages=ep.max_inflight,
                        on_message=on_message, timeout=10)
        enable_manual_acks(client)
        raw_ack = acker(client)
        async with client:
            if unsubscribe:  # leave the groups first, so no new message is routed to this session
                await client.unsubscribe(sorted(set(self.filters())))
            last = max(last, time.monotonic())
            while pending or time.monotonic() - last < IDLE_S:
                if client.is_disconnected:
                    raise aiomqtt.MqttError("the local broker went away during a session sweep")
                if time.monotonic() > deadline:
                    raise TimeoutError("session sweep did not finish")
                await asyncio.sleep(0.05)
        return taken

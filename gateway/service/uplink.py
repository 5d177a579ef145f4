"""The cloud side: publish minimised messages, or spool them while the cloud is away.

Every item carries the acknowledgement of where it came from (a local-broker
PUBACK, or a GT06 frame's ACK). It is called exactly when the item is safe: the
cloud acknowledged it, or the spool committed it. That is the whole at-least-once
contract; everything below keeps it while preserving each device's order:

- **direct**: connected, and nothing older waits in the spool. Items are published
  straight away; the cloud's PUBACK acknowledges them.
- **spooling**: otherwise. Items are appended to the spool (one transaction per
  event-loop turn) and acknowledged once committed; a drain task republishes the
  spool oldest-first whenever the cloud is connected, deleting rows as their
  PUBACKs arrive, and switches back to direct only when the spool is empty.
  So a newer message never overtakes an older one.
- If the connection drops with items in flight, those items go to the spool ahead
  of anything newer (some may have arrived: duplicates are allowed, loss is not).
- A full spool refuses items; they are held in memory, unacknowledged, so the
  local broker stops sending (its in-flight window is full) and the backlog waits
  there. Held items whose local connection is gone are dropped: the broker
  redelivers them on the next session.
- Any spool error (disk full, I/O, busy, corrupt) is handled like a full spool:
  the items are held unacknowledged, the write is retried on a timer with backoff,
  and ``spool_writable`` is False (so /readyz says 503) until a write succeeds.
- Memory is bounded: past `HIGH_WATER` items taken but not yet safe, the uplink
  asks the worker to stop reading the local socket (``pressure(True)``); TCP then
  holds the rest back at the broker. Needed because the site broker may send more
  than our Receive Maximum (Mosquitto 2.0 does, once PUBACKs flow).
- The drain is supervised (an exception is logged, counted and the drain restarts)
  and retries on its own timer with backoff, not only when new traffic arrives.
- A message the cloud refuses (PUBACK reason >= 0x80) is retried in later drain
  batches, never ahead of the others; after `REFUSED_TRIES` refusals it moves to the
  spool's quarantine (``gateway spool list|resend|purge``).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import aiomqtt
import msgspec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.service.client import Client
from gateway.service.config import ConfigError, Endpoint, Reconnect
from gateway.spool import Spool, SpoolError
from gateway.telemetry import Metrics, get_logger

__all__ = ["ANY_SESSION", "Backoff", "Delivery", "Provenance", "Session", "Uplink", "describe", "provenance"]

log = get_logger("gateway.uplink")
DRAIN_BATCH = 500
DRAIN_TIMEOUT = 30.0
REFUSED_TRIES = 3  # refusals of one spooled message before it is quarantined
HIGH_WATER = 2000  # items taken but not yet safe: above this, stop reading the local broker
LOW_WATER = 1000  # ... and resume at or below this
IDLE_CHECK_S = 5.0  # the drain looks at a non-empty spool at least this often, traffic or not
_ID_LIKE = re.compile(r"\d|^[^/]{17,}$")


class Provenance(NamedTuple):
    """What the cloud is told about how a message was minimised (built once per policy)."""

    properties: Properties  # MQTT 5 PUBLISH properties: user properties + message expiry
    spooled: bytes  # the same, as stored with a spooled message
    expiry: int | None


class _Stored(msgspec.Struct, array_like=True):
    user: list[tuple[str, str]]
    expiry: int | None


def provenance(user: list[tuple[str, str]], expiry: int | None) -> Provenance:
    return Provenance(_Packed(user, expiry), msgspec.json.encode(_Stored(user, expiry)), expiry)


class _Packed(Properties):
    """PUBLISH properties packed once: paho packs ``Properties`` anew on every publish,
    which costs more than minimising the message (every field name is looked up by
    string manipulation). The provenance of a policy never changes, so pack it once."""

    def __init__(self, user: list[tuple[str, str]], expiry: int | None) -> None:
        super().__init__(PacketTypes.PUBLISH)
        self.UserProperty = list(user)
        if expiry is not None:
            self.MessageExpiryInterval = expiry
        object.__setattr__(self, "_packed", super().pack())  # Properties.__setattr__ only takes MQTT names

    def pack(self) -> bytes:
        return self._packed  # type: ignore[attr-defined]


class Session:
    """The site connection a delivery came on. Its acknowledgement can only be sent on that connection:
    once the connection has ended (``alive`` False) the site broker redelivers the message, so the uplink
    drops the acknowledgement instead of sending it on the next connection."""

    __slots__ = ("alive",)

    def __init__(self) -> None:
        self.alive = True

    def end(self) -> None:
        self.alive = False


ANY_SESSION = Session()  # a delivery whose on-safe callback is valid whatever happens (GT06, JT/T 808, a sweep)


class Delivery(msgspec.Struct):
    """One minimised message from any source (MQTT, GT06, JT/T 808) on its way to the cloud.

    A Struct, not a NamedTuple: one is built per message, in a third of the time."""

    label: str  # policy name: the spool's grouping column (never a device id)
    topic: str  # upstream topic, already minimised
    payload: bytes  # minimised payload
    qos: int
    prov: Provenance  # the policy's provenance, packed once per compiled plan
    ack: Callable[[], None] | None  # on-safe: called once the cloud acknowledged it or the spool committed it
    session: Session = ANY_SESSION  # the site connection ``ack`` belongs to



class Backoff:
    """Capped exponential backoff with full jitter, so a fleet does not reconnect in step."""

    def __init__(self, cfg: Reconnect) -> None:
        self.cfg = cfg
        self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        cap = min(self.cfg.max_s, self.cfg.min_s * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 32)
        return random.uniform(self.cfg.min_s, max(self.cfg.min_s, cap))


async def wait_first(*aws: Any, timeout: float | None = None) -> None:
    """Wait until the first of ``aws`` completes; cancel the waiters we created."""
    tasks = [a if isinstance(a, asyncio.Future) else asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t, a in zip(tasks, aws, strict=True):
            if t is not a:
                if t.done() and not t.cancelled():
                    t.exception()  # retrieved: the caller looks at the state, not at this result
                t.cancel()


class Uplink:
    """The cloud connection, the spool and the drain. Runs on the worker's event loop."""

    def __init__(
        self, endpoint: Endpoint, client_id: str, spool: Spool, metrics: Metrics, reconnect: Reconnect
    ) -> None:
        self.endpoint = endpoint
        self.client_id = client_id
        self.spool = spool
        self.metrics = metrics
        self.reconnect = reconnect
        self.client: Client | None = None
        self.direct = False
        self._window: dict[int, Delivery] = {}  # mid -> item published directly, awaiting PUBACK
        self._overflow: deque[Delivery] = deque()  # direct items waiting for room in the window
        self._limit = endpoint.max_inflight  # min(config, the broker's Receive Maximum) once connected
        self._pending: list[Delivery] = []  # to be spooled at the end of this loop turn
        self._held: list[Delivery] = []  # refused by a full spool, in order
        self._flush_scheduled = False
        self._draining: dict[int, int] = {}  # mid -> spool id
        self._drained: list[int] = []
        self._drain_failed = False
        self._drain_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._connected_once = False
        self._full_logged = False
        self._drain_props: dict[tuple[bytes, int | None], _Packed] = {}
        self._drained_total = 0  # republished from the spool in this outage (for the log)
        self.spool_writable = True  # False from a failed spool write until one succeeds (/readyz)
        self.spool_error = ""  # the kind of the last spool error while not writable
        self._retry_backoff = Backoff(reconnect)
        self._retry_timer: asyncio.TimerHandle | None = None
        self._refused: dict[int, int] = {}  # spool id -> reason, refused in the current drain batch
        self._tries: dict[int, int] = {}  # spool id -> refusals so far
        self._refusal_logged: set[tuple[int, str, str]] = set()
        self.pressure: Callable[[bool], None] | None = None  # set by the worker: pause/resume local reads
        self.paused = False
        self.first_attempt = asyncio.Event()  # set once the first connection attempt is over
        self._update_gauges()

    # -- state seen by the worker ------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.client is not None and not self.client.is_disconnected

    @property
    def backlog(self) -> int:
        """Items taken but not yet safe (in flight to the cloud, to be spooled, or held)."""
        return len(self._window) + len(self._overflow) + len(self._pending) + len(self._held)

    def overloaded(self, factor: float = 1.0) -> bool:
        """Pressure, as a source should see it: more than ``factor`` cloud windows of deliveries are not yet
        safe (a QoS 0 source then drops rather than queue without bound)."""
        return self.backlog > factor * self.endpoint.max_inflight

    @property
    def accepting(self) -> bool:
        """False while the spool is full and items are held back."""
        return not self._held

    # -- the per-message path ------------------------------------------------------------

    def submit(self, item: Delivery) -> None:
        """Take one minimised message; its ``ack`` runs once it is safe."""
        if self.direct:
            if len(self._window) >= self._limit or self._overflow:
                self._overflow.append(item)
                if len(self._overflow) + self._limit >= HIGH_WATER:
                    self._check_pressure()
                return
            if self._publish(item):
                return
            self._go_offline()
        self._pending.append(item)
        if len(self._pending) + len(self._held) >= HIGH_WATER:
            self._check_pressure()
        self._schedule_flush()

    def _check_pressure(self) -> None:
        """Stop reading the local broker above HIGH_WATER items not yet safe; resume at LOW_WATER."""
        backlog = self.backlog
        if not self.paused and backlog >= HIGH_WATER:
            self.paused = True
            if self.pressure is not None:
                self.pressure(True)
        elif self.paused and backlog <= LOW_WATER:
            self.paused = False
            if self.pressure is not None:
                self.pressure(False)

    def _publish(self, item: Delivery) -> bool:
        client = self.client
        mid = client.publish_nowait(item.topic, item.payload, item.qos, item.prov.properties) if client else None
        if mid is None:
            return False
        if item.qos:
            self._window[mid] = item
        else:
            self._done(item)  # QoS 0 upstream (the policy's choice): handed to the socket
        return True

    def _done(self, item: Delivery) -> None:
        if item.ack is not None and item.session.alive:
            item.ack()

    def _on_puback(self, mid: int, failed: int) -> None:
        """``failed``: 0, or the PUBACK's reason code (>= 0x80) when the cloud refused the message."""
        window = self._window
        if mid in window:
            if failed:  # refused (authorisation, quota): spool it in its place; the drain retries, then quarantines
                self.metrics.cloud_refused.labels(_reason(failed)).inc()
                self._go_offline()
                return
            self.metrics.uplink_acked.inc()
            self.metrics.last_forward.set(time.time())
            self._done(window.pop(mid))
            overflow = self._overflow
            while overflow and self.direct and len(window) < self._limit:
                if not self._publish(overflow[0]):
                    self._go_offline()  # the item stays first in line, for the spool
                    break
                overflow.popleft()
            if self.paused:
                self._check_pressure()
            return
        sid = self._draining.pop(mid, None)
        if sid is not None:
            if failed:
                self.metrics.cloud_refused.labels(_reason(failed)).inc()
                self._refused[sid] = failed
            else:
                self.metrics.uplink_acked.inc()
                self.metrics.last_forward.set(time.time())
                self._drained.append(sid)
            if not self._draining:
                self._drain_event.set()

    def _go_offline(self) -> None:
        """Stop publishing directly; what is in flight goes to the spool first, in order."""
        self.direct = False
        if self._window or self._overflow:
            self._pending[:0] = [*self._window.values(), *self._overflow]  # dicts keep publish order
            self._window.clear()
            self._overflow.clear()
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Commit pending (and previously held) items to the spool in one transaction."""
        self._flush_scheduled = False
        items = [i for i in self._held if i.session.alive]
        held = len(items)
        items += [i for i in self._pending if i.session.alive]
        self._pending.clear()
        self._held = []
        if not items:
            if self.paused:
                self._check_pressure()
            return
        try:
            stored = self.spool.append_many(
                [(i.label, i.topic, i.payload, i.qos, i.prov.spooled) for i in items]
            )
        except SpoolError as exc:  # like a full spool: hold, do not acknowledge, retry on a timer
            self._held = items
            self.metrics.spool_refused.inc(len(items) - held)  # each message once
            self._spool_failed(exc)
            self._arm_retry()
            self._check_pressure()
            return
        if self.spool.disk_full:  # stored a prefix only: the rest waits like after an error
            self._held = items[stored:]
            for item in items[:stored]:
                self._done(item)
            self.metrics.spooled.inc(stored)
            self.metrics.spool_refused.inc(len(items) - max(stored, held))
            self._spool_failed(SpoolError("append", "full", "file system full"))
            self._arm_retry()
            self._update_gauges()
            self._check_pressure()
            self._wake.set()
            return
        if not self.spool_writable:
            self.spool_writable, self.spool_error = True, ""
            self._retry_backoff.reset()
            log.info("spool_writable_again", spool_depth=self.spool.depth, spool_bytes=self.spool.bytes)
        self.metrics.spooled.inc(stored)
        for item in items[:stored]:
            self._done(item)
        if stored < len(items):
            self._held = items[stored:]
            # Count each message once: held items (first in ``items``) were counted when first refused.
            self.metrics.spool_refused.inc(len(items) - max(stored, held))
            if not self._full_logged:
                self._full_logged = True
                log.warning(
                    "spool_full",
                    held=len(self._held),
                    spool_bytes=self.spool.bytes,
                    max_bytes=self.spool.max_bytes,
                    action="not acknowledging; backlog waits at the local broker",
                )
        elif self._full_logged:
            self._full_logged = False
            log.info("spool_accepting_again", spool_bytes=self.spool.bytes)
        self._update_gauges()
        self._check_pressure()
        self._wake.set()

    def _spool_failed(self, exc: SpoolError) -> None:
        """Count a spool error; log a failing write once per outage (its kind, never stored data)."""
        self.metrics.spool_errors.labels(exc.op).inc()
        if self.spool_writable or exc.op != "append":
            log.error("spool_error", op=exc.op, kind=exc.kind, held=len(self._held),
                      action="not acknowledging; retrying with backoff")
        if exc.op == "append":
            self.spool_writable, self.spool_error = False, exc.kind

    def _arm_retry(self) -> None:
        """Retry the held items on a timer with backoff: space may come back with no traffic at all."""
        if self._retry_timer is None and not self._stop.is_set():
            def fire() -> None:
                self._retry_timer = None
                if self._held or self._pending:
                    self.flush()

            self._retry_timer = asyncio.get_running_loop().call_later(self._retry_backoff.next_delay(), fire)

    def _update_gauges(self) -> None:
        self.metrics.spool_depth.set(self.spool.depth)
        self.metrics.spool_bytes.set(self.spool.bytes)
        self.metrics.spool_quarantined.set(self.spool.quarantine_depth)

    # -- connection and drain --------------------------------------------------------------

    async def run(self) -> None:
        """Keep the cloud connection up until ``close``; reconnect with backoff and jitter."""
        drain = asyncio.create_task(self._drain_loop(), name="uplink-drain")
        backoff = Backoff(self.reconnect)
        try:
            while not self._stop.is_set():
                try:
                    await self._connect_once(backoff)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._lost()
                    log.warning("cloud_connect_failed", error=describe(exc))
                self.first_attempt.set()
                if self._stop.is_set():
                    break
                await wait_first(self._stop.wait(), timeout=backoff.next_delay())
        finally:
            drain.cancel()

    async def _connect_once(self, backoff: Backoff) -> None:
        ep = self.endpoint
        user, password = ep.credentials()
        client = Client(
            ep.host,
            ep.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True,  # the spool, not the session, holds what is not yet delivered
            keepalive=ep.keepalive_s,
            username=user,
            password=password,
            tls_context=ep.tls_context(),
            # paho's own window rescans every message in flight on each PUBACK (O(window)
            # per message); the uplink keeps the window itself (self._limit) instead.
            max_inflight_messages=0,
            on_puback=self._on_puback,
            timeout=10,
        )
        async with client:
            self._limit = max(1, min(ep.max_inflight, client.receive_maximum))
            self.client = client
            self.metrics.connected.labels("cloud").set(1)
            if self._connected_once:
                self.metrics.reconnects.labels("cloud").inc()
            self._connected_once = True
            backoff.reset()
            log.info("cloud_connected", host=ep.host, port=ep.port, spool_depth=self.spool.depth)
            self.first_attempt.set()
            self._wake.set()
            try:
                await wait_first(client.wait_disconnected(), self._stop.wait())
            finally:
                self._lost()
            if client.is_disconnected:
                exc = client.disconnect_cause
                log.warning("cloud_disconnected", error=describe(exc) if exc else "")

    def _lost(self) -> None:
        self.client = None
        self.metrics.connected.labels("cloud").set(0)
        self._go_offline()
        if self._draining:  # still in the spool: republished after the reconnect
            self._draining.clear()
            self._drain_failed = True
            self._drain_event.set()

    async def _drain_loop(self) -> None:
        """Supervised: an exception is logged and counted, and the drain goes on after a backoff."""
        backoff = Backoff(self.reconnect)
        while not self._stop.is_set():
            try:
                await self._drain_until_stopped(backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, SpoolError):
                    self._spool_failed(exc)
                else:
                    self.metrics.spool_errors.labels("drain").inc()
                    log.error("spool_drain_failed", error=describe(exc), action="drain restarts after a backoff")
                self._draining.clear()
                await wait_first(self._stop.wait(), timeout=backoff.next_delay())

    async def _drain_until_stopped(self, backoff: Backoff) -> None:
        while not self._stop.is_set():
            # Woken by traffic or a (re)connection; and on a timer while anything waits,
            # so that a quiet site's spool drains too.
            idle = self.direct or not self.connected or not (self.spool.depth or self._held or self._pending)
            await wait_first(self._wake.wait(), self._stop.wait(), timeout=None if idle else IDLE_CHECK_S)
            self._wake.clear()
            while self.connected and not self.direct and not self._stop.is_set():
                if await self._drain_batch():
                    backoff.reset()
                else:  # retry on a timer with backoff, whether or not new traffic comes
                    await wait_first(self._stop.wait(), timeout=backoff.next_delay())

    async def _drain_batch(self) -> bool:
        """Republish the oldest spooled batch; False if that failed (retry later)."""
        if self._pending or self._held:
            self.flush()
        entries = self.spool.peek(min(DRAIN_BATCH, self._limit))
        if not entries and (self._pending or self._held):  # the spool refused them, though empty: free its space
            self.spool.compact()
            self.flush()
            return not (self._held or self._pending)  # False: retry after a backoff (this path awaits nothing)
        if not entries:
            if not self._pending and not self._held:
                self.direct = True
                self._full_logged = False
                if not self.spool_writable:  # nothing waits for it, and deletes just went through
                    self.spool_writable, self.spool_error = True, ""
                if self._drained_total:
                    log.info("spool_drained", messages=self._drained_total)
                    self._drained_total = 0
                    self._tries.clear()
                    try:
                        self.spool.compact()  # give the space back, truncate the WAL
                    except SpoolError as exc:
                        self._spool_failed(exc)
            return True
        client = self.client
        assert client is not None
        self._drained = []
        self._refused = {}
        self._drain_failed = False
        self._drain_event.clear()
        now = time.time()
        expired: list[int] = []
        for e in entries:
            stored = msgspec.json.decode(e.properties, type=_Stored)
            expiry = stored.expiry
            if expiry is not None:
                expiry = expiry - int(now - e.created)
                if expiry <= 0:  # the message's MQTT 5 expiry passed while spooled
                    expired.append(e.id)
                    continue
            props = self._drain_props.get((e.properties, expiry))
            if props is None:
                if len(self._drain_props) > 1024:
                    self._drain_props.clear()
                props = self._drain_props[(e.properties, expiry)] = _Packed(stored.user, expiry)
            mid = client.publish_nowait(e.topic, e.payload, e.qos, props)
            if mid is None:
                self._drain_failed = True
                break
            if e.qos:
                self._draining[mid] = e.id
            else:
                self._drained.append(e.id)
        if self._draining:
            await wait_first(self._drain_event.wait(), client.wait_disconnected(), timeout=DRAIN_TIMEOUT)
        ok = not self._draining and not self._drain_failed
        self._draining.clear()
        if expired:
            self.metrics.spool_expired.inc(len(expired))
        drained, self._drained = self._drained, []
        self.spool.delete(drained + expired)  # SpoolError: the supervisor retries; rows stay (duplicates, not loss)
        self._drained_total += len(drained)
        if self._refused:
            ok = self._refusals(entries) and ok
        self._update_gauges()
        if self._held:
            self.flush()  # room was made
        return ok

    def _refusals(self, entries: list[Any]) -> bool:
        """Count this batch's refusals; quarantine what was refused REFUSED_TRIES times.

        False (retry after a backoff) while a refused message still waits for its next try."""
        by_id = {e.id: e for e in entries}
        waiting = False
        refused, self._refused = self._refused, {}
        for sid, reason in refused.items():
            tries = self._tries.get(sid, 0) + 1
            if tries < REFUSED_TRIES:
                self._tries[sid] = tries
                waiting = True
                continue
            self._tries.pop(sid, None)
            dropped = self.spool.quarantine_dropped
            if self.spool.quarantine(sid, reason):
                if self.spool.quarantine_dropped > dropped:
                    self.metrics.spool_quarantine_dropped.inc(self.spool.quarantine_dropped - dropped)
                    if not dropped:  # the first time since start
                        log.warning("spool_quarantine_full", quarantined=self.spool.quarantine_depth,
                                    action="dropping the oldest quarantined messages (counted)")
                entry = by_id.get(sid)
                policy = entry.device if entry is not None else ""
                pattern = topic_pattern(entry.topic) if entry is not None else ""
                if (reason, policy, pattern) not in self._refusal_logged:  # once per kind; the rest are counted
                    self._refusal_logged.add((reason, policy, pattern))
                    log.warning("cloud_refused_quarantined", reason=_reason(reason), policy=policy, topic=pattern,
                                tries=tries, action="moved to the quarantine; see `gateway spool list`",
                                note="further refusals of this kind are only counted")
        return not waiting

    async def close(self, timeout: float) -> None:
        """Shutdown: wait up to ``timeout`` for in-flight PUBACKs, spool the rest, disconnect."""
        deadline = time.monotonic() + timeout
        while self._window and self.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._go_offline()
        self.flush()  # never raises: a failing spool leaves the items unacknowledged at the broker
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        self._stop.set()

    def readiness(self) -> tuple[bool, str]:
        """The uplink's part of /readyz: not ready while the spool cannot write; the quarantine as a detail."""
        details = []
        if not self.spool_writable:
            details.append(f"spool: cannot write ({self.spool_error}); messages wait at the local broker")
        self.spool.refresh()  # `gateway spool purge` may have emptied it meanwhile
        if self.spool.quarantine_depth:
            details.append(f"quarantine: {self.spool.quarantine_depth} message(s) refused by the cloud"
                           " (gateway spool list)")
        return self.spool_writable, "".join(d + "\n" for d in details)


def _reason(code: int) -> str:
    """A PUBACK reason code as a metric label: 0x87 (not authorised), 0x97 (quota exceeded), ..."""
    return f"0x{code:02x}"


def topic_pattern(topic: str) -> str:
    """A topic with id-like levels (digits, or long tokens such as pseudonyms) as ``+``, for a log line."""
    return "/".join("+" if _ID_LIKE.search(level) else level for level in topic.split("/"))


def describe(exc: BaseException | None) -> str:
    """An error for a log line: its class, plus the text of connection errors only.

    MQTT and socket errors say things like "Connection refused", and a ConfigError names
    a key and a file or variable (a password file removed while running); any other
    exception's text could quote a topic or payload, so only its class is logged."""
    if exc is None:
        return ""
    if isinstance(exc, (aiomqtt.MqttError, OSError, ConfigError)):
        return f"{exc.__class__.__name__}: {exc}"
    return exc.__class__.__name__

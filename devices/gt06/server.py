"""GT06 TCP listener: Jimi / Concox trackers in, normalised Tracksolid messages out.

Each connection runs in its own task (``asyncio.start_server`` gives one per client) with its
own framer, deadlines and rate budget, so a silent, slow, flooding or malformed tracker costs
only its own task. A tracker learns nothing but ACKs: the handler is awaited *before* the ACK
is written, so an ACK means the message was handed on, and a slow handler holds back the
tracker that caused the work while the others carry on.

What the service embeds::

    counters = Counters()
    server = await serve("0.0.0.0", 5023, handler, Limits(), counters)
    ...
    await stop(server)   # closes the listener and every tracker connection

``handler(topic, payload)`` gets ``tracksolid/<imei>/<kind>`` and the JSON of a
``devices.jimi_tracksolid.messages`` Struct, the shape ``rules/jimi-tracksolid.toml`` expects.
Logs and counters name events only: never an IMEI, a peer address or a payload value.
"""

from __future__ import annotations

import asyncio
import ipaddress
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from devices.gt06.codec import Frame, FrameError, Framer, ack_for, build_frame, decode_frame
from devices.jimi_tracksolid import messages
from devices.jimi_tracksolid.topics import topic as tracksolid_topic
from gateway.telemetry import get_logger

__all__ = ["GAUGES", "Counters", "Handler", "Limits", "serve", "stop", "time_reply", "to_message"]

Handler = Callable[[str, bytes], Awaitable[None]]

log = get_logger("gt06")


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Per-listener limits; the defaults suit a real fleet, so ``Limits()`` is safe to deploy.

    - ``max_connections``: a tracker holds one connection all day, so this is the fleet size
      one process serves; the process also needs as many open files.
    - ``max_buffer``: bytes held per connection, and the largest frame accepted. Real frames
      are under 300 bytes (login 18-22, position 36-40, Wi-Fi/LBS lists a few hundred).
    - ``idle_timeout``: seconds without a byte after login. Trackers send a heartbeat every
      3-5 minutes by default; 600 s drops a dead connection after about two missed ones.
    - ``login_timeout``: seconds from connect to an accepted login. A tracker logs in as soon
      as its TCP connection is up; this also ends connections that send nothing at all.
    - ``max_frames_per_second`` / ``frame_burst``: a token bucket per connection. A tracker
      sends at most about one fix a second, but uploads the fixes it stored while offline
      in a burst after reconnecting, hence the burst. Over the rate the connection is not
      closed: reading pauses, so TCP slows the tracker down and nothing is lost.
    - ``max_bad_frames``: framing/CRC/content errors tolerated per connection before it is
      closed (a line-noise bit flip is rare; a stream of them is not a tracker).
    - ``allowed_imeis``: if set, logins from other IMEIs are refused without an ACK.
    """

    max_connections: int = 10_000
    max_buffer: int = 4096
    idle_timeout: float = 600.0
    login_timeout: float = 30.0
    max_frames_per_second: float = 20.0
    frame_burst: int = 100
    max_bad_frames: int = 32
    allowed_imeis: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.frame_burst < 1 or self.max_bad_frames < 0:
            raise ValueError("max_connections and frame_burst must be >= 1, max_bad_frames >= 0")
        if self.max_buffer < 64:  # room for any login or position frame
            raise ValueError("max_buffer must be at least 64 bytes")
        if min(self.idle_timeout, self.login_timeout, self.max_frames_per_second) <= 0:
            raise ValueError("timeouts and max_frames_per_second must be positive")


class Counters(msgspec.Struct, kw_only=True):
    """Event counts for Prometheus; plain ints, so counting costs an attribute add.

    All are monotonic counters except ``open_connections`` (a gauge). The error names match
    ``FrameError.reason``. Keyed by event only: labels by IMEI or peer would be both a privacy
    leak and an unbounded label set.
    """

    connections: int = 0  # accepted
    open_connections: int = 0  # gauge: connections now open
    over_limit: int = 0  # refused: max_connections reached
    logins: int = 0  # logins accepted and acknowledged
    rejected_imei: int = 0  # logins refused by the allow-list
    frames: int = 0  # frames that passed framing and CRC
    messages: int = 0  # normalised messages the handler accepted
    acks: int = 0  # ACK frames written
    time_requests: int = 0  # 0x8A requests answered with the server's UTC time
    unknown_protocol: int = 0  # well-formed frames of a protocol we do not decode (skipped)
    before_login: int = 0  # frames other than login before a login (skipped, no ACK)
    garbage: int = 0  # runs of bytes without a start marker
    bad_length: int = 0
    bad_stop: int = 0
    bad_crc: int = 0
    bad_content: int = 0  # valid frame, impossible fields (BCD, date, coordinates)
    oversize: int = 0  # a frame announced larger than max_buffer
    login_timeout: int = 0  # closed: no login within login_timeout (includes silent ones)
    idle_closed: int = 0  # closed: nothing received for idle_timeout
    rate_limited: int = 0  # times a connection was paused by the frame rate limit
    too_many_errors: int = 0  # closed: more than max_bad_frames errors
    handler_errors: int = 0  # handler raised; connection closed, frame not acknowledged

    def snapshot(self) -> dict[str, int]:
        """Name -> value, for an exporter."""
        return msgspec.structs.asdict(self)


GAUGES = frozenset({"open_connections"})
_ERROR_REASONS = frozenset({"garbage", "bad_length", "bad_stop", "bad_crc", "bad_content", "oversize"})

PROTO_TIME_REQUEST = 0x8A

# --- normalisation ---------------------------------------------------------------------------

_MESSAGE_TYPES: dict[str, type[messages.Message]] = {
    "location": messages.Location,
    "heartbeat": messages.Heartbeat,
    "alarm": messages.Alarm,
    "login": messages.Login,
}
# Frame fields each message carries: everything the two share except the IMEI, which for all
# but the login comes from the connection. Protocol, serial, type id and upload mode stay
# behind: they describe the link, not the tracker's state, and the pack does not name them.
_SHARED = {
    kind: tuple(
        name for name in cls.__struct_fields__ if name in Frame.__struct_fields__ and name != "imei"
    )
    for kind, cls in _MESSAGE_TYPES.items()
}


def to_message(frame: Frame, imei: str, login_ip: str | None = None) -> tuple[str, bytes] | None:
    """``(topic, JSON payload)`` of the Tracksolid profile for a decoded frame; None if it has none.

    ``login_ip`` (the peer address) goes into the login message only, where the Tracksolid
    profile records it and the pack truncates it.
    """
    cls = _MESSAGE_TYPES.get(frame.type)
    if cls is None:
        return None
    fields: dict[str, Any] = {}
    for name in _SHARED[frame.type]:
        value = getattr(frame, name)
        if value is not None:
            fields[name] = value
    if cls is messages.Login and login_ip is not None:
        fields["login_ip"] = login_ip
    return tracksolid_topic(imei, frame.type), messages.encode(cls(imei=imei, **fields))


def time_reply(serial: int, now: datetime | None = None) -> bytes:
    """Answer to a 0x8A time request: YY MM DD hh mm ss in UTC, as Traccar sends it.

    Trackers without a GPS fix ask for the time so their LBS reports carry a usable stamp.
    """
    t = (now or datetime.now(UTC)).astimezone(UTC)
    stamp = bytes([t.year - 2000, t.month, t.day, t.hour, t.minute, t.second])
    return build_frame(PROTO_TIME_REQUEST, stamp, serial)


def _peer_ip(writer: asyncio.StreamWriter) -> str | None:
    peer = writer.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)  # a dual-stack socket reports ::ffff:a.b.c.d
    return str(mapped or address)


# --- connections -----------------------------------------------------------------------------


class _Closed(Exception):
    """Ends a connection; ``reason`` is the counter to raise (or "" for none)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class _Connection:
    """One tracker: framing, login state, deadlines and rate budget."""

    def __init__(
        self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.listener = listener
        self.limits = listener.limits
        self.counters = listener.counters
        self.reader = reader
        self.writer = writer
        self.framer = Framer(max_frame=self.limits.max_buffer, max_buffer=self.limits.max_buffer)
        self.imei: str | None = None
        self.errors = 0
        self.loop = asyncio.get_running_loop()
        self.login_deadline = self.loop.time() + self.limits.login_timeout
        self.tokens = float(self.limits.frame_burst)
        self.refilled = self.loop.time()

    async def run(self) -> None:
        while True:
            data = await self._read()
            if not data:
                return  # the tracker closed; frames before its EOF were all handled
            for item in self.framer.feed(data):
                await self._throttle()
                if isinstance(item, FrameError):
                    self._error(item)
                else:
                    await self._frame(item)
            async with asyncio.timeout(self.limits.idle_timeout):
                await self.writer.drain()  # a tracker that never reads its ACKs is dropped

    async def _read(self) -> bytes:
        if self.imei is None:
            deadline, reason = self.login_deadline, "login_timeout"
        else:
            deadline, reason = self.loop.time() + self.limits.idle_timeout, "idle_closed"
        try:
            async with asyncio.timeout_at(deadline):
                return await self.reader.read(self.limits.max_buffer)
        except TimeoutError:
            raise _Closed(reason) from None

    async def _throttle(self) -> None:
        """Token bucket: wait (not reading, so TCP pushes back) when the budget is spent."""
        now = self.loop.time()
        rate = self.limits.max_frames_per_second
        self.tokens = min(self.limits.frame_burst, self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        if self.tokens < 1:
            self.counters.rate_limited += 1
            await asyncio.sleep((1 - self.tokens) / rate)
            self.tokens, self.refilled = 1.0, self.loop.time()
        self.tokens -= 1

    def _error(self, error: FrameError) -> None:
        reason = error.reason if error.reason in _ERROR_REASONS else "bad_content"
        setattr(self.counters, reason, getattr(self.counters, reason) + 1)
        self.errors += 1
        if self.errors > self.limits.max_bad_frames:
            raise _Closed("too_many_errors")

    async def _frame(self, raw: bytes) -> None:
        try:
            frame = decode_frame(raw)
        except FrameError as exc:
            self._error(exc)
            return
        counters = self.counters
        counters.frames += 1
        if frame.type == "unknown" and frame.protocol != PROTO_TIME_REQUEST:
            counters.unknown_protocol += 1
            return
        if frame.type == "login":
            assert frame.imei is not None  # the decoder guarantees it for logins
            allowed = self.limits.allowed_imeis
            if allowed is not None and frame.imei not in allowed:
                raise _Closed("rejected_imei")  # no ACK: the tracker is not ours to serve
            imei = frame.imei
        elif self.imei is None:
            counters.before_login += 1  # no ACK either: an unacknowledged tracker logs in again
            return
        elif frame.protocol == PROTO_TIME_REQUEST:
            self.writer.write(time_reply(frame.serial))
            counters.time_requests += 1
            return
        else:
            imei = self.imei
        message = to_message(frame, imei, _peer_ip(self.writer) if frame.type == "login" else None)
        if message is not None:
            try:
                await self.listener.handler(*message)
            except Exception as exc:  # the service's fault, not the tracker's: no ACK, reconnect
                counters.handler_errors += 1
                log.error("gt06 handler failed", error=type(exc).__name__)
                raise _Closed() from None
            counters.messages += 1
        if frame.type == "login":
            self.imei = imei
            counters.logins += 1
        ack = ack_for(frame)
        if ack is not None:
            self.writer.write(ack)
            counters.acks += 1


class _Listener:
    """State shared by a listener's connections."""

    def __init__(self, handler: Handler, limits: Limits, counters: Counters) -> None:
        self.handler = handler
        self.limits = limits
        self.counters = counters
        self.open: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counters = self.counters
        if counters.open_connections >= self.limits.max_connections:
            counters.over_limit += 1
            writer.transport.abort()
            return
        counters.connections += 1
        counters.open_connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.open[task] = writer
        try:
            await _Connection(self, reader, writer).run()
        except _Closed as closed:
            if closed.reason:
                setattr(counters, closed.reason, getattr(counters, closed.reason) + 1)
                log.debug("gt06 connection closed", reason=closed.reason)
        except (ConnectionError, TimeoutError):
            pass  # reset by the tracker, or an ACK it never read
        except asyncio.CancelledError:
            pass  # ``stop``: ending normally spares asyncio's stream callback a cancelled task
        except Exception as exc:  # a bug must cost one connection, not the listener
            log.error("gt06 connection failed", error=type(exc).__name__)
        finally:
            counters.open_connections -= 1
            del self.open[task]
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a peer that does not read must not hold the socket
            else:
                writer.close()  # graceful: the ACKs already written still reach the tracker


_LISTENERS: weakref.WeakKeyDictionary[asyncio.Server, _Listener] = weakref.WeakKeyDictionary()


async def serve(
    host: str,
    port: int,
    handler: Handler,
    limits: Limits | None = None,
    counters: Counters | None = None,
) -> asyncio.Server:
    """Start accepting trackers on ``host:port`` (port 0: any free one); returns at once.

    ``counters`` is updated in place; pass the object the exporter reads. Stop with ``stop``.
    """
    limits = limits or Limits()
    listener = _Listener(handler, limits, counters if counters is not None else Counters())
    server = await asyncio.start_server(
        listener.accept,
        host,
        port,
        limit=limits.max_buffer,
        backlog=min(limits.max_connections, 4096),  # a fleet reconnects at once after an outage
    )
    _LISTENERS[server] = listener
    log.info("gt06 listening", port=server.sockets[0].getsockname()[1])
    return server


async def stop(server: asyncio.Server, timeout: float = 5.0) -> None:
    """Stop accepting, then end every open tracker connection.

    ``Server.close`` alone leaves accepted connections running (and from Python 3.12
    ``wait_closed`` waits for them, i.e. for trackers that never hang up).
    """
    server.close()
    listener = _LISTENERS.pop(server, None)
    if listener is not None and listener.open:
        tasks = list(listener.open)
        for writer in listener.open.values():
            writer.transport.abort()  # a waiting read sees EOF and the connection ends
        _, busy = await asyncio.wait(tasks, timeout=timeout)
        for task in busy:  # stuck in the handler
            task.cancel()
        if busy:
            await asyncio.wait(busy, timeout=timeout)
    await server.wait_closed()

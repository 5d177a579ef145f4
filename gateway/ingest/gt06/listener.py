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
``gateway.ingest.tracksolid`` Struct, the shape ``rules/jimi-tracksolid.toml`` expects.
Logs and counters name events only: never an IMEI, a peer address or a payload value.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable

import msgspec

from gateway.ingest import tcp
from gateway.ingest.gt06.codec import (
    PROTO_TIME_REQUEST,
    FrameError,
    Framer,
    UncheckedFrame,
    ack_for,
    decode_frame,
    time_reply,
    timezone_minutes,
)
from gateway.ingest.gt06.limits import Limits
from gateway.ingest.gt06.record import to_message
from gateway.telemetry import get_logger

__all__ = ["GAUGES", "Counters", "FileLimitError", "Handler", "Limits", "ensure_file_limit", "serve", "stop"]

Handler = Callable[[str, bytes], Awaitable[None]]

log = get_logger("gt06")


class Counters(msgspec.Struct, kw_only=True):
    """Event counts for Prometheus; plain ints, so counting costs an attribute add.

    All are monotonic counters except ``open_connections`` (a gauge). The error names match
    ``FrameError.reason``. Keyed by event only: labels by IMEI or peer would be both a privacy
    leak and an unbounded label set.
    """

    connections: int = 0  # accepted
    open_connections: int = 0  # gauge: connections now open
    over_limit: int = 0  # refused: max_connections reached
    peer_limited: int = 0  # refused: max_connections_per_peer reached for the peer's address
    logins: int = 0  # logins accepted and acknowledged
    rejected_imei: int = 0  # logins refused by the allow-list
    frames: int = 0  # frames that passed framing and CRC
    messages: int = 0  # normalised messages the handler accepted
    acks: int = 0  # ACK frames written
    time_requests: int = 0  # 0x8A requests answered with the server's UTC time
    address_requests: int = 0  # 0x2A requests answered "not available" (no address lookup here)
    unknown_protocol: int = 0  # well-formed frames of a protocol we do not decode (skipped)
    before_login: int = 0  # frames other than login before a login (skipped, no ACK)
    garbage: int = 0  # runs of bytes without a start marker
    bad_length: int = 0
    bad_stop: int = 0
    bad_crc: int = 0
    bad_crc_accepted: int = 0  # frames passed despite a wrong CRC (accept_bad_crc)
    bad_content: int = 0  # valid frame, impossible fields (BCD, date, coordinates)
    oversize: int = 0  # a frame announced larger than max_buffer
    login_timeout: int = 0  # closed: no login within login_timeout (includes silent ones)
    idle_closed: int = 0  # closed: no valid frame for idle_timeout after login
    rate_limited: int = 0  # times a connection was paused by the frame rate limit
    too_many_errors: int = 0  # closed: more than max_bad_frames errors
    handler_errors: int = 0  # handler raised; connection closed, frame not acknowledged

    def snapshot(self) -> dict[str, int]:
        """Name -> value, for an exporter."""
        return msgspec.structs.asdict(self)


GAUGES = frozenset({"open_connections"})
_ITEMS_PER_TURN = 32  # frames or errors one connection handles before other tasks get a turn
_ERROR_REASONS = frozenset({"garbage", "bad_length", "bad_stop", "bad_crc", "bad_content", "oversize"})


# --- connections -----------------------------------------------------------------------------


_Closed = tcp.Closed  # ends a connection; ``reason`` is the counter to raise


class _Connection:
    """One tracker: framing, login state, deadlines and rate budget."""

    def __init__(
        self,
        listener: _Listener,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str | None,
    ) -> None:
        self.listener = listener
        self.limits = limits = listener.limits
        self.counters = listener.counters
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.framer = Framer(
            max_frame=limits.max_buffer, max_buffer=limits.max_buffer, strict_crc=not limits.accept_bad_crc
        )
        self.imei: str | None = None
        self.utc_offset = 0  # minutes east: the login's time zone, for the device's local times
        self.errors = 0
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + limits.login_timeout  # login, then idle: see _alive
        self.tokens = float(limits.frame_burst)
        self.refilled = self.loop.time()

    async def run(self) -> None:
        while True:
            data = await self._read()
            if not data:
                return  # the tracker closed; frames before its EOF were all handled
            for work, item in enumerate(self.framer.items(data), 1):  # stops where the bad-frame budget closes us
                await self._throttle()
                if isinstance(item, FrameError):
                    self._error(item)
                else:
                    await self._frame(item)
                if work % _ITEMS_PER_TURN == 0:
                    await asyncio.sleep(0)  # let the other trackers and the MQTT side run
            async with asyncio.timeout(self.limits.idle_timeout):
                await self.writer.drain()  # a tracker that never reads its ACKs is dropped
            await asyncio.sleep(0)  # a read returns at once while bytes are queued: one read per turn

    def _alive(self) -> None:
        """A valid frame from a logged-in tracker: it may stay ``idle_timeout`` longer."""
        self.deadline = self.loop.time() + self.limits.idle_timeout

    async def _read(self) -> bytes:
        deadline, reason = self.deadline, "login_timeout" if self.imei is None else "idle_closed"
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
            frame = decode_frame(raw, strict_crc=not isinstance(raw, UncheckedFrame), utc_offset=self.utc_offset)
        except FrameError as exc:
            self._error(exc)
            return
        counters = self.counters
        counters.frames += 1
        if isinstance(raw, UncheckedFrame):
            counters.bad_crc_accepted += 1
        if self.imei is not None:
            self._alive()
        if frame.type == "unknown":
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
        elif frame.type == "request":  # answered, nothing to forward
            if frame.protocol == PROTO_TIME_REQUEST:
                self.writer.write(time_reply(frame.serial))
                counters.time_requests += 1
            else:
                self.writer.write(ack_for(frame, raw) or b"")
                counters.address_requests += 1
            return
        else:
            imei = self.imei
        message = to_message(frame, imei, self.peer if frame.type == "login" else None)
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
            self.utc_offset = timezone_minutes(frame.timezone)
            self._alive()
            counters.logins += 1
        ack = ack_for(frame, raw)
        if ack is not None:
            self.writer.write(ack)
            counters.acks += 1


class _Listener(tcp.Listener):
    """State shared by a listener's connections (slots per listener and per peer: ``tcp.Listener``)."""

    def __init__(self, handler: Handler, limits: Limits, counters: Counters) -> None:
        super().__init__("gt06", limits.max_connections, limits.max_connections_per_peer, counters)
        self.handler = handler
        self.limits = limits

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str | None
    ) -> None:
        await _Connection(self, reader, writer, peer).run()


FILES_RESERVED = tcp.FILES_RESERVED
FileLimitError = tcp.FileLimitError


def ensure_file_limit(max_connections: int) -> int:
    """Make room for ``max_connections`` tracker sockets (see ``gateway.ingest.tcp.ensure_file_limit``)."""
    return tcp.ensure_file_limit(max_connections, "gt06")


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
    ensure_file_limit(limits.max_connections)
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


def update_limits(server: asyncio.Server, limits: Limits) -> None:
    """A reload (e.g. a new IMEI allow-list): connections accepted from now on use ``limits``."""
    tcp.update_limits(_LISTENERS.get(server), limits)


async def stop(server: asyncio.Server, grace: float = 5.0) -> None:
    """Stop accepting, then end every open tracker connection.

    ``Server.close`` alone leaves accepted connections running (and from Python 3.12
    ``wait_closed`` waits for them, i.e. for trackers that never hang up). A connection
    still busy in the handler after ``grace`` seconds is cancelled.
    """
    await tcp.stop(server, _LISTENERS.pop(server, None), grace)

"""JT/T 808 TCP listener: terminals in, Tracksolid records out, answers only once safe.

The same discipline as the GT06 listener: one task per connection with its own framer,
deadlines and rate budget; the handler is awaited *before* the platform's answer (0x8001 /
0x8100) is written, so an answer means the message was handed on and a slow handler holds
back only the terminal that caused the work. Logs and counters name events only: never a
terminal number, a peer address or a payload value.

A connection serves one terminal. It must register (0x0100, answered with 0x8100 and an
authentication code) or authenticate (0x0102 with that code) before its data is taken; the
code is an HMAC of the terminal number under a key of the site's key file, so it survives
restarts and is the same on every worker and host. With ``allowed_terminals`` set, other
terminals are refused (0x8100 result 4, "terminal not in the database") and disconnected.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from gateway.ingest import tcp
from gateway.ingest.jt808 import codec, record
from gateway.ingest.jt808.codec import FrameError, Header, Message
from gateway.ingest.jt808.limits import Limits
from gateway.telemetry import get_logger

__all__ = ["GAUGES", "Counters", "Handler", "Limits", "auth_code", "serve", "stop", "update_limits"]

Handler = Callable[[str, bytes], Awaitable[None]]
log = get_logger("jt808")


class Counters(msgspec.Struct, kw_only=True):
    """Event counts for Prometheus (``open_connections`` is a gauge); never per terminal."""

    connections: int = 0
    open_connections: int = 0
    over_limit: int = 0
    peer_limited: int = 0
    registrations: int = 0
    authentications: int = 0
    auth_failed: int = 0  # a wrong authentication code (answered with a failure)
    rejected_terminal: int = 0  # not on the allow-list: refused and disconnected
    before_auth: int = 0  # data before registration or authentication (answered with a failure)
    logouts: int = 0
    frames: int = 0
    messages: int = 0  # records the handler accepted
    responses: int = 0  # answers written
    unknown_message: int = 0  # answered "not supported"
    subpackages: int = 0  # parts of split messages received
    garbage: int = 0
    bad_escape: int = 0
    bad_length: int = 0
    bad_checksum: int = 0
    bad_content: int = 0
    encrypted: int = 0
    oversize: int = 0
    login_timeout: int = 0
    idle_closed: int = 0
    rate_limited: int = 0
    too_many_errors: int = 0
    handler_errors: int = 0

    def snapshot(self) -> dict[str, int]:
        return msgspec.structs.asdict(self)


GAUGES = frozenset({"open_connections"})
_ERRORS = frozenset({"garbage", "bad_escape", "bad_length", "bad_checksum", "bad_content", "encrypted", "oversize"})
_ITEMS_PER_TURN = 32


def auth_code(key: bytes, terminal: str) -> str:
    """The authentication code a registered terminal presents: stable per key and terminal."""
    digest = hmac.new(key, b"jt808-auth|" + terminal.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:10]).decode()


class _Connection:
    def __init__(self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 peer: str | None) -> None:
        self.listener, self.limits, self.counters = listener, listener.limits, listener.counters
        self.reader, self.writer, self.peer = reader, writer, peer
        self.framer = codec.Framer(self.limits.max_buffer)
        self.terminal: str | None = None
        self.errors = 0
        self.serial = 0
        self.parts: dict[tuple[int, int], dict[int, bytes]] = {}  # (msg id, parts) -> index -> body
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + self.limits.login_timeout
        self.bucket = tcp.TokenBucket(self.limits.max_frames_per_second, self.limits.frame_burst)

    async def run(self) -> None:
        while True:
            reason = "login_timeout" if self.terminal is None else "idle_closed"
            try:
                async with asyncio.timeout_at(self.deadline):
                    data = await self.reader.read(self.limits.max_buffer)
            except TimeoutError:
                raise tcp.Closed(reason) from None
            if not data:
                return
            for work, item in enumerate(self.framer.feed(data), 1):
                if not self.bucket.take():
                    self.counters.rate_limited += 1
                    await self.bucket.wait()
                if isinstance(item, FrameError):
                    self._error(item)
                else:
                    await self._frame(item)
                if work % _ITEMS_PER_TURN == 0:
                    await asyncio.sleep(0)
            async with asyncio.timeout(self.limits.idle_timeout):
                await self.writer.drain()
            await asyncio.sleep(0)

    def _error(self, error: FrameError) -> None:
        reason = error.reason if error.reason in _ERRORS else "bad_content"
        setattr(self.counters, reason, getattr(self.counters, reason) + 1)
        self.errors += 1
        if self.errors > self.limits.max_bad_frames:
            raise tcp.Closed("too_many_errors")

    def _answer(self, frame: bytes) -> None:
        self.writer.write(frame)
        self.counters.responses += 1

    def _next_serial(self) -> int:
        self.serial = (self.serial + 1) & 0xFFFF
        return self.serial

    def _respond(self, head: Header, result: int = codec.RESULT_OK) -> None:
        self._answer(codec.general_response(head, self._next_serial(), result))

    async def _frame(self, inner: bytes) -> None:
        message: codec.Message | None
        try:
            message = codec.decode(inner)
        except FrameError as exc:
            self._error(exc)
            return
        self.counters.frames += 1
        head = message.header
        if head.packets:
            message = self._reassemble(message, inner)
            if message is None:
                return
            head = message.header
        allowed = self.limits.allowed_terminals
        if allowed is not None and head.terminal not in allowed:
            if head.msg_id == codec.REGISTRATION:
                self._answer(codec.registration_response(head, self._next_serial(), codec.REGISTER_UNKNOWN_TERMINAL))
            raise tcp.Closed("rejected_terminal")
        await self._message(head, message)

    def _reassemble(self, part: Message, inner: bytes) -> Message | None:
        """Hold the parts of a split message; the whole once every part is here."""
        head = part.header
        if head.packets > self.limits.max_subpackages:
            self._error(FrameError("oversize"))
            return None
        self.counters.subpackages += 1
        _, body = codec.header(inner)
        key = (head.msg_id, head.packets)
        parts = self.parts.setdefault(key, {})
        if len(self.parts) > 4:  # a few split messages at once at most; the oldest is abandoned
            self.parts.pop(next(iter(self.parts)))
        parts[head.index] = body
        if len(parts) < head.packets:
            self._respond(head)  # a part is only in memory; the whole is answered once safe
            return None
        del self.parts[key]
        whole = b"".join(parts[i] for i in range(1, head.packets + 1))
        try:
            return codec.decode_body(msgspec.structs.replace(head, packets=0, index=0), whole)
        except FrameError as exc:
            self._error(exc)
            return None

    async def _message(self, head: Header, message: Message) -> None:
        counters, msg_id = self.counters, head.msg_id
        if msg_id == codec.REGISTRATION:
            code = auth_code(self.listener.auth_key, head.terminal)  # it authenticates with this next
            counters.registrations += 1
            self._answer(codec.registration_response(head, self._next_serial(), codec.REGISTER_OK, code))
            return
        if msg_id == codec.AUTHENTICATION:
            expected = auth_code(self.listener.auth_key, head.terminal)
            if not hmac.compare_digest((message.auth_code or "").encode(), expected.encode()):
                counters.auth_failed += 1
                self._respond(head, codec.RESULT_FAILURE)  # the terminal registers again
                return
            await self._hand_on([record.login(head.terminal, self.peer)])
            self._start(head.terminal)
            counters.authentications += 1
            self._respond(head)
            return
        if self.terminal is None or head.terminal != self.terminal:
            counters.before_auth += 1
            self._respond(head, codec.RESULT_FAILURE)
            return
        self.deadline = self.loop.time() + self.limits.idle_timeout
        if msg_id in (codec.LOCATION, codec.BATCH_LOCATION):
            await self._hand_on([record.position(head.terminal, p) for p in message.positions])
            self._respond(head)
        elif msg_id == codec.HEARTBEAT:
            await self._hand_on([record.heartbeat(head.terminal)])
            self._respond(head)
        elif msg_id == codec.LOGOUT:
            counters.logouts += 1
            self._respond(head)
            self.terminal = None
            self.deadline = self.loop.time() + self.limits.login_timeout
        elif msg_id == 0x0001:
            pass  # the terminal's answer to a platform message: nothing to answer
        else:
            counters.unknown_message += 1
            self._respond(head, codec.RESULT_UNSUPPORTED)

    def _start(self, terminal: str) -> None:
        self.terminal = terminal
        self.deadline = self.loop.time() + self.limits.idle_timeout

    async def _hand_on(self, records: list[tuple[str, bytes]]) -> None:
        """Every record to the handler (in order) before the message is answered."""
        for topic, payload in records:
            try:
                await self.listener.handler(topic, payload)
            except Exception as exc:  # the service's fault: no answer, the terminal resends
                self.counters.handler_errors += 1
                log.error("jt808 handler failed", error=type(exc).__name__)
                raise tcp.Closed() from None
            self.counters.messages += 1


class _Listener(tcp.Listener):
    def __init__(self, handler: Handler, limits: Limits, counters: Counters, auth_key: bytes) -> None:
        super().__init__("jt808", limits.max_connections, limits.max_connections_per_peer, counters)
        self.handler, self.limits, self.auth_key = handler, limits, auth_key

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               peer: str | None) -> None:
        await _Connection(self, reader, writer, peer).run()


_LISTENERS: weakref.WeakKeyDictionary[asyncio.Server, _Listener] = weakref.WeakKeyDictionary()


async def serve(host: str, port: int, handler: Handler, auth_key: bytes, limits: Limits | None = None,
                counters: Counters | None = None) -> asyncio.Server:
    """Start accepting terminals on ``host:port`` (port 0: any free one). Stop with ``stop``."""
    limits = limits or Limits()
    tcp.ensure_file_limit(limits.max_connections, "jt808")
    listener = _Listener(handler, limits, counters if counters is not None else Counters(), auth_key)
    server = await asyncio.start_server(listener.accept, host, port, limit=limits.max_buffer,
                                        backlog=min(limits.max_connections, 4096))
    _LISTENERS[server] = listener
    log.info("jt808 listening", port=server.sockets[0].getsockname()[1])
    return server


def update_limits(server: asyncio.Server, limits: Limits) -> None:
    """A reload (e.g. a new allow-list): connections accepted from now on use ``limits``."""
    tcp.update_limits(_LISTENERS.get(server), limits)


async def stop(server: asyncio.Server, grace: float = 5.0) -> None:
    listener: Any = _LISTENERS.pop(server, None)
    await tcp.stop(server, listener, grace)

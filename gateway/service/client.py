"""A subclass of ``aiomqtt.Client`` that owns the per-message packet path (pinned: aiomqtt 2.5, paho 2.2).

Why: at broker speed, paho's Python per packet costs several times the minimisation
itself: each incoming PUBLISH becomes an ``MQTTMessage`` with a ``Properties`` object,
each PUBACK is queued as a dict and logged, each outgoing PUBLISH builds and packs its
``Properties`` and goes through two locks and an ``OrderedDict``. aiomqtt adds a task,
an ``asyncio.wait``, an Event and a timer per message. The gateway needs none of that: it
handles each message synchronously on the event loop thread and tracks its own PUBACKs.

So the packets that are the traffic are handled here, straight from one socket buffer:

- **in**: the socket is read in 256 KiB chunks; whole packets are cut from the buffer.
  PUBLISH (QoS 0/1) goes to ``on_message(topic, payload, qos, mid, dup)`` (MQTT 5
  properties are skipped: the gateway subscribes without topic aliases and reads none);
  PUBACK goes to ``on_puback(mid, reason)`` (0, or a refusal's code >= 0x80). No object is built per packet beyond the
  topic and payload themselves.
- **out**: ``publish_nowait`` encodes a PUBLISH into the write buffer (pre-packed
  properties may be passed as bytes), ``puback`` appends four bytes; the buffer is
  written with one ``send`` per event-loop turn, or as soon as 16 KiB of PUBLISHes
  wait (about 40 tracker messages: a 256 KiB read is some 600 messages, and the cloud
  should not wait for the last of them to see the first), and a writer is registered
  only if the socket would block.
- **everything else** (CONNACK, SUBACK, UNSUBACK, PINGRESP, DISCONNECT, AUTH, QoS 2,
  and PUBACKs of paho's own publishes) is fed to paho as whole packets through its
  ``_sock_recv``, so aiomqtt and paho keep the connection's lifecycle: CONNECT, TLS,
  SUBSCRIBE, keepalive, disconnect and its reasons.

Delivery starts only once ``async with`` has entered: PUBLISH packets that arrive with
the CONNACK (a persistent session's queue) wait in the buffer until the caller has seen
the connection, so their acknowledgements belong to it.

Everything here relies on aiomqtt/paho internals (``_client``, ``_loop``, ``_disconnected``,
``_on_socket_*``, paho's ``_sock_recv``/``_sock_send``, ``_sock``, ``_last_mid``,
``_out_packet``, ``_out_messages``, ``_manual_ack``, ``_last_bytes_received``, ``_last_msg_out``, ``_protocol``);
tests/test_service_client.py pins them.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable
from struct import Struct
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.client import Client as PahoClient
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["Client", "OnMessage", "OnPuback", "fixed_header"]

OnMessage = Callable[[str, bytes, int, int, bool], None]  # topic, payload, qos, mid, dup
OnPuback = Callable[[int, int], None]  # mid, 0 or the refusal's reason code (>= 0x80)

READ_SIZE = 256 * 1024
FLUSH_AT = 16 * 1024  # PUBLISHes waiting to be written: send now instead of at the end of the loop turn
CLOSE_WAIT_S = 1.0  # a clean disconnect's bound on sending what is buffered and on the broker's close
_DISCONNECTING = paho._ConnectionState.MQTT_CS_DISCONNECTING
_PUBACK = Struct("!BBH").pack
_U16 = Struct("!H").pack
_NO_PROPS = b"\x00"


def fixed_header(first: int, length: int) -> bytes:
    """An MQTT fixed header: the first byte and the remaining length as a variable byte integer."""
    if length < 128:
        return bytes((first, length))
    out = bytearray((first,))
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def _await_broker_close(sock: Any, deadline: float) -> None:
    """After a clean DISCONNECT, wait (until ``deadline``) for the broker to close the connection.

    Why: a new session with the same client id (a restarting worker reconnects at once)
    takes the old one over, and Mosquitto then discards what it has not yet read of the
    old connection: the PUBACKs written just before DISCONNECT were lost and their
    messages delivered twice (tests/test_service_client.py, under load). The broker
    closes only after it has handled DISCONNECT, so everything before it has counted.
    Whatever else it sends meanwhile is unacknowledged, so it is redelivered later."""
    sock.shutdown(socket.SHUT_WR)
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        if not sock.recv(65536):
            return


class _Eof(Exception):
    """The socket reached end of file (fed to paho as an empty read)."""


class Client(aiomqtt.Client):
    """aiomqtt.Client with its own PUBLISH/PUBACK path, callback delivery and coalesced writes."""

    def __init__(
        self,
        *args: Any,
        on_message: OnMessage | None = None,
        on_puback: OnPuback | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._thread_id = threading.get_ident()  # aiomqtt requires creation on the loop thread
        c = self._client
        self._v5 = c._protocol == paho.MQTTv5
        self._flush_scheduled = False
        self._live = False  # CONNACK accepted and socket open: publish_nowait/puback may write
        self._hold = False  # PUBLISH delivery waits until __aenter__ has returned
        self._reading_paused = False  # backpressure: see pause_reading
        self._rest = b""  # bytes read but not yet a whole packet
        self._chunks: list[bytes] = []  # a large packet's pieces until it is complete
        self._chunks_len = 0
        self._need = 0  # bytes the first incomplete packet needs (0: unknown)
        self._feed = b""  # one whole packet for paho's reader
        self._feed_pos = 0
        self._feed_end: BaseException | None = None  # socket error or _Eof, shown to paho once the feed is empty
        self._wbuf = bytearray()
        self._writer_fd: int | None = None
        self._sock: Any = None
        self.receive_maximum = 65535
        # Instance attributes shadow paho's methods of the same name (paho 2.x: the only
        # places it touches the socket for MQTT traffic).
        c._sock_recv = self._sock_recv  # type: ignore[method-assign]
        c._sock_send = self._sock_send  # type: ignore[method-assign]
        self._on_message_cb = on_message
        self._on_puback_cb = on_puback
        # paho logs every packet at debug level; the formatting checks cost per message,
        # and connection failures surface as aiomqtt exceptions that the gateway logs itself.
        c.disable_logger()
        if on_message is not None:  # what paho still delivers: QoS 2 (the gateway subscribes at QoS 1)
            c.on_message = lambda _c, _u, m: on_message(m.topic, bytes(m.payload), m.qos, m.mid, m.dup)

    @property
    def paho(self) -> PahoClient:
        return self._client

    async def __aenter__(self) -> Client:
        self._hold = True
        try:
            await super().__aenter__()
        finally:
            self._hold = False
            if self._rest:  # PUBLISHes that came with the CONNACK: after the caller's first step
                self._loop.call_soon(self._resume)
        return self

    def _on_connect(self, client: PahoClient, userdata: Any, flags: Any, reason_code: ReasonCode,
                    properties: Properties | None = None) -> None:
        # MQTT 5: the broker's Receive Maximum bounds our unacknowledged QoS 1 publishes.
        self.receive_maximum = getattr(properties, "ReceiveMaximum", 65535) if properties is not None else 65535
        self._live = not getattr(reason_code, "is_failure", False)
        super()._on_connect(client, userdata, flags, reason_code, properties)

    async def wait_disconnected(self) -> None:
        """Return (or raise the cause) once the connection is gone."""
        await asyncio.shield(self._disconnected)

    @property
    def is_disconnected(self) -> bool:
        return self._disconnected.done()

    @property
    def disconnect_cause(self) -> BaseException | None:
        """Why the connection ended (None while connected, or after a clean disconnect)."""
        done = self._disconnected
        return done.exception() if done.done() and not done.cancelled() else None

    # -- the per-message path: out ---------------------------------------------------------

    def publish_nowait(self, topic: str, payload: bytes, qos: int,
                       properties: Properties | bytes | None = None) -> int | None:
        """Queue a PUBLISH; return its packet id (its PUBACK comes to ``on_puback``), or None
        if not connected. QoS 0 returns 0: the message is on its way.

        ``properties`` (MQTT 5) may be pre-packed bytes (``Properties.pack()``, length included).
        """
        if not self._live:
            return None
        t = topic.encode()
        if not t or len(t) > 65535 or b"+" in t or b"#" in t or b"\x00" in t:
            raise ValueError("invalid topic for PUBLISH")
        if self._v5:
            props = _NO_PROPS if properties is None else properties if properties.__class__ is bytes \
                else properties.pack()  # type: ignore[union-attr]
        else:
            props = b""
        if qos:
            c = self._client
            mid = c._last_mid + 1  # paho's counter: SUBSCRIBEs share the packet id space
            if mid == 65536:
                mid = 1
            c._last_mid = mid
            w = self._wbuf
            w += fixed_header(0x30 | qos << 1, 4 + len(t) + len(props) + len(payload))
            w += _U16(len(t))
            w += t
            w += _U16(mid)
        else:
            mid = 0
            w = self._wbuf
            w += fixed_header(0x30, 2 + len(t) + len(props) + len(payload))
            w += _U16(len(t))
            w += t
        w += props
        w += payload
        if len(w) >= FLUSH_AT and self._writer_fd is None:  # (a socket that would block says when it can take more)
            self._flush()
        elif not self._flush_scheduled:
            self._schedule_flush()
        return mid

    def puback(self, mid: int) -> None:
        """Acknowledge an incoming QoS 1 PUBLISH (manual acknowledgement). Nothing to do once
        the connection is gone: the broker redelivers the message in the next session."""
        if self._live:
            self._wbuf += _PUBACK(0x40, 2, mid)
            if not self._flush_scheduled:
                self._schedule_flush()

    # -- the per-message path: in ----------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        try:
            while True:
                try:
                    data = sock.recv(READ_SIZE)
                except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    return
                except OSError as exc:
                    self._end(exc)
                    return
                if not data:
                    self._end(_Eof())
                    return
                self._client._last_bytes_received = time.monotonic()  # paho's keepalive
                self._received(data)
                if self._client._sock is not sock:
                    return  # closed while handling
                pending = getattr(sock, "pending", None)  # TLS: decrypted bytes no readiness event announces
                if pending is None or not pending():
                    return
        except Exception as exc:
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)

    def _received(self, data: bytes) -> None:
        if self._need:  # a large packet arrives in pieces: join them once, when it is complete
            if not self._chunks:
                self._chunks.append(self._rest)
                self._chunks_len = len(self._rest)
            self._chunks.append(data)
            self._chunks_len += len(data)
            if self._chunks_len < self._need:
                return
            data = b"".join(self._chunks)
            self._chunks, self._chunks_len, self._need = [], 0, 0
        elif self._rest:
            data = self._rest + data
        self._rest = data
        self._need = 0
        self._parse()

    def _resume(self) -> None:
        try:
            if self._client._sock is not None:
                self._parse()
        except Exception as exc:
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)

    def _parse(self) -> None:
        """Handle every whole packet in ``self._rest``; keep the incomplete tail."""
        buf = self._rest
        n = len(buf)
        pos = 0
        on_message = self._on_message_cb
        on_puback = self._on_puback_cb
        c = self._client
        v5 = self._v5
        auto_ack = not c._manual_ack  # as paho: acknowledge after the callback unless manual acks are on
        try:
            while n - pos >= 2:
                head = buf[pos]
                length = buf[pos + 1]
                start = pos + 2
                if length & 0x80:  # variable byte integer, up to 4 bytes
                    length &= 0x7F
                    shift = 7
                    while True:
                        if start >= n:
                            return
                        if shift > 21:
                            raise aiomqtt.MqttError("malformed packet: remaining length over 4 bytes")
                        byte = buf[start]
                        start += 1
                        length |= (byte & 0x7F) << shift
                        shift += 7
                        if not byte & 0x80:
                            break
                end = start + length
                if end > n:
                    self._need = end - pos  # _received gathers that many before parsing again
                    return
                kind = head >> 4
                if kind == 3 and on_message is not None and head & 6 != 6:  # PUBLISH, QoS 0 or 1
                    if self._hold or self._reading_paused:
                        return
                    qos = (head >> 1) & 3
                    p = start + 2 + (buf[start] << 8 | buf[start + 1])
                    topic = buf[start + 2 : p].decode("utf-8", "replace")
                    if qos:
                        mid = buf[p] << 8 | buf[p + 1]
                        p += 2
                    else:
                        mid = 0
                    if v5:  # skip the properties: a variable byte integer length, then the block
                        plen = buf[p]
                        p += 1
                        if plen & 0x80:
                            plen &= 0x7F
                            shift = 7
                            while True:
                                byte = buf[p]
                                p += 1
                                plen |= (byte & 0x7F) << shift
                                shift += 7
                                if not byte & 0x80:
                                    break
                        p += plen
                    if p > end:
                        raise aiomqtt.MqttError("malformed PUBLISH: header longer than the packet")
                    pos = end
                    on_message(topic, buf[p:end], qos, mid, bool(head & 8))
                    if qos and auto_ack:
                        self.puback(mid)
                elif kind == 4 and length >= 2 and (mid := buf[start] << 8 | buf[start + 1]) not in c._out_messages:
                    pos = end  # PUBACK of a publish_nowait (paho's own publishes are in _out_messages)
                    if on_puback is not None:
                        on_puback(mid, buf[start + 2] if length > 2 and buf[start + 2] >= 0x80 else 0)
                else:
                    self._feed = buf[pos:end]
                    self._feed_pos = 0
                    pos = end
                    c.loop_read()
                    if c._sock is None:
                        return
        finally:
            self._rest = buf[pos:] if pos else buf

    def _end(self, exc: BaseException) -> None:
        """The socket failed or closed: let paho see it (its disconnect handling runs)."""
        self._feed_end = exc
        self._client.loop_read()

    def _sock_recv(self, bufsize: int) -> bytes:
        """paho's reader, served one whole packet at a time from ``_parse``."""
        feed, pos = self._feed, self._feed_pos
        if pos >= len(feed):
            end = self._feed_end
            if end is None:
                raise BlockingIOError()
            if isinstance(end, _Eof):
                return b""
            raise end
        chunk = feed[pos : pos + bufsize]
        self._feed_pos = pos + len(chunk)
        return chunk

    # -- writes ----------------------------------------------------------------------------

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._client._sock is None:
            raise ConnectionError("socket closed")
        self._wbuf += buf
        self._schedule_flush()
        return len(buf)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if threading.get_ident() == self._thread_id:
                self._loop.call_soon(self._flush)
            else:  # paho's connect() runs in an executor thread
                self._loop.call_soon_threadsafe(self._flush)

    def _on_socket_register_write(self, client: PahoClient, userdata: Any, sock: Any) -> None:
        self._schedule_flush()

    def _on_socket_unregister_write(self, client: PahoClient, userdata: Any, sock: Any) -> None:
        pass  # paho's view; our own writer follows self._wbuf

    def _flush(self) -> None:
        """Let paho queue its packets into the buffer, then write the buffer once."""
        self._flush_scheduled = False
        client = self._client
        try:
            if client._out_packet:
                client.loop_write()
            sock = client._sock
            if sock is None or not self._wbuf:
                self._set_writer(None)
                return
            try:
                sent = sock.send(self._wbuf)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0
            if sent:
                client._last_msg_out = time.monotonic()  # paho's keepalive
                del self._wbuf[:sent]
            self._set_writer(sock.fileno() if self._wbuf else None)
        except Exception as exc:
            self._set_writer(None)
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)

    def _set_writer(self, fd: int | None) -> None:
        if fd == self._writer_fd:
            return
        if self._writer_fd is not None:
            self._loop.remove_writer(self._writer_fd)
        if fd is not None:
            self._loop.add_writer(fd, self._flush)
        self._writer_fd = fd

    # -- socket lifecycle --------------------------------------------------------------------

    def _on_socket_open(self, client: PahoClient, userdata: Any, sock: Any) -> None:
        """Our reader instead of aiomqtt's (which calls paho's ``loop_read`` per packet)."""

        def start() -> None:
            self._sock = sock
            self._rest, self._chunks, self._chunks_len, self._need = b"", [], 0, 0
            self._feed, self._feed_pos, self._feed_end = b"", 0, None
            self._reading_paused = False  # a new connection; the worker re-applies the uplink's pressure
            self._loop.add_reader(sock.fileno(), self._on_readable)
            self._misc_task = self._loop.create_task(self._misc_loop())

        self._loop.call_soon_threadsafe(start)

    def pause_reading(self, paused: bool) -> None:
        """Stop (True) or resume (False) taking messages; on the event loop thread only.

        Backpressure for a broker that sends more than our Receive Maximum (Mosquitto
        2.0 does, once PUBACKs flow): unread data stays in the kernel and TCP holds the
        rest back at the broker, where it is safe (not acknowledged). Paused past twice
        the keepalive, paho ends the connection and the broker redelivers on the next."""
        if paused == self._reading_paused:
            return
        self._reading_paused = paused
        sock = self._sock
        if sock is None or self._client._sock is not sock:
            return
        fd: int = self._sock.fileno()
        if paused:
            self._loop.remove_reader(fd)
        else:
            self._loop.add_reader(fd, self._on_readable)
            self._loop.call_soon(self._resume)  # whole packets already buffered get no readiness event

    def _on_socket_close(self, client: PahoClient, userdata: Any, sock: Any) -> None:
        self._live = False
        # paho closes the socket right after "writing" DISCONNECT, which here only reached
        # our buffer: send what is buffered first (the PUBACKs before it matter most).
        clean = client._state == _DISCONNECTING  # our DISCONNECT is the buffer's last packet
        if self._wbuf or clean:
            deadline = time.monotonic() + CLOSE_WAIT_S
            try:
                sock.settimeout(CLOSE_WAIT_S)
                sock.sendall(self._wbuf)
                if clean:
                    _await_broker_close(sock, deadline)
            except (OSError, ValueError):
                pass  # the connection is gone anyway; unacknowledged messages are redelivered
            self._wbuf.clear()
        if threading.get_ident() == self._thread_id:
            self._set_writer(None)
        else:
            self._loop.call_soon_threadsafe(self._set_writer, None)
        super()._on_socket_close(client, userdata, sock)

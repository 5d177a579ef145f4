"""A small subclass of ``aiomqtt.Client`` for the gateway's hot paths (pinned: aiomqtt 2.5).

Why: aiomqtt's own message path costs far more than the minimisation. Per message
``async for message in client.messages`` creates a task and an ``asyncio.wait``,
converts paho's message into aiomqtt's, and ``await client.publish()`` creates an
Event and a ``wait_for`` timer; every write is registered through
``call_soon_threadsafe`` (a self-pipe write and a wake-up). The gateway needs none
of that: it handles each message synchronously, in paho's callback, on the event
loop thread, and tracks its own PUBACKs. So this class:

- hands paho's ``MQTTMessage`` straight to ``on_message`` (no queue, no task);
- reports PUBACKs to ``on_puback(mid, reason)`` (0, or the refusal's code) and offers ``publish_nowait``;
- buffers the socket: paho reads a packet with three or more ``recv`` calls
  (command byte, each length byte, body) and sends each packet with its own
  ``send``. Here ``recv`` is served from one 64 KiB read, and sends are gathered
  into one buffer written once per event-loop turn (a writer is registered only
  if the socket would block).

Connection handling, TLS and the context manager stay aiomqtt's. Everything here
relies on aiomqtt 2.5 internals (``_client``, ``_loop``, ``_disconnected``,
``_on_publish``, ``_on_socket_register_write``); tests/test_service_client.py pins
them, and ``gateway/service/acks.py`` is the one place that switches on manual acks.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["Client", "OnMessage", "OnPuback"]

OnMessage = Callable[[paho.MQTTMessage], None]
OnPuback = Callable[[int, int], None]  # (mid, 0 or the refusal's reason code >= 0x80)


class Client(aiomqtt.Client):
    """aiomqtt.Client with callback delivery, fire-and-track publishes and coalesced writes."""

    def __init__(
        self,
        *args: Any,
        on_message: OnMessage | None = None,
        on_puback: OnPuback | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._thread_id = threading.get_ident()  # aiomqtt requires creation on the loop thread
        self._flush_scheduled = False
        self._rbuf = b""
        self._rpos = 0
        self._wbuf = bytearray()
        self._writer_fd: int | None = None
        self._reader: Callable[[], None] | None = None
        self._reading_paused = False
        self.receive_maximum = 65535
        # Instance attributes shadow paho's methods of the same name (paho 2.x: the only
        # places it touches the socket for MQTT traffic).
        self._client._sock_recv = self._sock_recv  # type: ignore[method-assign]
        self._client._sock_send = self._sock_send  # type: ignore[method-assign]
        self._on_puback_cb = on_puback
        # paho logs every packet at debug level; the formatting checks cost per message,
        # and connection failures surface as aiomqtt exceptions that the gateway logs itself.
        self._client.disable_logger()
        if on_message is not None:
            self._client.on_message = lambda _c, _u, message: on_message(message)

    @property
    def paho(self) -> paho.Client:
        return self._client

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                    properties: Properties | None = None) -> None:
        # MQTT 5: the broker's Receive Maximum bounds our unacknowledged QoS 1 publishes.
        self.receive_maximum = getattr(properties, "ReceiveMaximum", 65535) if properties is not None else 65535
        super()._on_connect(client, userdata, flags, reason_code, properties)

    async def wait_disconnected(self) -> None:
        """Return (or raise the cause) once the connection is gone."""
        await asyncio.shield(self._disconnected)

    @property
    def is_disconnected(self) -> bool:
        return self._disconnected.done()

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int, properties: Properties | None = None
    ) -> int | None:
        """Queue a publish; return its mid (PUBACK comes to ``on_puback``), or None if refused.

        For QoS 0 the returned mid gets no PUBACK: the message is on its way.
        """
        info = self._client.publish(topic, payload, qos, False, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return None
        return info.mid

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        cb = self._on_puback_cb
        if cb is not None:
            cb(mid, reason_code.value if getattr(reason_code, "is_failure", False) else 0)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    # -- socket I/O ------------------------------------------------------------------------

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            sock = self._client._sock
            if sock is None:
                raise ConnectionError("socket closed")
            try:
                data = sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                raise BlockingIOError() from exc
            if not data:
                return b""  # EOF: paho treats it as the connection lost
            self._rbuf, self._rpos = data, 0
        chunk = self._rbuf[self._rpos : self._rpos + bufsize]
        self._rpos += len(chunk)
        return chunk

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

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._schedule_flush()

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        pass  # paho's view; our own writer follows self._wbuf

    def _flush(self) -> None:
        """Let paho queue its packets into the buffer, then write the buffer once."""
        self._flush_scheduled = False
        client = self._client
        try:
            client.loop_write()
            sock = client._sock
            if sock is None or not self._wbuf:
                self._set_writer(None)
                return
            try:
                sent = sock.send(self._wbuf)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0
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

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """aiomqtt's reader, plus: keep reading while our buffer still holds packets."""

        def on_readable() -> None:
            try:
                while not self._reading_paused:
                    if client.loop_read() != paho.MQTT_ERR_SUCCESS or client._sock is None:
                        break
                    if self._rpos < len(self._rbuf):
                        continue  # whole packets already read from the kernel: no readiness event will come
                    pending = getattr(client._sock, "pending", None)
                    if pending is not None and pending() > 0:
                        continue
                    break
            except Exception as exc:
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def start_misc() -> None:
            self._misc_task = self._loop.create_task(self._misc_loop())

        self._rbuf, self._rpos = b"", 0
        self._reader = on_readable
        self._reading_paused = False
        self._loop.call_soon_threadsafe(self._loop.add_reader, sock.fileno(), on_readable)
        self._loop.call_soon_threadsafe(start_misc)

    def pause_reading(self, paused: bool) -> None:
        """Stop (True) or resume (False) reading the socket; on the event loop thread only.

        Backpressure for a broker that sends more than our Receive Maximum: unread
        data stays in the kernel and TCP holds the rest back at the broker, where it
        is safe (not acknowledged). Paused past twice the keepalive, paho ends the
        connection and the broker redelivers on the next one."""
        if paused == self._reading_paused:
            return
        self._reading_paused = paused
        sock = self._client._sock
        if sock is None or self._reader is None:
            return
        if paused:
            self._loop.remove_reader(sock.fileno())
        else:
            self._loop.add_reader(sock.fileno(), self._reader)
            self._loop.call_soon(self._reader)  # packets already buffered get no readiness event

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho closes the socket right after "writing" DISCONNECT, which here only reached
        # our buffer: send what is buffered first (the PUBACKs before it matter most).
        if self._wbuf:
            try:
                sock.settimeout(1.0)
                sock.sendall(self._wbuf)
            except OSError:
                pass  # the connection is gone anyway; unacknowledged messages are redelivered
            self._wbuf.clear()
        if threading.get_ident() == self._thread_id:
            self._set_writer(None)
        else:
            self._loop.call_soon_threadsafe(self._set_writer, None)
        super()._on_socket_close(client, userdata, sock)

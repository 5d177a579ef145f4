"""A small subclass of ``aiomqtt.Client`` for the gateway's hot paths (pinned: aiomqtt 2.5).

Why: aiomqtt's own message path costs far more than the minimisation. Per message
``async for message in client.messages`` creates a task and an ``asyncio.wait``,
converts paho's message into aiomqtt's, and ``await client.publish()`` creates an
Event and a ``wait_for`` timer; every write is registered through
``call_soon_threadsafe`` (a self-pipe write and a wake-up). The gateway needs none
of that: it handles each message synchronously, in paho's callback, on the event
loop thread, and tracks its own PUBACKs. So this class:

- hands paho's ``MQTTMessage`` straight to ``on_message`` (no queue, no task);
- reports PUBACKs to ``on_puback(mid, failed)`` and offers ``publish_nowait``;
- coalesces writes: when paho wants to write from the loop thread, one
  ``call_soon`` flushes all packets queued in that loop turn, and a writer is
  registered only if the socket would block.

Connection handling, TLS and the context manager stay aiomqtt's. Everything here
relies on aiomqtt 2.5 internals (``_client``, ``_loop``, ``_disconnected``,
``_on_publish``, ``_on_socket_register_write``); tests/test_service_client.py pins
them, and ``gateway/service/acks.py`` is the one place that switches on manual acks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["Client", "OnMessage", "OnPuback"]

OnMessage = Callable[[paho.MQTTMessage], None]
OnPuback = Callable[[int, bool], None]


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
        self._on_puback_cb = on_puback
        # paho logs every packet at debug level; the formatting checks cost per message,
        # and connection failures surface as aiomqtt exceptions that the gateway logs itself.
        self._client.disable_logger()
        if on_message is not None:
            self._client.on_message = lambda _c, _u, message: on_message(message)

    @property
    def paho(self) -> paho.Client:
        return self._client

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
            cb(mid, bool(getattr(reason_code, "is_failure", False)))
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() != self._thread_id:  # paho's connect() runs in an executor thread
            super()._on_socket_register_write(client, userdata, sock)
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush, client, userdata, sock)

    def _flush(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._flush_scheduled = False
        try:
            client.loop_write()
        except Exception as exc:  # noqa: BLE001 - as aiomqtt: a broken socket means disconnected
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)
            return
        if client.want_write():  # the socket buffer is full: wait until it drains
            super()._on_socket_register_write(client, userdata, sock)

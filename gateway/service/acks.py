"""Manual QoS 1 acknowledgement on top of aiomqtt.

Why: the gateway promises at-least-once delivery. A device's message may be
acknowledged (PUBACK) to the local broker only once its minimised form has been
safely handed on; until then the broker keeps it in the consumer's persistent
session and redelivers it if the gateway dies or disconnects. By default paho
acknowledges every QoS 1 message as soon as it is read off the socket, before
aiomqtt even queues it, so a crash would lose it silently.

How: aiomqtt 2.5 has no public switch for this (upstream issue empicano/aiomqtt#345,
PR #346 unmerged). It wraps a paho-mqtt 2.x client in the private attribute
``aiomqtt.Client._client`` (created in ``Client.__init__``), and paho 2.x offers
``manual_ack_set(on)`` and ``ack(mid, qos)``. ``aiomqtt.Message.mid`` is paho's
``MQTTMessage.mid``, the packet id the PUBACK must carry.

The gateway's own client (gateway/service/client.py) reads PUBLISH packets itself, so
paho never acknowledges them; `acker` then returns its ``puback``. Manual acks are still
switched on in paho, for whatever paho does deliver.

This module is the only place that touches that private attribute. If an aiomqtt
upgrade renames it or paho drops the methods, these functions raise
`ManualAckUnsupported` (and the broker tests fail) rather than silently running
with automatic acks.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

from gateway.service.client import Client

__all__ = ["ManualAckUnsupported", "ack", "acker", "enable_manual_acks"]

# Clients switched to manual acks by `enable_manual_acks`: `ack` refuses others,
# whose messages paho has already acknowledged behind our back.
_manual: weakref.WeakSet[aiomqtt.Client] = weakref.WeakSet()


class ManualAckUnsupported(RuntimeError):
    """The installed aiomqtt/paho no longer match what this module relies on."""


def _paho(client: aiomqtt.Client) -> paho.Client:
    inner: Any = getattr(client, "_client", None)
    if not isinstance(inner, paho.Client) or not callable(getattr(inner, "manual_ack_set", None)):
        raise ManualAckUnsupported(
            "aiomqtt.Client._client is not a paho-mqtt 2.x client with manual_ack_set(); "
            f"gateway.service.acks was written for aiomqtt 2.5 (installed: {_version()}). "
            "Re-check how this aiomqtt version exposes manual acknowledgements."
        )
    return inner


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("aiomqtt")
    except Exception:
        return "unknown"


def enable_manual_acks(client: aiomqtt.Client) -> None:
    """Stop paho from acknowledging QoS 1 messages on receipt.

    Call before ``async with client``: with a persistent session the broker sends
    queued and unacknowledged messages straight after CONNACK, and paho reads the
    flag per incoming PUBLISH, so enabling it after connecting could auto-ack those.
    """
    _paho(client).manual_ack_set(True)
    _manual.add(client)


def ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    """Acknowledge one message once its minimised form is safely handed on.

    QoS 0 has no acknowledgement, so this is a no-op. QoS 2 is refused: the gateway
    subscribes at QoS 1 (the broker downgrades to that) and QoS 2 handling is untested.
    Must run on the client's event loop thread, like every aiomqtt call.
    """
    if message.qos == 0:
        return
    if message.qos != 1:
        raise ValueError(f"only QoS 0/1 messages can be acknowledged, got QoS {message.qos}")
    if client not in _manual:
        raise RuntimeError("enable_manual_acks() was not called for this client: paho already acknowledged it")
    rc = _paho(client).ack(message.mid, message.qos)
    if rc != paho.MQTT_ERR_SUCCESS:
        raise aiomqtt.MqttError(f"PUBACK for mid {message.mid} failed: {paho.error_string(rc)}")


def acker(client: aiomqtt.Client) -> Callable[[int], None]:
    """A fast ``ack(mid)`` for QoS 1 messages of ``client``, for the per-message path.

    Checked once here (manual acks on, paho 2.x present) instead of per call.
    A failed PUBACK only means the connection is gone: the broker then redelivers
    the message on the next session, so there is nothing to raise.
    """
    if client not in _manual:
        raise RuntimeError("enable_manual_acks() was not called for this client: paho already acknowledged it")
    if isinstance(client, Client):
        return client.puback  # four bytes into its write buffer (the gateway's client parses PUBLISH itself)
    send = _paho(client).ack

    def ack_mid(mid: int) -> None:
        send(mid, 1)

    return ack_mid

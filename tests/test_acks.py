"""Manual QoS 1 acknowledgement against a real Mosquitto (MQTT 5, persistent session).

Redelivery after reconnecting with the same client id is the observable proof of
what the broker thinks was acknowledged: an unacked message comes back, an acked
one does not. Absence is shown without sleeping: after reconnecting we publish a
sentinel, and Mosquitto resends a session's unacked messages before anything new.
"""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest
from brokers import Mosquitto
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.service.acks import ManualAckUnsupported, ack, enable_manual_acks

TOPIC = "devices/t1/telemetry"
TIMEOUT = 5.0
RECEIVE_MAXIMUM = 5


def consumer(broker: Mosquitto, *, manual: bool = True) -> aiomqtt.Client:
    """A gateway-like consumer: persistent MQTT 5 session, small in-flight window.

    ``clean_start=False`` matters: aiomqtt's default (MQTT_CLEAN_START_FIRST_ONLY)
    wipes the session on each new Client's first connect, i.e. on every restart.
    """
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    props.ReceiveMaximum = RECEIVE_MAXIMUM  # unacked messages stall delivery beyond this
    client = aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        identifier="gateway-consumer",
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=props,
    )
    if manual:
        enable_manual_acks(client)
    return client


async def publish(broker: Mosquitto, *payloads: bytes) -> None:
    """Publish QoS 1 messages in order; each returns once the broker has it (PUBACK)."""
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as pub:
        for payload in payloads:
            await pub.publish(TOPIC, payload, qos=1)


async def receive(client: aiomqtt.Client, n: int) -> list[aiomqtt.Message]:
    messages = client.messages
    return [await anext(messages) for _ in range(n)]


async def first_session(broker: Mosquitto, payloads: list[bytes], *, manual: bool, do_ack: bool) -> None:
    """Subscribe, receive `payloads`, optionally ack them, then disconnect."""
    client = consumer(broker, manual=manual)
    async with client:
        await client.subscribe(TOPIC, qos=1)
        await publish(broker, *payloads)
        got = await receive(client, len(payloads))
        assert [m.payload for m in got] == payloads
        assert all(m.qos == 1 for m in got)
        if do_ack:
            for m in got:
                ack(client, m)


async def next_payload_after_reconnect(broker: Mosquitto) -> bytes:
    """Reconnect with the same id and report what arrives first (sentinel if nothing was pending)."""
    client = consumer(broker)
    async with client:
        await publish(broker, b"sentinel")
        (msg,) = await receive(client, 1)
        ack(client, msg)
        return bytes(msg.payload)  # type: ignore[arg-type]


async def test_unacked_message_is_redelivered_after_reconnect(broker: Mosquitto) -> None:
    async with asyncio.timeout(TIMEOUT):
        await first_session(broker, [b"one", b"two"], manual=True, do_ack=False)
        client = consumer(broker)
        async with client:
            got = await receive(client, 2)
            assert [m.payload for m in got] == [b"one", b"two"]
            for m in got:
                ack(client, m)
    # Acked on the second delivery: gone for good.
    async with asyncio.timeout(TIMEOUT):
        assert await next_payload_after_reconnect(broker) == b"sentinel"


async def test_acked_message_is_not_redelivered(broker: Mosquitto) -> None:
    async with asyncio.timeout(TIMEOUT):
        await first_session(broker, [b"one"], manual=True, do_ack=True)
        assert await next_payload_after_reconnect(broker) == b"sentinel"


async def test_without_manual_acks_aiomqtt_acks_on_receipt(broker: Mosquitto) -> None:
    """Control: the redelivery above is due to manual acks, not the test setup."""
    async with asyncio.timeout(TIMEOUT):
        await first_session(broker, [b"one"], manual=False, do_ack=False)
        assert await next_payload_after_reconnect(broker) == b"sentinel"


async def test_unacked_message_survives_broker_restart(broker: Mosquitto) -> None:
    """Persistence: a graceful broker restart keeps the session and its unacked message."""
    async with asyncio.timeout(TIMEOUT):
        await first_session(broker, [b"one"], manual=True, do_ack=False)
        await asyncio.to_thread(broker.restart)
        client = consumer(broker)
        async with client:
            (msg,) = await receive(client, 1)
            assert msg.payload == b"one"
            ack(client, msg)


async def test_manual_acks_keep_order_and_free_the_inflight_window(broker: Mosquitto) -> None:
    # Several times the receive maximum: if acks did not reach the broker it would
    # stop sending after RECEIVE_MAXIMUM messages and this would time out.
    payloads = [f"m{i:03d}".encode() for i in range(6 * RECEIVE_MAXIMUM)]
    async with asyncio.timeout(TIMEOUT):
        client = consumer(broker)
        async with client:
            await client.subscribe(TOPIC, qos=1)
            publisher = asyncio.create_task(publish(broker, *payloads))
            got: list[bytes] = []
            async for m in client.messages:
                got.append(bytes(m.payload))  # type: ignore[arg-type]
                ack(client, m)
                if len(got) == len(payloads):
                    break
            await publisher
    assert got == payloads


async def test_ack_is_noop_for_qos0(broker: Mosquitto) -> None:
    async with asyncio.timeout(TIMEOUT):
        client = consumer(broker)
        async with client:
            await client.subscribe(TOPIC, qos=0)
            async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
                await pub.publish(TOPIC, b"q0", qos=0)
            (msg,) = await receive(client, 1)
            assert msg.qos == 0
            ack(client, msg)  # nothing to acknowledge, must not raise


async def test_ack_refuses_client_without_manual_acks() -> None:
    client = aiomqtt.Client("127.0.0.1", 1, protocol=aiomqtt.ProtocolVersion.V5)
    msg = aiomqtt.Message(TOPIC, b"x", qos=1, retain=False, mid=1, properties=None)
    with pytest.raises(RuntimeError, match="enable_manual_acks"):
        ack(client, msg)


async def test_missing_private_attribute_fails_loudly() -> None:
    """An aiomqtt upgrade that renames `_client` must break here, not ack silently."""
    client = aiomqtt.Client("127.0.0.1", 1)
    del client._client
    with pytest.raises(ManualAckUnsupported, match=r"aiomqtt 2\.5"):
        enable_manual_acks(client)

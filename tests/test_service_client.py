"""The callback-driven aiomqtt subclass (gateway/service/client.py) against a real broker.

It leans on aiomqtt 2.5 and paho 2.x internals; the first test pins them, so an
upgrade that moves them fails here by name rather than somewhere in the service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib.metadata import version
from typing import NamedTuple

import aiomqtt
import paho.mqtt.client as paho
import pytest
from brokers import Mosquitto

from gateway.service.acks import acker, enable_manual_acks
from gateway.service.client import Client


def test_the_internals_it_relies_on_are_there() -> None:
    assert version("aiomqtt").startswith("2.") and version("paho-mqtt").startswith("2.")
    for name in ("_on_publish", "_on_connect", "_on_socket_open", "_on_socket_close", "_on_socket_register_write",
                 "_on_socket_unregister_write", "_misc_loop"):
        assert callable(getattr(aiomqtt.Client, name)), name
    for name in ("_sock_recv", "_sock_send", "loop_read", "loop_write", "want_write", "manual_ack_set", "ack",
                 "disable_logger"):
        assert callable(getattr(paho.Client, name)), name


class Msg(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    mid: int
    dup: bool


def _collect(into: list) -> Callable[[str, bytes, int, int, bool], None]:
    return lambda *args: into.append(Msg(*args))


async def _pair(port: int, received: list, acks: list, **kw) -> tuple[Client, Client]:
    sub = Client("127.0.0.1", port, identifier="sub", protocol=aiomqtt.ProtocolVersion.V5,
                 on_message=_collect(received), **kw)
    pub = Client("127.0.0.1", port, identifier="pub", protocol=aiomqtt.ProtocolVersion.V5,
                 on_puback=lambda mid, failed: acks.append((mid, failed)), max_inflight_messages=0)
    return sub, pub


async def _until(cond, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_callbacks_deliver_every_message_in_order_and_report_every_puback(broker: Mosquitto) -> None:
    received: list[Msg] = []
    acks: list[tuple[int, bool]] = []
    sub, pub = await _pair(broker.port, received, acks)
    async with sub, pub:
        await sub.subscribe("t/#", qos=1)
        mids = [pub.publish_nowait("t/x", str(i).encode(), 1) for i in range(3000)]
        assert None not in mids
        await _until(lambda: len(received) == 3000 and len(acks) == 3000)
    assert [int(m.payload) for m in received] == list(range(3000))  # one reader: order kept
    assert sorted(mid for mid, _ in acks) == sorted(mids) and not any(failed for _, failed in acks)


async def test_large_payloads_survive_partial_writes_and_reads(broker: Mosquitto) -> None:
    received: list[Msg] = []
    acks: list[tuple[int, bool]] = []
    sub, pub = await _pair(broker.port, received, acks)
    big = bytes(range(256)) * (16 * 1024)  # 4 MiB: far beyond one socket buffer
    async with sub, pub:
        await sub.subscribe("big", qos=1)
        for _ in range(3):
            pub.publish_nowait("big", big, 1)
        await _until(lambda: len(received) == 3 and len(acks) == 3)
    assert all(m.payload == big for m in received)


async def test_manual_acks_hold_messages_until_acknowledged(broker: Mosquitto) -> None:
    """Unacknowledged QoS 1 messages come back to the next session; acknowledged ones do not."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    def session() -> tuple[Client, list]:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        got: list = []
        c = Client("127.0.0.1", broker.port, identifier="held", protocol=aiomqtt.ProtocolVersion.V5,
                   clean_start=False, properties=props, on_message=_collect(got))
        enable_manual_acks(c)
        return c, got

    first, got = session()
    async with first:
        await first.subscribe("h/#", qos=1)
        async with aiomqtt.Client("127.0.0.1", broker.port) as producer:
            for i in range(10):
                await producer.publish("h/x", str(i).encode(), qos=1)
        await _until(lambda: len(got) == 10)
        ack = acker(first)
        for m in got[:4]:
            ack(m.mid)
    second, again = session()
    async with second:
        await _until(lambda: len(again) == 6)
        assert [int(m.payload) for m in again] == list(range(4, 10)) and all(m.dup for m in again)


@pytest.mark.parametrize("limit", [7])
async def test_receive_maximum_comes_from_the_broker(tmp_path, limit: int) -> None:
    with Mosquitto(tmp_path / "b", extra=f"max_inflight_messages {limit}\n") as b:
        c = Client("127.0.0.1", b.port, identifier="rm", protocol=aiomqtt.ProtocolVersion.V5)
        async with c:
            assert c.receive_maximum == limit

"""The aiomqtt subclass that owns the PUBLISH/PUBACK path (gateway/service/client.py).

It leans on aiomqtt 2.5 and paho 2.x internals; the first test pins them, so an
upgrade that moves them fails here by name rather than somewhere in the service.
Its packet parser is checked against an independent encoder written here from the
MQTT 5 specification (any split of the byte stream), its encoder against paho's and
against what a plain aiomqtt subscriber decodes from a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from typing import NamedTuple

import aiomqtt
import paho.mqtt.client as paho
import pytest
from brokers import Mosquitto
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.service.acks import acker, enable_manual_acks
from gateway.service.client import Client, fixed_header


def test_the_internals_it_relies_on_are_there() -> None:
    assert version("aiomqtt").startswith("2.") and version("paho-mqtt").startswith("2.")
    for name in ("_on_connect", "_on_socket_open", "_on_socket_close", "_on_socket_register_write",
                 "_on_socket_unregister_write", "_misc_loop"):
        assert callable(getattr(aiomqtt.Client, name)), name
    for name in ("_sock_recv", "_sock_send", "loop_read", "loop_write", "manual_ack_set", "ack",
                 "disable_logger", "_pack_remaining_length"):
        assert callable(getattr(paho.Client, name)), name
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    # paho state read or written per packet: packet ids, its own publishes awaiting PUBACK,
    # its queue of packets, the manual-ack flag, the keepalive clocks, the protocol, the socket.
    assert c._last_mid == 0 and c._out_messages == {} and len(c._out_packet) == 0 and c._manual_ack is False
    assert isinstance(c._last_bytes_received, float) and isinstance(c._last_msg_out, float)
    assert c._protocol == paho.MQTTv5 and c._sock is None
    assert paho.time_func is time.monotonic  # our keepalive stamps use the same clock
    # A clean disconnect is told apart by the state paho's disconnect() sets before DISCONNECT is written.
    assert c._state == paho._ConnectionState.MQTT_CS_NEW
    c._sock = object()  # what disconnect() checks to tell "connected"; its write only reaches the queue here
    c.disconnect()
    assert c._state == paho._ConnectionState.MQTT_CS_DISCONNECTING and len(c._out_packet) == 1
    c._sock = None


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


async def test_a_long_run_of_publishes_is_written_before_the_loop_turn_ends(broker: Mosquitto) -> None:
    """The cloud sees the first of a large read's messages while the rest are still being minimised."""
    received: list[Msg] = []
    acks: list[tuple[int, bool]] = []
    sub, pub = await _pair(broker.port, received, acks)
    payload = b"x" * 400
    async with sub, pub:
        await sub.subscribe("w/#", qos=1)
        waiting = []
        for i in range(200):  # 80 KiB in one loop turn
            pub.publish_nowait("w/x", payload + str(i).encode(), 1)
            waiting.append(len(pub._wbuf))
        assert max(waiting) < 16 * 1024 + 512, max(waiting)  # written at 16 KiB, not at 80
        await _until(lambda: len(received) == 200 and len(acks) == 200)
    assert [int(m.payload[400:]) for m in received] == list(range(200))


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


def _persistent(port: int, identifier: str) -> tuple[Client, list]:
    """A manual-ack MQTT 5 client with a persistent session, and the list its messages go to."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    got: list = []
    c = Client("127.0.0.1", port, identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5,
               clean_start=False, properties=props, on_message=_collect(got))
    enable_manual_acks(c)
    return c, got


async def test_manual_acks_hold_messages_until_acknowledged(broker: Mosquitto) -> None:
    """Unacknowledged QoS 1 messages come back to the next session; acknowledged ones do not."""

    def session() -> tuple[Client, list]:
        return _persistent(broker.port, "held")

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


async def test_acknowledgements_before_a_clean_disconnect_survive_an_immediate_takeover(tmp_path) -> None:
    """PUBACKs written just before DISCONNECT all count, even when the next session with the
    same client id (a restart) connects at once: a takeover discards what Mosquitto has not
    yet read of the old connection (before the fix this failed in most runs under load)."""
    total, acked = 400, 300
    with Mosquitto(tmp_path / "b", extra=f"max_inflight_messages {total}\n") as broker:

        def session() -> tuple[Client, list]:
            return _persistent(broker.port, "takeover")

        for attempt in range(3):
            topic = f"k{attempt}"
            first, got = session()
            async with first:
                await first.subscribe(f"{topic}/#", qos=1)
                async with aiomqtt.Client("127.0.0.1", broker.port) as producer:
                    for i in range(total):
                        await producer.publish(f"{topic}/x", str(i).encode(), qos=1)
                await _until(lambda got=got: len(got) == total)
                ack = acker(first)
                for m in got[:acked]:
                    ack(m.mid)
            second, again = session()  # at once: what a restarting worker does
            async with second:
                await _until(lambda again=again: len(again) >= total - acked)
                await second.unsubscribe(f"{topic}/#")
                for m in again:
                    second.puback(m.mid)
            assert sorted(int(m.payload) for m in again) == list(range(acked, total)), attempt


@pytest.mark.parametrize("limit", [7])
async def test_receive_maximum_comes_from_the_broker(tmp_path, limit: int) -> None:
    with Mosquitto(tmp_path / "b", extra=f"max_inflight_messages {limit}\n") as b:
        c = Client("127.0.0.1", b.port, identifier="rm", protocol=aiomqtt.ProtocolVersion.V5)
        async with c:
            assert c.receive_maximum == limit


# -- the packet parser and encoder -----------------------------------------------------------


def _vbi(n: int) -> bytes:
    """Variable byte integer, MQTT 5 section 1.5.5, written independently of the code under test."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (128 if n else 0))
        if not n:
            return bytes(out)


LENGTH_EDGES = [0, 1, 127, 128, 129, 16383, 16384, 2097151, 2097152, 268435455]


@pytest.mark.parametrize("n", LENGTH_EDGES)
def test_fixed_header_is_papers_and_pahos_remaining_length(n: int) -> None:
    ours = fixed_header(0x32, n)
    assert ours == bytes([0x32]) + _vbi(n)
    assert ours == bytes(paho.Client(paho.CallbackAPIVersion.VERSION2)._pack_remaining_length(bytearray([0x32]), n))


class Publish(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    mid: int
    dup: bool
    props: bytes  # the property block without its length


class Puback(NamedTuple):
    mid: int
    reason: int | None  # None: the short form (success, no reason code)
    props: bytes


def _encode(p: Publish | Puback) -> bytes:
    if isinstance(p, Puback):
        body = p.mid.to_bytes(2, "big")
        if p.reason is not None:
            body += bytes([p.reason]) + (_vbi(len(p.props)) + p.props if p.props else b"")
        return bytes([0x40]) + _vbi(len(body)) + body
    t = p.topic.encode()
    body = len(t).to_bytes(2, "big") + t + (p.mid.to_bytes(2, "big") if p.qos else b"")
    body += _vbi(len(p.props)) + p.props + p.payload
    return bytes([0x30 | p.dup << 3 | p.qos << 1]) + _vbi(len(body)) + body


_topics = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)
_publish = st.builds(
    Publish, _topics,
    st.one_of(st.binary(max_size=300), st.integers(100, 20000).map(lambda n: bytes(range(256)) * (n // 256 + 1))),
    st.sampled_from([0, 1]), st.integers(1, 65535), st.booleans(),
    # properties: skipped by the parser, whatever they hold; lengths around each VBI size
    st.one_of(st.binary(max_size=20), st.sampled_from([127, 128, 129, 300, 16383, 16384]).map(lambda n: b"\x26" * n)),
).map(lambda p: p._replace(mid=p.mid if p.qos else 0))
_puback = st.builds(Puback, st.integers(1, 65535), st.one_of(st.none(), st.sampled_from([0, 0x10, 0x80, 0x87, 0x97])),
                    st.one_of(st.just(b""), st.binary(min_size=1, max_size=40)))


@pytest.fixture(scope="module")
def parser() -> Iterator[tuple[Client, list]]:
    loop = asyncio.new_event_loop()
    events: list = []

    async def make() -> Client:
        c = Client("127.0.0.1", 1, protocol=aiomqtt.ProtocolVersion.V5,
                   on_message=lambda *a: events.append(("publish", *a)),
                   on_puback=lambda mid, failed: events.append(("puback", mid, failed)))
        enable_manual_acks(c)  # a PUBACK of ours would need a connection
        return c

    yield loop.run_until_complete(make()), events
    loop.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packets=st.lists(st.one_of(_publish, _puback), min_size=1, max_size=12), cuts=st.lists(st.integers(0, 60000)))
def test_the_parser_handles_any_split_or_coalescing_of_the_stream(parser, packets, cuts) -> None:
    """Whatever the socket hands over (a byte at a time, half a header, many packets at once),
    each packet comes out once, whole and in order."""
    client, events = parser
    events.clear()
    client._rest, client._chunks, client._chunks_len, client._need = b"", [], 0, 0
    stream = b"".join(_encode(p) for p in packets)
    edges = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(edges):
        client._received(stream[a:b])
    expected = [("publish", p.topic, p.payload, p.qos, p.mid, p.dup) if isinstance(p, Publish)
                else ("puback", p.mid, p.reason if p.reason is not None and p.reason >= 0x80 else 0) for p in packets]
    assert events == expected
    assert client._rest == b"" and client._need == 0


async def test_a_remaining_length_over_four_bytes_is_refused(parser) -> None:
    client, _ = parser
    client._rest, client._chunks, client._chunks_len, client._need = b"", [], 0, 0
    with pytest.raises(aiomqtt.MqttError):
        client._received(b"\x30\xff\xff\xff\xff\x01")
    client._rest = b""


@pytest.mark.parametrize("size", [0, 100, 16_000, 2_100_000])  # remaining lengths of 1, 2, 3 and 4 bytes
async def test_published_bytes_decode_in_paho_and_in_our_parser(broker: Mosquitto, size: int) -> None:
    """Our encoder's PUBLISH (topic, packet id, pre-packed or object properties, payload) as a
    plain aiomqtt subscriber decodes it, and as our own parser does, at every header size."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("policy", "jimi-tracksolid"), ("policy_sha256", "ab" * 32), ("key_id", "k\u00e9y-1")]
    props.MessageExpiryInterval = 3600
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    ours: list[Msg] = []
    acks: list[tuple[int, bool]] = []
    sub, pub = await _pair(broker.port, ours, acks)
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="reference",
                              protocol=aiomqtt.ProtocolVersion.V5) as reference, sub, pub:
        await reference.subscribe("fleet/#", qos=1)
        await sub.subscribe("fleet/#", qos=1)
        mids = [pub.publish_nowait("fleet/t\u00f6pic/1", payload, 1, props),
                pub.publish_nowait("fleet/t\u00f6pic/2", payload, 1, props.pack()),
                pub.publish_nowait("fleet/t\u00f6pic/3", payload, 0)]
        seen = []
        async with asyncio.timeout(60):
            async for m in reference.messages:
                seen.append(m)
                if len(seen) == 3:
                    break
        await _until(lambda: len(ours) == 3 and len(acks) == 2, timeout=60)
    assert mids[0] and mids[1] == mids[0] + 1 and mids[2] == 0
    assert sorted(mid for mid, _ in acks) == mids[:2] and not any(f for _, f in acks)
    assert [m.topic.value for m in seen] == [m.topic for m in ours] == [f"fleet/t\u00f6pic/{i}" for i in (1, 2, 3)]
    assert all(m.payload == payload for m in seen) and all(m.payload == payload for m in ours)
    assert [m.qos for m in ours] == [1, 1, 0]
    for m in seen[:2]:
        assert m.properties.UserProperty == props.UserProperty
        assert 3590 <= m.properties.MessageExpiryInterval <= 3600
    assert not hasattr(seen[2].properties, "UserProperty")


async def test_invalid_topics_are_refused_before_they_reach_the_socket(broker: Mosquitto) -> None:
    received: list = []
    acks: list = []
    _, pub = await _pair(broker.port, received, acks)
    async with pub:
        for topic in ("", "a/+/b", "a/#", "a\x00b"):
            with pytest.raises(ValueError):
                pub.publish_nowait(topic, b"x", 1)
        assert pub.publish_nowait("a/b", b"x", 1)  # the connection is still fine
        await _until(lambda: len(acks) == 1)


async def test_publish_before_connecting_and_after_the_connection_is_gone_is_refused(broker: Mosquitto) -> None:
    acks: list = []
    _, pub = await _pair(broker.port, [], acks)
    assert pub.publish_nowait("a/b", b"x", 1) is None
    async with pub:
        assert pub.publish_nowait("a/b", b"x", 1) == 1
    assert pub.publish_nowait("a/b", b"x", 1) is None
    pub.puback(7)  # nothing to acknowledge on: a no-op

"""JT/T 808: framing, decoding of published captures, the listener's rules, and terminals through the live service.

Expected values of the captures were worked out by hand from the standard's layout (noted beside
each), and the checksum is recomputed here independently of the codec.
"""

from __future__ import annotations

import asyncio
import json
import operator
import struct
from collections import Counter
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path

import pytest
from brokers import Mosquitto
from hypothesis import given, settings
from hypothesis import strategies as st
from service_harness import GATEWAY, ROOT, Gateway, Sink, free_port

from devices.jt808 import frames, simulator
from gateway.ingest.jt808 import codec, listener

# Published captures (Traccar's Huabao decoder tests, from devices in the field).
HEARTBEAT = "7e0002000004304832546500b7ca7e"
SOS_WEST = ("7e0200002e094027587492000a000000010000000a03083db7001329f3000000140000130412164952010400000012360a0002"
            "341502cb0c20085c107e")
REGISTER = ("7E0100002D013511221122000500000000373031303748422D52303347424400000000000000000000003233363631303402CBD5"
            "424136383630387E")
AUTH = "7E0102000E013511221122000661757468656E7469636174696F6E3F7E"
BATCH = ("7E0704014301356777777707F5000801002600000000000000030159741206CBFD5001720000000116052709062401040000001D03"
         "020000002600000000000000030159746606CBFD50016B0000000116052709065301040000001D0302000000260000000000000003"
         "015975E406CBFE58013F0000000116052709072701040000001D0302000000260000000000000003015976DE06CBFF10012E000000"
         "0116052709075601040000001D0302000000260000000000000003015976BC06CBFED0012D0000000116052709083001040000001D"
         "0302000000260000000000000003015976FE06CBFEC001080000000116052709090001040000001D030200000026000000000000000"
         "3015976FE06CBFE7800FC0000000116052709093301040000001D0302000000260000000000000003015977A606CBFF300108000000"
         "0116052709100201040000001D030200001F7E")
TAMPER = ("7e02000033421030000018004c000200000004000201556dcb06c4d41d000c00f100fc210118095853010400000000fe0140ff0c01"
          "cc000000002694000055d87a7e")
TRUNCATED = ("7E02000032013511221122000700000000000C000301578CC006CA3A5C00470000000014072317201501040000000030011631"
             "010BD07E")  # announces 50 body bytes, carries 40, and its checksum is wrong


def xor(data: bytes) -> int:
    return reduce(operator.xor, data, 0)


def frames_of(hexes: str | bytes) -> list[bytes | codec.FrameError]:
    data = bytes.fromhex(hexes) if isinstance(hexes, str) else hexes
    return list(codec.Framer().feed(data))


def one(hexes: str) -> codec.Message:
    (inner,) = frames_of(hexes)
    assert isinstance(inner, bytes)
    return codec.decode(inner)


def test_checksums_of_the_captures_agree_with_an_independent_xor() -> None:
    for capture in (HEARTBEAT, SOS_WEST, REGISTER, AUTH, BATCH, TAMPER):
        inner = codec.unescape(bytes.fromhex(capture)[1:-1])
        assert xor(inner[:-1]) == inner[-1]
    inner = codec.unescape(bytes.fromhex(TRUNCATED)[1:-1])
    assert xor(inner[:-1]) != inner[-1]
    assert [e.reason for e in frames_of(TRUNCATED)] == ["bad_checksum"]  # type: ignore[union-attr]


def test_position_of_a_published_capture_is_exact() -> None:
    m = one(SOS_WEST)
    assert (m.header.msg_id, m.header.terminal, m.header.serial) == (0x0200, "094027587492", 10)
    (p,) = m.positions
    # lat 0x03083DB7 = 50871735; lon 0x001329F3 = 1255923, status 0x0A: located (bit 1), west (bit 3)
    assert (p.latitude, p.longitude) == (50.871735, -1.255923)
    assert p.valid and not p.acc
    assert p.time == "2013-04-12T08:49:52Z"  # BCD 130412164952 in GMT+8
    assert p.speed_kmh == 2.0 and p.course == 0 and p.altitude == 0  # 0x0014 tenths of km/h
    assert p.alarm_flags == 1 and p.alarms == ["sos"]
    assert p.mileage_km == 1.8  # item 0x01 = 0x12 tenths


def test_alarm_bits_and_batch_positions_of_captures() -> None:
    (p,) = one(TAMPER).positions
    assert p.alarms == ["tamper"] and p.alarm_flags == 1 << 17  # 0x00020000: removal / light sensor
    assert (p.latitude, p.longitude, p.speed_kmh, p.course) == (22.375883, 113.562653, 24.1, 252)
    batch = one(BATCH)
    assert batch.header.msg_id == 0x0704 and len(batch.positions) == 8
    first = batch.positions[0]
    assert (first.latitude, first.longitude, first.altitude) == (22.639634, 114.031952, 370)
    assert first.time == "2016-05-27T01:06:24Z"  # 160527090624 GMT+8


def test_registration_authentication_and_heartbeat_headers() -> None:
    assert one(REGISTER).header == codec.Header(0x0100, "013511221122", 5)
    auth = one(AUTH)
    assert auth.header.msg_id == 0x0102 and auth.auth_code == "authentication"
    assert one(HEARTBEAT).header == codec.Header(0x0002, "043048325465", 183)


def test_2019_header_with_a_version_and_padded_terminal() -> None:
    when = datetime(2026, 11, 23, 10, 3, 44, tzinfo=UTC)
    body = frames.location_body(when, -33.86882, 151.20929, speed_kmh=12.5, course=90, altitude=-12)
    m = one(frames.position("13812345678", 77, body, version=1).hex())
    assert m.header.version == 1 and m.header.terminal == "013812345678" and m.header.serial == 77
    (p,) = m.positions
    assert (p.latitude, p.longitude, p.altitude, p.speed_kmh, p.time) == (
        -33.86882, 151.20929, -12, 12.5, "2026-11-23T10:03:44Z")


@given(st.binary(max_size=64))
def test_escaping_round_trips_with_flags_and_escapes_anywhere(payload: bytes) -> None:
    escaped = codec.escape(payload)
    assert b"\x7e" not in escaped
    assert codec.unescape(escaped) == payload


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=6), st.lists(st.integers(1, 30), max_size=40),
       st.binary(max_size=8))
def test_framing_survives_any_split_and_coalesced_reads(bodies: list[bytes], cuts: list[int], junk: bytes) -> None:
    """Bodies full of 7E/7D at every position, sent as one stream cut anywhere: the same frames."""
    stream = b"".join(codec.frame(0x0900, "013812345678", i, b) for i, b in enumerate(bodies))
    junk = junk.replace(b"\x7e", b"")
    stream = junk + stream
    framer, got, at = codec.Framer(), [], 0
    for cut in [*cuts, len(stream)]:
        got += list(framer.feed(stream[at : at + cut]))
        at += cut
        if at >= len(stream):
            break
    messages = [codec.decode(x) for x in got if isinstance(x, bytes)]
    errors = [x.reason for x in got if isinstance(x, codec.FrameError)]
    assert [(m.header.serial, m.header.msg_id) for m in messages] == [(i, 0x0900) for i in range(len(bodies))]
    assert errors == (["garbage"] if junk else [])


def test_bad_escape_checksum_length_and_encryption_are_errors() -> None:
    good = codec.frame(0x0002, "013812345678", 1)
    assert [x.reason for x in frames_of(good[:3] + b"\x7d\x05" + good[3:])] == ["bad_escape"]  # type: ignore[union-attr]
    flipped = bytearray(good)
    flipped[5] ^= 0x01
    assert [x.reason for x in frames_of(bytes(flipped))] == ["bad_checksum"]  # type: ignore[union-attr]
    inner = struct.pack(">HH", 0x0002, 0x0400) + bytes.fromhex("013812345678") + b"\x00\x01"  # RSA bit set
    encrypted = b"\x7e" + codec.escape(inner + bytes([xor(inner)])) + b"\x7e"
    (item,) = frames_of(encrypted)
    with pytest.raises(codec.FrameError, match="encrypted"):
        codec.decode(item)  # type: ignore[arg-type]


def test_decode_command_prints_json_lines_and_fails_on_a_bad_frame() -> None:
    import subprocess

    r = subprocess.run([GATEWAY, "decode", "jt808", SOS_WEST, BATCH], capture_output=True, text=True, timeout=30)
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.returncode == 0 and len(lines) == 9
    assert lines[0] == {"msg_id": 512, "terminal": "094027587492", "serial": 10, "time": "2013-04-12T08:49:52Z",
                        "latitude": 50.871735, "longitude": -1.255923, "altitude": 0, "speed_kmh": 2.0, "course": 0,
                        "valid": True, "acc": False, "alarm": 1, "alarms": ["sos"], "mileage_km": 1.8}
    assert {line["msg_id"] for line in lines[1:]} == {0x0704}
    bad = subprocess.run([GATEWAY, "decode", "jt808", TRUNCATED], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and json.loads(bad.stdout) == {"error": "bad_checksum"}


# -- the listener ---------------------------------------------------------------------------------


class Terminal:
    """A raw terminal connection: send frames, read the platform's answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.framer, self.ready = reader, writer, codec.Framer(), []

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float = 5) -> tuple[codec.Header, bytes] | None:
        try:
            async with asyncio.timeout(timeout):
                while not self.ready:
                    data = await self.reader.read(4096)
                    if not data:
                        return None
                    self.ready += [x for x in self.framer.feed(data) if isinstance(x, bytes)]
        except TimeoutError:
            return None
        return codec.header(self.ready.pop(0))


async def _listening(limits: listener.Limits | None = None, gate: asyncio.Event | None = None):
    got: list[tuple[str, bytes]] = []

    async def handler(topic: str, payload: bytes) -> None:
        if gate is not None:
            await gate.wait()
        got.append((topic, payload))

    counters = listener.Counters()
    server = await listener.serve("127.0.0.1", 0, handler, b"k" * 32, limits, counters)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return server, Terminal(reader, writer), got, counters


def _general(body: bytes) -> tuple[int, int, int]:
    return struct.unpack(">HHB", body)


async def _register(t: Terminal, terminal: str = "013812345678") -> None:
    await t.send(frames.registration(terminal, 1))
    head, body = await t.answer()  # type: ignore[misc]
    assert head.msg_id == 0x8100 and body[:3] == b"\x00\x01\x00"
    code = body[3:].decode()
    assert code == listener.auth_code(b"k" * 32, terminal)
    await t.send(frames.authentication(terminal, 2, code))
    head, body = await t.answer()  # type: ignore[misc]
    assert head.msg_id == 0x8001 and _general(body) == (2, 0x0102, 0)


async def test_data_before_authentication_is_refused_and_a_wrong_code_fails() -> None:
    server, t, got, counters = await _listening()
    try:
        await t.send(frames.heartbeat("013812345678", 1))
        _head, body = await t.answer()  # type: ignore[misc]
        assert _general(body) == (1, 0x0002, codec.RESULT_FAILURE) and got == []
        await t.send(frames.authentication("013812345678", 2, "WRONGCODE"))
        _head, body = await t.answer()  # type: ignore[misc]
        assert _general(body) == (2, 0x0102, codec.RESULT_FAILURE)
        assert counters.before_auth == 1 and counters.auth_failed == 1 and got == []
        await _register(t)
        await t.send(frames.heartbeat("013812345678", 3))
        assert _general((await t.answer())[1]) == (3, 0x0002, 0)  # type: ignore[index]
        assert [topic for topic, _ in got] == ["tracksolid/013812345678/login", "tracksolid/013812345678/heartbeat"]
    finally:
        t.writer.close()
        await listener.stop(server)


async def test_the_answer_waits_until_the_message_is_safe() -> None:
    gate = asyncio.Event()
    gate.set()
    server, t, got, _counters = await _listening(gate=gate)
    try:
        await _register(t)
        gate.clear()  # the handler (the uplink) now holds the next message
        body = frames.location_body(datetime(2026, 1, 1, tzinfo=UTC), 12.9716, 77.5946)
        await t.send(frames.position("013812345678", 9, body))
        assert await t.answer(timeout=0.5) is None  # not answered while not safe
        gate.set()
        _head, answer = await t.answer()  # type: ignore[misc]
        assert _general(answer) == (9, 0x0200, 0) and got[-1][0] == "tracksolid/013812345678/location"
    finally:
        t.writer.close()
        await listener.stop(server)


async def test_allow_list_refuses_other_terminals_and_split_messages_are_reassembled() -> None:
    limits = listener.Limits(allowed_terminals=frozenset({"013812345678"}))
    server, t, got, counters = await _listening(limits)
    try:
        await t.send(frames.registration("019999999999", 1))
        head, body = await t.answer()  # type: ignore[misc]
        assert head.msg_id == 0x8100 and body[2] == codec.REGISTER_UNKNOWN_TERMINAL
        assert await t.answer() is None and counters.rejected_terminal == 1  # disconnected
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        t = Terminal(reader, writer)
        await _register(t)
        when = datetime(2026, 1, 1, tzinfo=UTC)
        bodies = [frames.location_body(when, 12.9 + i / 100, 77.5) for i in range(3)]
        whole = frames.batch("013812345678", 5, bodies).hex()
        inner = codec.unescape(bytes.fromhex(whole)[1:-1])[:-1]
        _, body = codec.header(inner)
        parts = [body[:40], body[40:80], body[80:]]
        for i, part in enumerate(parts, 1):
            head = struct.pack(">HH", 0x0704, len(part) | 0x2000) + bytes.fromhex("013812345678")
            head += struct.pack(">HHH", 5 + i, 3, i)
            await t.send(b"\x7e" + codec.escape(head + part + bytes([xor(head + part)])) + b"\x7e")
        answers = [_general((await t.answer())[1]) for _ in parts]  # type: ignore[index]
        assert answers == [(6, 0x0704, 0), (7, 0x0704, 0), (8, 0x0704, 0)]
        located = [json.loads(p) for topic, p in got if topic.endswith("/location")]
        assert [x["latitude"] for x in located] == [12.9, 12.91, 12.92]
        assert counters.subpackages == 3
    finally:
        t.writer.close()
        await listener.stop(server)


# -- through the live service ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_thousand_terminals_through_the_gateway_leave_no_identifier_behind(
    tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]
) -> None:
    local, cloud = broker_pair
    port = free_port()
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, policies=[ROOT / "rules" / "jimi-tracksolid.toml"],
                 extra=f'[ingest.jt808]\nlisten = "127.0.0.1:{port}"\nmax_connections = 2000\n'
                       "max_frames_per_second = 1000")
    sink = Sink(cloud.url)
    try:
        gw.start()
        stats = asyncio.run(simulator.run("127.0.0.1", port, devices=1000, count=3, seed=5, timeout=60))
        assert stats.registered == 1000 and not stats.errors, stats
        records = 1000 + sum(n for kind, n in stats.sent.items() if kind in ("location", "alarm", "heartbeat"))
        got = sink.wait_for(records, timeout=120)
        assert Counter(m.topic.rsplit("/", 1)[1] for m in got)["login"] == 1000
        terminals = {simulator.terminal_for(d, 5) for d in range(1000)}
        for m in got:
            body = json.loads(m.payload)
            assert not any(t in m.topic or t.encode() in m.payload for t in terminals)
            assert "cell_id" not in body and "lac" not in body and "wifi_aps" not in body
        page = gw.metrics() + gw.log_text()
        assert not any(t in page for t in terminals)
        assert gw.metric("gateway_jt808_events_total", event="authentications") == 1000
        assert gw.stop() == 0
    finally:
        sink.close()
        gw.close()

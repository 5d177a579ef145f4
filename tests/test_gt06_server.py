"""GT06 listener and simulator over real TCP on 127.0.0.1.

Every test talks to a live ``gateway.ingest.gt06.listener`` through sockets; expected ACKs come
from the Concox document's published replies or from the frame layout. Waits are bounded
conditions (an ACK, an EOF, a counter reaching a value), never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import resource
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import structlog

from devices.gt06 import simulator
from devices.gt06.frames import build_alarm, build_frame, build_heartbeat, build_location, build_login
from gateway.ingest.gt06.codec import crc_itu
from gateway.ingest.gt06.listener import Counters, Limits, serve, stop
from gateway.keys import Keyring
from gateway.pipeline import Engine, Forward
from gateway.policy.load import load

h = bytes.fromhex
ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "rules" / "jimi-tracksolid.toml"
HOST = "127.0.0.1"
IMEI = "358756091234567"
OTHER_IMEI = "490154203237518"
WHEN = datetime(2026, 11, 23, 10, 3, 44, tzinfo=UTC)
FAST = Limits(max_frames_per_second=100_000, frame_burst=100_000)  # rate limit out of the way
T = 5.0  # seconds any single wait may take before the test fails

# Published in the Concox GT06 protocol document, with the replies it prints.
DOC_LOGIN = h("78780D01012345678901234500018CDD0D0A")  # IMEI 123456789012345, serial 1
DOC_LOGIN_ACK = h("787805010001D9DC0D0A")
DOC_LOGIN_NEW = h("78781101075253367890024270003201000512790D0A")  # + type id and time zone
DOC_LOGIN_NEW_ACK = h("7878050100059FF80D0A")
DOC_HEARTBEAT = h("78780A134004040001000FDCEE0D0A")  # serial 0x000F
DOC_ALARM_26 = h("7878252612030C063816C3026C10540C38C9700144030901CC002866000EEE0C06040302000DA2DB0D0A")
DOC_TIME_REQUEST = h("7878058A000688290D0A")  # serial 6


def ack(protocol: int, serial: int) -> bytes:
    """The reply layout: 78 78 05 PROTO SERIAL CRC 0D 0A, CRC over LEN..SERIAL."""
    body = bytes([5, protocol]) + serial.to_bytes(2, "big")
    return b"\x78\x78" + body + crc_itu(body).to_bytes(2, "big") + b"\r\n"


# --- harness ---------------------------------------------------------------------------------


class Recorder:
    """The handler: records (topic, decoded payload) and wakes waiters."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict]] = []
        self.changed = asyncio.Condition()

    async def __call__(self, topic: str, payload: bytes) -> None:
        async with self.changed:
            self.messages.append((topic, msgspec.json.decode(payload)))
            self.changed.notify_all()

    async def wait_for(self, count: int, timeout: float = T) -> list[tuple[str, dict]]:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: len(self.messages) >= count)
        return self.messages

    def kinds(self) -> list[str]:
        return [topic.rsplit("/", 1)[1] for topic, _ in self.messages]


class Listener:
    def __init__(self, server: asyncio.Server, recorder: Recorder, counters: Counters) -> None:
        self.server, self.recorder, self.counters = server, recorder, counters
        self.port: int = server.sockets[0].getsockname()[1]

    async def connect(self) -> Tracker:
        reader, writer = await asyncio.open_connection(HOST, self.port)
        return Tracker(reader, writer)

    async def counted(self, name: str, value: int = 1, timeout: float = T) -> None:
        """Wait until counter ``name`` reaches ``value`` (the listener counts asynchronously)."""
        async with asyncio.timeout(timeout):
            while getattr(self.counters, name) < value:  # noqa: ASYNC110 - counters have no event
                await asyncio.sleep(0.005)
        assert getattr(self.counters, name) == value, self.counters


class Tracker:
    """A hand-driven device connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self, size: int, timeout: float = T) -> bytes:
        async with asyncio.timeout(timeout):
            return await self.reader.readexactly(size)

    async def login(self, imei: str = IMEI, serial: int = 1) -> None:
        await self.send(build_login(imei, serial))
        assert await self.receive(10) == ack(0x01, serial)

    async def closed_by_server(self, timeout: float = T) -> bool:
        """True once the listener hangs up (EOF or reset); TimeoutError if it does not in time."""
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(1) == b""
        except ConnectionError:
            return True

    async def nothing_pending(self) -> bool:
        """No reply is waiting: a heartbeat sent now is answered first (replies keep order)."""
        await self.send(build_heartbeat(0x7FFF))
        return await self.receive(10) == ack(0x13, 0x7FFF)

    def close(self) -> None:
        self.writer.transport.abort()


Start = Callable[..., Awaitable[Listener]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start listeners on free loopback ports; all are stopped after the test."""
    servers: list[asyncio.Server] = []

    async def _start(limits: Limits = FAST, handler: Callable | None = None) -> Listener:
        recorder, counters = Recorder(), Counters()
        server = await serve(HOST, 0, handler or recorder, limits, counters)
        servers.append(server)
        return Listener(server, recorder, counters)

    yield _start
    for server in servers:
        await stop(server)


async def served_meanwhile(listener: Listener, imei: str = OTHER_IMEI) -> None:
    """A second tracker logs in and reports a position while the first one misbehaves."""
    other = await listener.connect()
    before = len(listener.recorder.messages)
    await other.login(imei)
    await other.send(build_location(2, WHEN, 12.97, 77.59, 30, 90, 9))
    messages = await listener.recorder.wait_for(before + 2)
    assert messages[-1][0] == f"tracksolid/{imei}/location"
    other.close()


# --- ACKs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reply"),
    [
        (DOC_LOGIN, DOC_LOGIN_ACK),
        (DOC_LOGIN_NEW, DOC_LOGIN_NEW_ACK),
        (build_login(IMEI, 0xBEEF, type_id=0x3601), ack(0x01, 0xBEEF)),
        (build_frame(0x01, h("0358756091234567"), 7, extended=True), ack(0x01, 7)),  # 79 79 login
    ],
    ids=["document", "document-with-type-id", "type-id", "extended-header"],
)
async def test_login_is_acknowledged_with_its_serial(start: Start, frame: bytes, reply: bytes) -> None:
    listener = await start()
    tracker = await listener.connect()
    await tracker.send(frame)
    assert await tracker.receive(10) == reply
    [(topic, payload)] = await listener.recorder.wait_for(1)
    assert topic.endswith("/login") and payload["type"] == "login"
    assert listener.counters.logins == listener.counters.acks == 1


async def test_heartbeat_and_alarm_acks_echo_protocol_and_serial(start: Start) -> None:
    listener = await start()
    tracker = await listener.connect()
    await tracker.login()
    await tracker.send(DOC_HEARTBEAT)
    assert await tracker.receive(10) == ack(0x13, 0x000F)
    await tracker.send(DOC_ALARM_26)
    assert await tracker.receive(10) == ack(0x26, 0x000D)
    await tracker.send(build_alarm(0x1234, WHEN, 12.9, 77.6, "sos", protocol=0x16))
    assert await tracker.receive(10) == ack(0x16, 0x1234)
    await tracker.send(build_heartbeat(0xFFFF))
    assert await tracker.receive(10) == ack(0x13, 0xFFFF)
    await listener.recorder.wait_for(5)
    assert listener.recorder.kinds() == ["login", "heartbeat", "alarm", "alarm", "heartbeat"]


async def test_positions_are_not_acknowledged(start: Start) -> None:
    listener = await start()
    tracker = await listener.connect()
    await tracker.login()
    await tracker.send(build_location(2, WHEN, 12.97, 77.59, 30, 90, 9))
    await listener.recorder.wait_for(2)
    assert await tracker.nothing_pending()  # the next reply is the heartbeat's, not a position's


async def test_time_request_is_answered_with_utc_time(start: Start) -> None:
    listener = await start()
    tracker = await listener.connect()
    await tracker.login()
    before = datetime.now(UTC).replace(microsecond=0)
    await tracker.send(DOC_TIME_REQUEST)
    reply = await tracker.receive(16)
    after = datetime.now(UTC)
    assert reply[:4] == h("78780B8A") and reply[10:12] == h("0006") and reply[-2:] == b"\r\n"
    assert int.from_bytes(reply[12:14], "big") == crc_itu(reply[2:12])
    year, month, day, hour, minute, second = reply[4:10]
    assert before <= datetime(2000 + year, month, day, hour, minute, second, tzinfo=UTC) <= after
    assert listener.counters.time_requests == 1 and listener.counters.unknown_protocol == 0
    assert listener.recorder.kinds() == ["login"]  # nothing to hand on


# --- normalised messages ---------------------------------------------------------------------


async def test_the_login_imei_is_attached_to_every_later_frame(start: Start) -> None:
    listener = await start()
    tracker = await listener.connect()
    await tracker.send(build_login(IMEI, 1, type_id=0x3601))
    await tracker.send(build_location(2, WHEN, 12.971598, 77.594562, 42, 181, 9, mileage=123456))
    await tracker.send(build_location(3, WHEN, -33.86882, 151.20929, 5, 0, 4, valid=False, protocol=0x12))
    await tracker.send(build_heartbeat(4, acc=False, charging=True, voltage_level=6, gsm_signal=4))
    await tracker.send(build_alarm(5, WHEN, 28.6139, 77.209, "overspeed", speed_kmh=97, course=45))
    messages = await listener.recorder.wait_for(5)
    assert [topic for topic, _ in messages] == [
        f"tracksolid/{IMEI}/{kind}" for kind in ("login", "location", "location", "heartbeat", "alarm")
    ]
    assert all(payload["imei"] == IMEI for _, payload in messages)
    login, location, location_12, heartbeat, alarm = (payload for _, payload in messages)
    assert login == {"type": "login", "imei": IMEI, "login_ip": "127.0.0.1"}
    assert location == {
        "type": "location", "imei": IMEI, "time": "2026-11-23T10:03:44Z",
        "latitude": 12.971598, "longitude": 77.594562, "speed_kmh": 42, "course": 181,
        "valid": True, "satellites": 9, "mcc": 404, "mnc": 45, "lac": 4101, "cell_id": 12345,
        "acc": True, "mileage": 123456,
    }  # fmt: skip
    assert (location_12["latitude"], location_12["longitude"], location_12["valid"]) == (-33.86882, 151.20929, False)
    assert "acc" not in location_12  # 0x12 has no ACC byte; nothing is invented
    assert heartbeat == {
        "type": "heartbeat", "imei": IMEI, "acc": False, "charging": True, "voltage_level": 6, "gsm_signal": 4,
    }  # fmt: skip
    assert alarm["alarm"] == "overspeed" and (alarm["speed_kmh"], alarm["course"]) == (97, 45)
    assert {"protocol", "serial", "type_id", "upload_mode", "reupload"}.isdisjoint(
        key for _, payload in messages for key in payload
    )  # link details stay behind


def pack_paths() -> set[str]:
    """Top-level names the Tracksolid pack declares (field paths and coordinate names)."""
    pack = tomllib.loads(PACK.read_text())
    names = {"type"}  # the message kind, generalised by the pack
    for rule in pack["field"]:
        names.update(rule[key].split(".")[0].removesuffix("[]") for key in ("path", "lat", "lon") if key in rule)
    return names


async def test_payload_field_names_are_the_packs(start: Start) -> None:
    listener = await start()
    stats = await simulator.run(HOST, listener.port, devices=4, count=40, seed=3)
    assert stats.ok, stats
    messages = await listener.recorder.wait_for(sum(stats.sent.values()))
    used = {key for _, payload in messages for key in payload}
    assert used <= pack_paths(), used - pack_paths()
    assert {"latitude", "longitude", "alarm", "voltage_level", "login_ip"} <= used


def pack_engine() -> Engine:
    return Engine([load(PACK)], Keyring.test(), unknown_sample=1)


async def test_normalised_messages_pass_the_tracksolid_pack(start: Start) -> None:
    listener = await start()
    stats = await simulator.run(HOST, listener.port, devices=6, count=60, seed=11)
    assert stats.ok, stats
    messages = await listener.recorder.wait_for(sum(stats.sent.values()))
    assert {"location", "heartbeat", "alarm", "login"} == set(listener.recorder.kinds())
    engine = pack_engine()
    kinds = tomllib.loads(PACK.read_text())["route"]["capture"]["kind"]
    for topic, payload in messages:
        result = engine.process(topic, msgspec.json.encode(payload))
        assert isinstance(result, Forward), (topic, result)
        assert result.unknown == 0  # every field the listener emits is one the pack names
        kind = topic.rsplit("/", 1)[1]
        assert result.topic.endswith("/" + kinds["map"].get(kind, kinds.get("default")))
        assert payload["imei"] not in result.topic and payload["imei"].encode() not in result.payload


# --- split and coalesced reads ---------------------------------------------------------------


async def test_frames_written_byte_by_byte(start: Start) -> None:
    listener = await start()
    tracker = await listener.connect()
    stream = build_login(IMEI, 1) + build_location(2, WHEN, 12.97, 77.59, 30, 90, 9) + build_heartbeat(3)
    for i in range(len(stream)):
        await tracker.send(stream[i : i + 1])
    assert await tracker.receive(20) == ack(0x01, 1) + ack(0x13, 3)
    await listener.recorder.wait_for(3)
    assert listener.recorder.kinds() == ["login", "location", "heartbeat"]


async def test_many_frames_in_one_write(start: Start) -> None:
    listener = await start()
    tracker = await listener.connect()
    frames = [build_login(IMEI, 1)]
    for serial in range(2, 302):
        if serial % 3:
            frames.append(build_location(serial, WHEN, 12.97, 77.59 + serial / 1e4, 30, 90, 9))
        else:
            frames.append(build_heartbeat(serial))
    await tracker.send(b"".join(frames))
    expected = ack(0x01, 1) + b"".join(ack(0x13, s) for s in range(2, 302) if s % 3 == 0)
    assert await tracker.receive(len(expected)) == expected
    messages = await listener.recorder.wait_for(301)
    longitudes = [p["longitude"] for _, p in messages if p["type"] == "location"]
    assert longitudes == [round(77.59 + s / 1e4, 6) for s in range(2, 302) if s % 3]


# --- bad input -------------------------------------------------------------------------------

LOGIN = build_login(IMEI, 1)
BAD_CRC = LOGIN[:-4] + bytes([LOGIN[-4] ^ 0x01]) + LOGIN[-3:]
BAD_STOP = LOGIN[:-2] + b"\r\r"
BAD_BCD = build_frame(0x01, h("0A58756091234567"), 1)  # valid frame, impossible IMEI
TOO_SHORT = h("7878020100")  # LEN below the 5 bytes of PROTO + SERIAL + CRC


@pytest.mark.parametrize(
    ("bad", "counter"),
    [
        (BAD_CRC, "bad_crc"),
        (TOO_SHORT, "bad_length"),
        (BAD_STOP, "bad_stop"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "garbage"),
        (BAD_BCD, "bad_content"),
        (build_frame(0x80, h("0100"), 1), "unknown_protocol"),  # a server command echoed back
        (DOC_TIME_REQUEST, "before_login"),
        (build_location(1, WHEN, 12.97, 77.59, 30, 90, 9), "before_login"),
        (build_heartbeat(1), "before_login"),
    ],
    ids=["bad-crc", "impossible-length", "bad-stop", "garbage", "bad-content", "unknown-protocol",
         "time-request-before-login", "position-before-login", "heartbeat-before-login"],
)  # fmt: skip
async def test_bad_input_is_counted_skipped_and_does_not_stall_others(
    start: Start, bad: bytes, counter: str
) -> None:
    listener = await start()
    tracker = await listener.connect()
    await tracker.send(bad)
    await listener.counted(counter)
    await served_meanwhile(listener)
    # the same connection recovers: the next good frame is decoded and acknowledged
    await tracker.login()
    await listener.recorder.wait_for(3)
    assert [t for t, _ in listener.recorder.messages].count(f"tracksolid/{IMEI}/login") == 1
    assert listener.counters.messages == 3  # the bad bytes produced no message


async def test_garbage_before_a_start_marker_in_the_same_read(start: Start) -> None:
    listener = await start()
    tracker = await listener.connect()
    await tracker.send(b"\x00\x01\x78garbage\x79" + LOGIN)
    assert await tracker.receive(10) == ack(0x01, 1)
    assert listener.counters.garbage == 1


async def test_a_silent_connection_is_closed_at_the_login_timeout(start: Start) -> None:
    listener = await start(Limits(login_timeout=0.3))
    silent = await listener.connect()
    await served_meanwhile(listener)  # while the first one says nothing
    assert await silent.closed_by_server()
    await listener.counted("login_timeout")


async def test_frames_without_a_login_do_not_extend_the_login_deadline(start: Start) -> None:
    listener = await start(Limits(login_timeout=0.5))
    tracker = await listener.connect()
    began = time.monotonic()
    while time.monotonic() - began < T:
        try:
            await tracker.send(build_heartbeat(1))  # busy, but never logs in
        except ConnectionError:
            break
        try:
            if await tracker.closed_by_server(timeout=0.05):  # also paces the loop
                break
        except TimeoutError:
            pass
    assert time.monotonic() - began < T
    await listener.counted("login_timeout")
    assert listener.counters.before_login >= 1


async def test_an_idle_connection_is_closed(start: Start) -> None:
    listener = await start(Limits(idle_timeout=0.3))
    tracker = await listener.connect()
    await tracker.login()
    await served_meanwhile(listener)
    assert await tracker.closed_by_server()
    await listener.counted("idle_closed")


async def test_a_stream_of_errors_closes_the_connection(start: Start) -> None:
    listener = await start(Limits(max_bad_frames=3))
    tracker = await listener.connect()
    await tracker.send(BAD_CRC * 4)
    assert await tracker.closed_by_server()
    await listener.counted("too_many_errors")
    assert listener.counters.bad_crc == 4
    await served_meanwhile(listener)


async def test_a_failing_handler_costs_one_connection_and_no_ack(start: Start) -> None:
    recorder = Recorder()

    async def handler(topic: str, payload: bytes) -> None:
        if topic.endswith("/alarm"):
            raise RuntimeError("upstream down")
        await recorder(topic, payload)

    listener = await start(handler=handler)
    tracker = await listener.connect()
    await tracker.login()
    await tracker.send(build_alarm(2, WHEN, 12.9, 77.6, "sos"))
    assert await tracker.closed_by_server()  # no alarm ACK: the tracker sends it again later
    await listener.counted("handler_errors")
    other = await listener.connect()
    await other.login(OTHER_IMEI)


async def test_the_ack_waits_for_the_handler_and_only_that_tracker_waits(start: Start) -> None:
    release = asyncio.Event()
    recorder = Recorder()

    async def handler(topic: str, payload: bytes) -> None:
        if topic == f"tracksolid/{IMEI}/heartbeat":
            await release.wait()
        await recorder(topic, payload)

    listener = await start(handler=handler)
    slow = await listener.connect()
    await slow.login()
    await slow.send(build_heartbeat(2))
    other = await listener.connect()
    await other.login(OTHER_IMEI)  # answered while the slow tracker's handler is blocked
    assert listener.counters.acks == 2
    with pytest.raises(TimeoutError):
        await slow.receive(10, timeout=0.2)  # no ACK before the message was handed on
    release.set()
    assert await slow.receive(10) == ack(0x13, 2)


# --- limits ----------------------------------------------------------------------------------


async def test_allow_list_rejects_unknown_imeis(start: Start) -> None:
    listener = await start(Limits(allowed_imeis=frozenset({OTHER_IMEI})))
    stranger = await listener.connect()
    await stranger.send(build_login(IMEI, 1))
    assert await stranger.closed_by_server()  # no ACK: a tracker must not think it is served
    await listener.counted("rejected_imei")
    assert listener.counters.logins == 0 and not listener.recorder.messages
    await served_meanwhile(listener, OTHER_IMEI)


async def test_connection_limit(start: Start) -> None:
    listener = await start(Limits(max_connections=2))
    first, second = await listener.connect(), await listener.connect()
    await first.login()
    await second.login(OTHER_IMEI)
    third = await listener.connect()
    assert await third.closed_by_server()
    await listener.counted("over_limit")
    assert await first.nothing_pending() and await second.nothing_pending()  # both still served
    first.close()
    async with asyncio.timeout(T):
        while listener.counters.open_connections > 1:  # noqa: ASYNC110 - counters have no event
            await asyncio.sleep(0.005)
    fourth = await listener.connect()
    await fourth.login()
    assert listener.counters.connections == 3


async def test_buffer_limit(start: Start) -> None:
    listener = await start(Limits(max_buffer=64, max_frames_per_second=1e5, frame_burst=10**5))
    tracker = await listener.connect()
    await tracker.login()
    big = build_frame(0x94, bytes(100), 2)  # well-formed but larger than the buffer
    await tracker.send(big)
    await listener.counted("oversize")
    huge = b"\x79\x79\xff\xff" + bytes(256 * 1024)  # announces 64 KiB, then floods
    await tracker.send(huge)
    assert await tracker.nothing_pending()  # resynchronised on the next real frame
    assert listener.counters.oversize == 2
    await served_meanwhile(listener)


async def test_frame_rate_limit_slows_only_the_flooding_tracker(start: Start) -> None:
    listener = await start(Limits(max_frames_per_second=50, frame_burst=10))
    flood = await listener.connect()
    frames = 111
    began = time.monotonic()
    await flood.send(LOGIN + b"".join(build_heartbeat(s) for s in range(2, frames + 1)))
    await listener.counted("rate_limited", 1)
    await served_meanwhile(listener)  # not held up by the flood...
    assert listener.counters.acks - 1 < frames  # ...which is still being worked through
    replies = await flood.receive(frames * 10)
    assert replies == ack(0x01, 1) + b"".join(ack(0x13, s) for s in range(2, frames + 1))  # nothing lost
    assert time.monotonic() - began >= (frames - 10) / 50 * 0.95  # 101 frames over the burst at 50/s


async def test_stop_ends_open_connections(start: Start) -> None:
    listener = await start()
    tracker = await listener.connect()
    await tracker.login()
    await stop(listener.server)
    assert await tracker.closed_by_server(timeout=2)
    assert listener.counters.open_connections == 0


def test_limits_defaults_and_config() -> None:
    limits = Limits()
    assert (limits.max_connections, limits.max_buffer, limits.allowed_imeis) == (10_000, 4096, None)
    assert limits.login_timeout < limits.idle_timeout
    converted = msgspec.convert({"idle_timeout": 60, "allowed_imeis": [IMEI]}, Limits)
    assert converted.allowed_imeis == frozenset({IMEI})
    with pytest.raises(ValueError):
        Limits(max_buffer=10)
    with pytest.raises(ValueError):
        Limits(max_frames_per_second=0)


async def test_logs_and_counters_carry_no_identifier(start: Start) -> None:
    async def failing(topic: str, payload: bytes) -> None:
        if topic.endswith("/heartbeat"):
            raise ValueError(payload.decode())  # even an exception text holding the payload

    listener = await start(Limits(allowed_imeis=frozenset({IMEI}), login_timeout=0.3), handler=failing)
    with structlog.testing.capture_logs() as logs:
        stranger = await listener.connect()
        await stranger.send(build_login(OTHER_IMEI, 1))
        assert await stranger.closed_by_server()
        tracker = await listener.connect()
        await tracker.login()
        await tracker.send(build_heartbeat(2))
        assert await tracker.closed_by_server()
        await listener.counted("handler_errors")
    text = repr(logs) + repr(listener.counters.snapshot())
    assert logs and IMEI not in text and OTHER_IMEI not in text and "127.0.0.1" not in text
    assert all(type(v) is int for v in listener.counters.snapshot().values())  # no labels at all


# --- simulator -------------------------------------------------------------------------------


def luhn_ok(number: str) -> bool:
    digits = [int(d) for d in reversed(number)]
    return sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(digits)) % 10 == 0


def test_simulated_imeis_are_luhn_valid_and_distinct() -> None:
    imeis = [simulator.imei_for(i, seed=5) for i in range(2000)]
    assert all(len(i) == 15 and i.isdigit() and luhn_ok(i) for i in imeis)
    assert len(set(imeis)) == len(imeis)
    assert luhn_ok("490154203237518") and not luhn_ok("490154203237519")  # the checker itself


def test_simulated_routes_stay_in_india_and_move_plausibly() -> None:
    for device in range(20):
        steps = list(simulator.script(device, 500, seed=2, start=WHEN))
        assert len(steps) == 500
        assert all(8 <= s.latitude <= 37 and 68 <= s.longitude <= 97 for s in steps)
        assert all(0 <= s.speed_kmh <= 120 and 0 <= s.course < 360 for s in steps)
        for a, b in itertools.pairwise(steps):  # 10 s apart at <= 120 km/h: at most ~0.33 km
            assert abs(a.latitude - b.latitude) + abs(a.longitude - b.longitude) < 0.01
        kinds = {s.kind for s in steps}
        assert kinds == {"location", "heartbeat", "alarm", "lbs"}
        for step in steps:
            if step.kind == "lbs":  # cells and access points instead of a fix
                assert len(step.cells) == 3 and all(lac > 0 for lac, _, _ in step.cells) and len(step.wifi) == 2
    assert list(simulator.script(3, 50, seed=2, start=WHEN)) == list(simulator.script(3, 50, seed=2, start=WHEN))


PRECISION = 1 / 1_800_000 + 1e-6  # one wire unit, plus the decoder's 6-decimal rounding


async def test_simulator_round_trip(start: Start) -> None:
    listener = await start()
    devices, count, seed = 5, 80, 7
    stats = await simulator.run(HOST, listener.port, devices=devices, count=count, seed=seed, start=WHEN)
    assert stats.ok, stats
    expected = {simulator.imei_for(d, seed): list(simulator.script(d, count, seed, WHEN)) for d in range(devices)}
    steps = [s for script in expected.values() for s in script]
    assert stats.sent == {"login": devices} | {
        kind: sum(s.record == kind for s in steps) for kind in ("location", "heartbeat", "alarm")
    }
    lbs = sum(s.kind == "lbs" for s in steps)
    assert lbs > 0
    assert stats.acks == {
        "login": devices, "heartbeat": stats.sent["heartbeat"], "alarm": stats.sent["alarm"], "lbs": lbs
    }
    messages = await listener.recorder.wait_for(devices * (count + 1))
    for imei, script in expected.items():
        received = [p for topic, p in messages if topic.startswith(f"tracksolid/{imei}/")]
        assert received[0] == {"type": "login", "imei": imei, "login_ip": "127.0.0.1"}
        assert [p["type"] for p in received[1:]] == [s.record for s in script]
        for step, payload in zip(script, received[1:], strict=True):
            if step.kind == "lbs":
                assert [(c["lac"], c["cell_id"], c["rssi"]) for c in payload["cells"]] == list(step.cells)
                assert payload["wifi_aps"] == [bssid for bssid, _ in step.wifi]
                assert payload["time"] == step.time.strftime("%Y-%m-%dT%H:%M:%SZ") and "latitude" not in payload
                continue
            if step.kind == "heartbeat":
                continue
            assert abs(payload["latitude"] - step.latitude) <= PRECISION
            assert abs(payload["longitude"] - step.longitude) <= PRECISION
            assert payload["time"] == step.time.strftime("%Y-%m-%dT%H:%M:%SZ")
            assert (payload["speed_kmh"], payload["course"]) == (step.speed_kmh, step.course)
            assert payload.get("alarm") == step.alarm


async def test_simulator_reports_a_listener_that_does_not_answer() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never replies

    server = await asyncio.start_server(mute, HOST, 0)
    try:
        stats = await simulator.run(HOST, server.sockets[0].getsockname()[1], devices=3, count=5, ack_timeout=0.3)
    finally:
        server.close()
    assert not stats.ok and stats.errors == {"no_login_ack": 3} and stats.logged_in == 0


async def test_simulator_command_line(start: Start) -> None:
    listener = await start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devices.gt06.simulator", "--gt06", f"{HOST}:{listener.port}",
        "--devices", "3", "--count", "12",
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    stats = msgspec.json.decode(out)
    assert stats["logged_in"] == 3 and stats["errors"] == {} and sum(stats["sent"].values()) == 3 * 13
    await listener.recorder.wait_for(3 * 13)


@pytest.mark.slow
async def test_a_thousand_concurrent_trackers(start: Start) -> None:
    devices, count = 1000, 3
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * devices + 200  # both ends of every connection live in this process
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    listener = await start(Limits())  # the defaults a deployment gets
    began = time.monotonic()
    async with asyncio.timeout(20):
        stats = await simulator.run(HOST, listener.port, devices=devices, count=count, seed=1000, start=WHEN)
        assert stats.ok, stats
        assert stats.acks["login"] == devices
        messages = await listener.recorder.wait_for(sum(stats.sent.values()))
    positions: dict[str, list[tuple[float, float]]] = {}
    for _, payload in messages:
        if payload["type"] == "location" and "latitude" in payload:
            positions.setdefault(payload["imei"], []).append((payload["latitude"], payload["longitude"]))
    for d in range(devices):
        sent = [(s.latitude, s.longitude) for s in simulator.script(d, count, 1000, WHEN) if s.kind == "location"]
        got = positions.get(simulator.imei_for(d, 1000), [])
        assert len(got) == len(sent)
        for (lat, lon), (sent_lat, sent_lon) in zip(got, sent, strict=True):
            assert abs(lat - sent_lat) <= PRECISION and abs(lon - sent_lon) <= PRECISION
    c = listener.counters
    assert (c.connections, c.logins, c.open_connections) == (devices, devices, 0)
    assert c.messages == sum(stats.sent.values())
    print(f"1000 trackers x {count}: {time.monotonic() - began:.2f} s")

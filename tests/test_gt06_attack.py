"""The GT06 port as an attack surface: floods, garbage, connection hoarding, trickling, file limits.

Real TCP on loopback. Event-loop lag is measured by a probe task that sleeps 1 ms at a time and
records how late it wakes: a listener doing unbounded work in one turn shows up as lag. The bounds
are generous for a loaded machine, and far below what the unbounded code cost (4 KiB of 0x78 took
~27 ms in one turn, 256 KiB ~1.7 s).
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from collections.abc import AsyncIterator

import pytest
from test_gt06_server import FAST, HOST, IMEI, OTHER_IMEI, WHEN, Start, Tracker, ack, served_meanwhile, start

from devices.gt06.frames import build_heartbeat, build_location, build_login
from gateway.ingest.gt06.codec import FrameError, Framer
from gateway.ingest.gt06.listener import FILES_RESERVED, FileLimitError, Limits, ensure_file_limit, serve, stop

__all__ = ["start"]  # the fixture, shared with test_gt06_server

MAX_LAG = 0.25  # seconds the loop may be late by, on a machine shared with other test runs


class LagProbe:
    """Measures the worst lateness of a 1 ms timer while it runs."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, loop.time() - before - 0.001)

    async def __aenter__(self) -> LagProbe:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def flood(port: int, data: bytes, local: str = HOST) -> str:
    """Send ``data`` in 64 KiB writes until the listener hangs up; how it ended."""
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(local, 0))
    try:
        async with asyncio.timeout(30):
            for i in range(0, len(data), 65536):
                writer.write(data[i : i + 65536])
                await writer.drain()
            writer.write_eof()
            return "eof" if await reader.read() == b"" else "data"
    except (ConnectionError, TimeoutError) as exc:
        return type(exc).__name__
    finally:
        writer.transport.abort()


def garbage(size: int, seed: int) -> bytes:
    """Random bytes with start markers sprinkled in, so there are candidates to reject."""
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size))
    for _ in range(size // 512):
        at = rng.randrange(size - 4)
        data[at : at + 3] = rng.choice((b"\x78\x78", b"\x79\x79")) + bytes([rng.randrange(256)])
    return bytes(data)


# --- framing at C speed ------------------------------------------------------------------------


@pytest.mark.parametrize(("byte", "reason"), [(0x78, "bad_stop"), (0x79, "oversize")])
def test_a_run_of_start_bytes_is_one_rejection(byte: int, reason: str) -> None:
    """Every candidate inside a run announces the same size and fails the same way: one rejection
    per run, not one Python step per byte (4 KiB of 0x78 cost ~27 ms that way)."""
    framer = Framer()
    items = framer.feed(bytes([byte]) * 4096)
    assert [(type(i), i.reason) for i in items if isinstance(i, FrameError)] == [(FrameError, reason)]
    # candidates near the run's end could still be real (their stop bytes lie past it): they wait
    assert framer.bytes_buffered < 130
    # a real frame right behind the run comes out once the candidates overlapping it are complete
    framer = Framer()
    good = [build_heartbeat(s) for s in range(20)]
    items = framer.feed(b"\x78" * 300 + b"".join(good))
    assert [i for i in items if isinstance(i, bytes)] == good


def test_resynchronisation_skips_garbage_between_markers_in_one_step() -> None:
    framer = Framer(max_frame=4096, max_buffer=4096)
    junk = b"\x78\x78\x20" + bytes(4000)  # a candidate announcing 37 bytes, then zeros
    items = framer.feed(junk + build_heartbeat(9))
    errors = [i for i in items if isinstance(i, FrameError)]
    assert [e.reason for e in errors] == ["bad_stop"]  # one rejected candidate; zeros are its run
    assert items[-1] == build_heartbeat(9)


@pytest.mark.parametrize(
    "data",
    [b"\x78" * (1 << 20), b"\x79" * (1 << 20), bytes(1 << 20), b"\x78\x00" * (1 << 19)],
    ids=["0x78", "0x79", "zeros", "lone-marker-halves"],
)
def test_framing_a_mebibyte_of_junk_takes_a_few_steps_per_read(data: bytes) -> None:
    """No budget at all: 1 MiB in 4 KiB reads costs a handful of rejections per read. (Distinct
    fake headers, e.g. 79 79 00 40 or 78 78 78 79 repeated, are one rejection each: the
    listener's bad-frame budget, enforced inside the read, bounds those.)"""
    framer = Framer()
    began = time.process_time()
    items = [item for i in range(0, len(data), 4096) for item in framer.items(data[i : i + 4096])]
    elapsed = time.process_time() - began
    assert all(isinstance(i, FrameError) for i in items)
    assert len(items) <= 4 * 256 + 1, len(items)  # at most a few per 4 KiB read
    assert elapsed < 1.0, elapsed  # one Python step per byte took seconds


# --- the listener under attack -------------------------------------------------------------------


async def test_start_byte_floods_close_fast_and_do_not_stall_the_loop(start: Start) -> None:
    listener = await start(Limits())  # the shipped defaults
    began = time.process_time()
    async with LagProbe() as probe:
        endings = await asyncio.gather(*(flood(listener.port, b"\x78" * 4096) for _ in range(50)))
        await served_meanwhile(listener)
    cpu = time.process_time() - began
    assert probe.worst < MAX_LAG, probe.worst
    assert set(endings) <= {"eof", "ConnectionResetError"}, endings
    assert 50 <= listener.counters.bad_stop <= 2 * 50, listener.counters  # a run is one rejection
    assert listener.counters.messages == 2  # the tracker served meanwhile
    assert cpu < 2.0, cpu  # one step per byte, the 50 floods took ~1.4 s of loop time on an idle machine


async def test_mebibytes_of_garbage_from_one_client_do_not_stall_the_loop(start: Start) -> None:
    """Random bytes with start markers sprinkled in: every candidate is a rejection, so the
    bad-frame budget (enforced inside the read) closes the connection."""
    listener = await start(Limits())
    async with LagProbe() as probe:
        ending = await flood(listener.port, garbage(4 << 20, seed=1))
        await served_meanwhile(listener)
    assert probe.worst < MAX_LAG, probe.worst
    assert listener.counters.too_many_errors == 1, (ending, listener.counters)


async def test_without_a_budget_a_flood_still_yields_to_other_trackers(start: Start) -> None:
    """No bad-frame budget and no rate limit: only the per-turn work cap keeps the loop moving."""
    listener = await start(Limits(max_bad_frames=10**9, max_frames_per_second=1e9, frame_burst=10**9))
    async with LagProbe() as probe:
        attack = asyncio.create_task(flood(listener.port, b"\x78" * (256 << 10) + b"\x00" * 4096))
        await served_meanwhile(listener)  # served while the flood is being worked through
        assert await attack == "eof"  # the flood was read to its end, nothing closed it
    assert probe.worst < MAX_LAG, probe.worst
    assert 0 < listener.counters.bad_stop <= 4 * 64, listener.counters  # a few per 4 KiB read


# --- connections ---------------------------------------------------------------------------------


async def test_connections_per_peer_are_limited(start: Start) -> None:
    listener = await start(Limits(max_connections_per_peer=2, max_connections=100))
    first, second = await listener.connect(), await listener.connect()
    await first.login()
    await second.login(OTHER_IMEI)
    third = await listener.connect()
    assert await third.closed_by_server()
    await listener.counted("peer_limited")
    # another address on the loopback network is a different peer
    reader, writer = await asyncio.open_connection(HOST, listener.port, local_addr=("127.0.0.2", 0))
    elsewhere = Tracker(reader, writer)
    await elsewhere.login("490154203237518")
    assert await first.nothing_pending()
    first.close()  # a slot of the first peer frees up
    async with asyncio.timeout(5):
        while listener.counters.open_connections > 2:  # noqa: ASYNC110 (a counter, not an event)
            await asyncio.sleep(0.005)
    fourth = await listener.connect()
    await fourth.login()
    assert listener.counters.peer_limited == 1


async def test_a_logged_in_connection_that_only_trickles_bytes_times_out(start: Start) -> None:
    listener = await start(Limits(idle_timeout=0.5, max_frames_per_second=1e5, frame_burst=10**5))
    tracker = await listener.connect()
    await tracker.login()
    began = time.monotonic()
    closed = False
    while not closed and time.monotonic() - began < 10:
        try:
            await tracker.send(b"\x00")  # a byte every 50 ms: never idle by bytes, never a frame
            closed = await tracker.closed_by_server(timeout=0.05)
        except TimeoutError:
            pass
        except ConnectionError:
            closed = True
    assert closed and time.monotonic() - began < 5
    await listener.counted("idle_closed")


async def test_valid_frames_keep_a_logged_in_connection_open(start: Start) -> None:
    listener = await start(Limits(idle_timeout=0.5, max_frames_per_second=1e5, frame_burst=10**5))
    tracker = await listener.connect()
    await tracker.login()
    began = time.monotonic()
    serial = 2
    while time.monotonic() - began < 1.5:  # three idle timeouts, a heartbeat every 0.1 s
        await tracker.send(build_heartbeat(serial))
        assert await tracker.receive(10) == ack(0x13, serial)
        serial += 1
        await asyncio.sleep(0.1)
    assert listener.counters.idle_closed == 0


# --- the open-file limit ---------------------------------------------------------------------------


@pytest.fixture
def restore_nofile() -> AsyncIterator[None]:
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def test_the_soft_file_limit_is_raised_to_fit_max_connections(restore_nofile: None) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2000 + FILES_RESERVED:
        pytest.skip("hard open-file limit too low to test raising the soft one")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    assert ensure_file_limit(2000) == 2000 + FILES_RESERVED
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 2000 + FILES_RESERVED
    assert ensure_file_limit(100) == 2000 + FILES_RESERVED  # enough already: left alone


async def test_max_connections_beyond_the_hard_file_limit_refuses_to_start(restore_nofile: None) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-file limit")
    with pytest.raises(FileLimitError, match=r"max_connections \d+ needs \d+ open files") as raised:
        await serve(HOST, 0, lambda t, p: asyncio.sleep(0), Limits(max_connections=hard))
    assert isinstance(raised.value, OSError)  # `gateway run` reports it and exits 78
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
    server = await serve(HOST, 0, lambda t, p: asyncio.sleep(0), Limits(max_connections=hard - FILES_RESERVED))
    await stop(server)


async def test_a_real_tracker_is_served_through_the_whole_attack(start: Start) -> None:
    """Floods of every kind at once, and a tracker logging in and reporting in the middle."""
    listener = await start(FAST)
    attacks = [
        flood(listener.port, b"\x78" * 4096),
        flood(listener.port, b"\x79\x79\xff\xff" * 4096),
        flood(listener.port, garbage(1 << 20, seed=2)),
        flood(listener.port, build_login(IMEI, 1)[:-1] * 2000),
    ]
    async with LagProbe() as probe:
        results = asyncio.gather(*attacks)
        tracker = await listener.connect()
        await tracker.login(OTHER_IMEI)
        await tracker.send(build_location(2, WHEN, 12.97, 77.59, 30, 90, 9))
        await listener.recorder.wait_for(1)
        await results
    assert probe.worst < MAX_LAG, probe.worst


def test_the_sample_config_and_the_docs_use_the_allow_list() -> None:
    from pathlib import Path

    from gateway.service.config import load_config

    root = Path(__file__).resolve().parent.parent
    allowed = load_config(root / "config.toml").ingest.gt06.allow_list()
    assert allowed and all(len(i) == 15 and i.isdigit() for i in allowed)
    ops = (root / "docs" / "operations.md").read_text()
    assert "allow-list is the only authentication GT06 has" in ops

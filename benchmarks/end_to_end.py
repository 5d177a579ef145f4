"""End-to-end benchmark: publisher -> site Mosquitto -> candidate -> cloud Mosquitto -> sink.

Candidates, measured side by side in one run, on the same two brokers:

  ceiling       no relay: the publisher and the sink on one broker (the set-up's limit);
  node-red      a Node-RED 4 flow (benchmarks/peers/node-red-flow.json): mqtt in QoS 1 ->
                function (HMAC the IMEI, round lat/lon, truncate the IP, delete 3 fields) ->
                mqtt out QoS 1; node-red@4 is installed with npm into benchmarks/.node-red
                (skipped, saying so, where npm is absent);
  gateway x1/x2 ``gateway run`` with rules/jimi-tracksolid.toml, leak guard on, provenance
                user properties, at-least-once (site PUBACK only after the cloud's PUBACK or
                the spool commit); x2: two workers on a shared subscription;
  relay         a bare aiomqtt relay (benchmarks/relay.py): ``async for`` + ``await publish``,
                no minimisation, automatic acknowledgements.

The publisher sends QoS 1 PUBLISH packets on a raw asyncio connection with ``--window``
(2,000) in flight; the sink is a raw MQTT 3.1.1 subscriber (QoS 1) that acknowledges each
PUBLISH from a parsed buffer. Both do a few microseconds a message; the ceiling row shows
how far above every candidate they are.

Per candidate (rounds interleaved, one candidate running at a time, each round a fresh start):
- msg/s: ``--messages`` tracker messages (about 380 B) published live while it runs,
  counted at the sink between the first and the last arrival;
- CPU us/msg: the candidate's user+sys time (all its processes) over the same span;
- added latency p50/p99 at 50 % and 80 % of its own median rate: a paced publisher, each
  message's index in its kept ``time`` field, minus the no-relay path at the same rate
  (``--rates`` pins both phases' rates instead, to compare builds at the same load); in the
  same phases, how many messages arrived after a later message of their own device;
- restart: ``--restart`` messages queued at the site broker for its persistent session
  while it is stopped (SIGTERM), then how many reach the sink after it starts again;
- SIGKILL: as many published at full rate, the candidate killed once a quarter of them
  arrived, then started again: how many arrive in the end (and how many twice).

    .venv/bin/python benchmarks/end_to_end.py [--messages 30000] [--rounds 3] [--only gateway-x1,node-red]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.mosquitto import Mosquitto, free_port  # noqa: E402

# Mosquitto's in-flight window per client (20 by default) raised for every candidate alike; Nagle off,
# as a latency-sensitive deployment sets it (otherwise small packets wait for delayed ACKs).
BROKER_CONF = "max_inflight_messages {inflight}\nmax_queued_messages 1000000\nset_tcp_nodelay true\n"
POLICY = ROOT / "rules" / "jimi-tracksolid.toml"
NODE_RED_DIR = ROOT / "benchmarks" / ".node-red"
PEERS = ROOT / "benchmarks" / "peers"
TOPIC = "tracksolid/{imei}/location"
SUBSCRIPTION = "tracksolid/#"
BASE = datetime(2026, 1, 15, tzinfo=UTC)
TIME_KEY = b'"time":"'
CANDIDATES = ("ceiling", "node-red", "gateway-x1", "gateway-x2", "relay")


# -- raw MQTT 3.1.1 ---------------------------------------------------------------------------


def _packet(first: int, body: bytes) -> bytes:
    n, out = len(body), bytearray([first])
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


def _str(s: str) -> bytes:
    return struct.pack("!H", len(s)) + s.encode()


def _connect(client_id: str) -> bytes:
    """CONNECT, clean session (which also ends an earlier session of that id), keepalive 0."""
    return _packet(0x10, _str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _str(client_id))


def _split(buf: bytearray) -> list[tuple[int, int, int]]:
    """(first byte, body start, body end) of each whole packet at the front of ``buf``."""
    out, pos, n = [], 0, len(buf)
    while n - pos >= 2:
        length, mult, i = 0, 1, pos + 1
        while True:
            if i >= n:
                return out
            b = buf[i]
            length += (b & 0x7F) * mult
            mult <<= 7
            i += 1
            if not b & 0x80:
                break
        if i + length > n:
            break
        out.append((buf[pos], i, i + length))
        pos = i + length
    return out


class _Conn(asyncio.Protocol):
    """A raw MQTT 3.1.1 connection: CONNECT, then hand every whole packet to ``on_packets``."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.connack = asyncio.get_running_loop().create_future()
        self.on_packets: Callable[[bytearray, list[tuple[int, int, int]]], None] = lambda b, p: None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        packets = _split(buf)
        if not packets:
            return
        consumed = packets[-1][2]
        if not self.connack.done() and packets[0][0] == 0x20:
            self.connack.set_result(None)
            packets = packets[1:]
        if packets:
            self.on_packets(buf, packets)
        del buf[:consumed]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def _open(port: int, client_id: str) -> _Conn:
    _, conn = await asyncio.get_running_loop().create_connection(_Conn, "127.0.0.1", port)
    conn.transport.write(_connect(client_id))
    await asyncio.wait_for(conn.connack, 10)
    return conn


async def forget_session(port: int, client_id: str) -> None:
    """End a candidate's persistent session, so it queues nothing for later runs."""
    conn = await _open(port, client_id)
    conn.transport.write(b"\xe0\x00")
    conn.transport.close()


class Sink(asyncio.Protocol):
    """Subscribes to ``topic`` at QoS 1 and acknowledges each PUBLISH; records (time, index).

    One pass over each read: cut packets, collect the PUBACKs, find each message's index;
    one write of all the PUBACKs per read."""

    def __init__(self, port: int, topic: str) -> None:
        self.port, self.topic = port, topic
        self.arrivals: list[tuple[float, int]] = []
        self.track = True  # False: only count, and time the first and last arrival (cheaper)
        self.count = 0
        self.first = self.last = 0.0
        self.buf = b""
        self.subscribed = asyncio.get_running_loop().create_future()

    async def start(self, client_id: str) -> None:
        _, self.conn = await asyncio.get_running_loop().create_connection(lambda: self, "127.0.0.1", self.port)
        self.transport.write(_connect(client_id) + _packet(0x82, struct.pack("!H", 1) + _str(self.topic) + b"\x01"))
        await asyncio.wait_for(self.subscribed, 10)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        n, pos = len(buf), 0
        acks = bytearray()
        t = time.monotonic()
        append, find = self.arrivals.append, buf.find
        while n - pos >= 2:
            length, shift, i = 0, 0, pos + 1
            while True:
                if i >= n:
                    break
                b = buf[i]
                length |= (b & 0x7F) << shift
                shift += 7
                i += 1
                if not b & 0x80:
                    break
            else:
                break
            if b & 0x80 or i + length > n:
                break
            first, end = buf[pos], i + length
            if first & 0xF0 == 0x30:
                p = i + 2 + (buf[i] << 8 | buf[i + 1])
                if first & 6:
                    acks += b"\x40\x02"
                    acks += buf[p : p + 2]
                self.count += 1
                if not self.track:
                    pos = end
                    continue
                at = find(TIME_KEY, p, end)
                s = buf[at + 8 : at + 32]
                append((t, ((((int(s[8:10]) - 15) * 24 + int(s[11:13])) * 60 + int(s[14:16])) * 60
                            + int(s[17:19])) * 1000 + int(s[20:23]) if at >= 0 else -1))
            elif first == 0x90 and not self.subscribed.done():
                self.subscribed.set_result(None)
            pos = end
        self.buf = buf[pos:]
        if acks:
            self.transport.write(acks)
            if not self.first:
                self.first = t
            self.last = t

    async def wait(self, n: int, timeout: float, idle: float | None = None) -> bool:
        """Until ``n`` arrived, ``timeout`` passed, or (``idle``) nothing arrived for that long."""
        deadline = time.monotonic() + timeout
        last, seen = time.monotonic(), self.count
        while self.count < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            if self.count != seen:
                last, seen = time.monotonic(), self.count
            elif idle is not None and time.monotonic() - last > idle:
                break
        return self.count >= n

    def reset(self, track: bool = True) -> None:
        self.arrivals.clear()
        self.track, self.count, self.first, self.last = track, 0, 0.0, 0.0

    def close(self) -> None:
        self.transport.close()


_RECORDS = [json.loads(line) for line in (ROOT / "benchmarks" / "tracker_messages.jsonl").read_text().splitlines()]


def _message(i: int) -> tuple[str, bytes]:
    """A realistic tracker message (benchmarks/tracker_messages.jsonl) whose ``time`` encodes ``i``."""
    r = dict(_RECORDS[i % len(_RECORDS)])
    r["time"] = (BASE + timedelta(milliseconds=i)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return TOPIC.format(imei=r["imei"]), json.dumps(r, separators=(",", ":")).encode()


def _reordered(indices: Iterable[int]) -> int:
    """Arrivals that overtook an earlier message of the same device (duplicates not counted)."""
    newest: dict[str, int] = {}
    seen: set[int] = set()
    out = 0
    for i in indices:
        if i in seen:
            continue
        seen.add(i)
        device = _RECORDS[i % len(_RECORDS)]["imei"]
        if i < newest.get(device, -1):
            out += 1
        else:
            newest[device] = i
    return out


def _publishes(first: int, n: int) -> list[bytes]:
    """QoS 1 PUBLISH packets for indices first..first+n-1 (packet ids cycle through 1..65535)."""
    out = []
    for k in range(n):
        topic, payload = _message(first + k)
        out.append(_packet(0x32, _str(topic) + struct.pack("!H", k % 65535 + 1) + payload))
    return out


class _Counter(asyncio.Protocol):
    """The publisher's side: all it receives is CONNACK and PUBACKs, 4 bytes each in MQTT 3.1.1."""

    def __init__(self) -> None:
        self.received = 0
        self.room = asyncio.Event()
        self.lost = False

    @property
    def acked(self) -> int:
        return max(0, self.received // 4 - 1)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.room.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def publish(port: int, packets: list[bytes], window: int = 2000, rate: float = 0.0,
                  sent_at: list[float] | None = None) -> None:
    """Send QoS 1 ``packets`` with at most ``window`` unacknowledged (or paced at ``rate`` msg/s)."""
    _, conn = await asyncio.get_running_loop().create_connection(_Counter, "127.0.0.1", port)
    conn.transport.write(_connect(f"bench-pub-{os.getpid()}"))
    room = conn.room
    transport, n, sent = conn.transport, len(packets), 0
    start = time.monotonic()
    while sent < n:
        if conn.lost:
            raise ConnectionError("publisher connection lost")
        if rate:
            due = min(n, int((time.monotonic() - start) * rate) + 1)
            if due <= sent:
                await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
                continue
            now = time.monotonic()
            transport.write(b"".join(packets[sent:due]))
            if sent_at is not None:
                sent_at.extend([now] * (due - sent))
            sent = due
            await asyncio.sleep(0)
            continue
        free = window - (sent - conn.acked)
        if free <= 0:
            room.clear()
            await asyncio.wait_for(room.wait(), 60)
            continue
        upto = min(n, sent + free)
        transport.write(b"".join(packets[sent:upto]))
        sent = upto
        await asyncio.sleep(0)
    deadline = time.monotonic() + 120
    while conn.acked < n and time.monotonic() < deadline and not conn.lost:
        await asyncio.sleep(0.01)
    transport.write(b"\xe0\x00")
    transport.close()


# -- candidates --------------------------------------------------------------------------------


def _cpu(pid: int) -> float:
    """user+sys CPU seconds of one process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


def node_red_bin() -> Path | None:
    """node-red@4 in benchmarks/.node-red (installed on first use); None where npm is absent."""
    exe = NODE_RED_DIR / "node_modules" / ".bin" / "node-red"
    if exe.exists():
        return exe
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        return None
    NODE_RED_DIR.mkdir(exist_ok=True)
    print("installing node-red@4 into benchmarks/.node-red (npm) ...", file=sys.stderr, flush=True)
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(NODE_RED_DIR), "node-red@4"],
                   check=True, stdout=subprocess.DEVNULL)
    return exe if exe.exists() else None


class Candidate:
    def __init__(self, name: str, site: Mosquitto, cloud: Mosquitto, work: Path, inflight: int = 0) -> None:
        self.name, self.site, self.cloud, self.work = name, site, cloud, work
        self.inflight = inflight  # the gateway's max_inflight (0: its default)
        self.procs: list[subprocess.Popen] = []
        self.client_id = f"bench-{name}"
        work.mkdir(parents=True, exist_ok=True)

    @property
    def workers(self) -> int:
        return 2 if self.name.endswith("x2") else 1

    def session_ids(self) -> list[str]:
        if self.name.startswith("gateway") and self.workers > 1:
            return [f"{self.client_id}-{i}" for i in range(self.workers)]
        return [self.client_id]

    def start(self) -> None:
        log = (self.work / "out.log").open("ab")
        py = sys.executable
        if self.name == "relay":
            cmd = [py, str(ROOT / "benchmarks" / "relay.py"), str(self.site.port), str(self.cloud.port), "1",
                   self.client_id, "1"]
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=log))
        elif self.name == "node-red":
            exe = node_red_bin()
            assert exe is not None
            env = dict(os.environ, SITE_PORT=str(self.site.port), CLOUD_PORT=str(self.cloud.port),
                       CLIENT_ID=self.client_id, TOPIC=SUBSCRIPTION, NR_PORT=str(free_port()))
            user_dir = self.work / "user"
            user_dir.mkdir(exist_ok=True)
            flow = user_dir / "flows.json"
            shutil.copy(PEERS / "node-red-flow.json", flow)
            cmd = [str(exe), "--settings", str(PEERS / "node-red-settings.js"), "--userDir", str(user_dir), str(flow)]
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, env=env))
        else:
            cfg, keys = self.work / "gateway.toml", self.work / "keys.json"
            if not keys.exists():
                subprocess.run([py, "-m", "gateway.cli", "keygen", str(keys)], check=True, capture_output=True)
            group = 'group = "bench"\n' if self.workers > 1 else ""
            inflight = f"max_inflight = {self.inflight}\n" if self.inflight else ""
            cfg.write_text(
                f'policies = ["{POLICY}"]\nkeys_file = "{keys}"\n{group}'
                f'[local]\nurl = "{self.site.url}"\nclient_id = "{self.client_id}"\n{inflight}'
                f'[cloud]\nurl = "{self.cloud.url}"\nclient_id = "{self.client_id}-up"\n{inflight}'
                f'[spool]\npath = "{self.work / "spool.db"}"\n[metrics]\nlisten = ""\n[log]\nlevel = "warning"\n'
            )
            profile = os.environ.get("BENCH_PROFILE")  # a path: run the gateway under cProfile, written there on exit
            cmd = [py, *(["-m", "cProfile", "-o", profile] if profile else []),
                   "-m", "gateway.cli", "run", "--config", str(cfg)]
            if self.workers > 1:
                cmd += ["--workers", str(self.workers)]
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=log))

    def pids(self) -> list[int]:
        """The candidate's processes and their children."""
        pids = [p.pid for p in self.procs]
        for pid in list(pids):
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
            pids += [int(x) for x in out.split()]
        return pids

    def cpu_seconds(self) -> float:
        """user+sys CPU of the candidate's processes and their children so far."""
        return sum(_cpu(pid) for pid in self.pids())

    def kill(self) -> None:
        """SIGKILL every process of the candidate: a crash, nothing flushed."""
        for pid in reversed(self.pids()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in self.procs:
            p.wait()
        self.procs = []

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []

    def log_tail(self) -> str:
        path = self.work / "out.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class Bench:
    """The brokers, the sink and a counter of message indices (no two phases share one)."""

    def __init__(self, site: Mosquitto, cloud: Mosquitto, window: int) -> None:
        self.site, self.cloud, self.window = site, cloud, window
        self.next_index = 0

    def others_cpu(self) -> tuple[float, float, float]:
        """CPU seconds so far of the site broker, the cloud broker and this harness."""
        return (_cpu(self.site._proc.pid), _cpu(self.cloud._proc.pid),  # type: ignore[union-attr]
                time.process_time())

    def indices(self, n: int) -> int:
        first = self.next_index
        self.next_index += n
        return first

    async def sink(self, candidate: str) -> Sink:
        sink = Sink(self.site.port, SUBSCRIPTION) if candidate == "ceiling" else Sink(self.cloud.port, "#")
        await sink.start(f"bench-sink-{os.getpid()}")
        return sink

    async def ready(self, cand: Candidate, sink: Sink) -> None:
        """Start the candidate; wait until a probe gets through (it is connected and subscribed)."""
        cand.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            before = sink.count
            await publish(self.site.port, _publishes(self.indices(1), 1))
            if await sink.wait(before + 1, 1.0):
                await sink.wait(10**9, 30, idle=0.5)  # a backlog from an earlier phase, if any, passes first
                return
            if any(p.poll() is not None for p in cand.procs):
                break
        cand.stop()
        raise RuntimeError(f"{cand.name} did not relay a probe message:\n{cand.log_tail()}")

    async def finish(self, cand: Candidate | None, sink: Sink) -> None:
        """After a phase: stop the candidate, end its persistent sessions, close the sink."""
        if cand is not None:
            cand.stop()
            for sid in cand.session_ids():
                await forget_session(self.site.port, sid)
        sink.close()

    async def throughput(self, name: str, cand: Candidate | None, n: int) -> dict:
        sink = await self.sink(name)
        try:
            if cand is not None:
                await self.ready(cand, sink)
            packets = _publishes(self.indices(n), n)
            sink.reset(track=False)
            cpu0 = cand.cpu_seconds() if cand else 0.0
            others0 = self.others_cpu()
            await publish(self.site.port, packets, self.window)
            await sink.wait(n, 300, idle=10.0)
            cpu = cand.cpu_seconds() - cpu0 if cand else 0.0
            others = [(b - a) / max(1, sink.count) * 1e6 for a, b in zip(others0, self.others_cpu(), strict=True)]
            span = sink.last - sink.first
            return {"msg_s": sink.count / span if span > 0 else float("nan"),
                    "cpu_us": cpu / max(1, sink.count) * 1e6, "arrived": sink.count,
                    "site_us": others[0], "cloud_us": others[1], "harness_us": others[2]}
        finally:
            await self.finish(cand, sink)

    async def latency(self, name: str, cand: Candidate | None, rate: float, seconds: float) -> dict:
        """Publish-to-sink latency (ms) at ``rate`` msg/s, paced."""
        sink = await self.sink(name)
        try:
            if cand is not None:
                await self.ready(cand, sink)
            n = max(50, int(rate * seconds))
            first = self.indices(n)
            packets, sent_at = _publishes(first, n), []
            sink.reset()
            cpu0 = cand.cpu_seconds() if cand else 0.0
            await publish(self.site.port, packets, rate=rate, sent_at=sent_at)
            await sink.wait(n, 60, idle=5.0)
            cpu_us = (cand.cpu_seconds() - cpu0) / max(1, sink.count) * 1e6 if cand else 0.0
            lat = sorted((t - sent_at[i - first]) * 1e3 for t, i in sink.arrivals if first <= i < first + n)
            reordered = _reordered(i for _, i in sink.arrivals if first <= i < first + n)
            if not lat:
                return {"p50": float("nan"), "p99": float("nan"), "n": 0, "cpu_us": cpu_us, "reordered": 0}
            return {"p50": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "n": len(lat),
                    "cpu_us": cpu_us, "reordered": reordered}
        finally:
            await self.finish(cand, sink)

    async def restart(self, cand: Candidate, n: int) -> dict:
        """Queue ``n`` messages for the stopped candidate's persistent session; count what arrives."""
        sink = await self.sink(cand.name)
        try:
            await self.ready(cand, sink)
            cand.stop()  # its persistent session now queues what is published
            first = self.indices(n)
            await publish(self.site.port, _publishes(first, n), self.window)
            sink.reset()
            cand.start()
            await sink.wait(n, 300, idle=15.0)
            got = {i for _, i in sink.arrivals if first <= i < first + n}
            return {"queued": n, "arrived": len(got)}
        finally:
            await self.finish(cand, sink)

    async def crash(self, cand: Candidate, n: int) -> dict:
        """Publish ``n`` messages at full rate, SIGKILL the candidate after a quarter of them
        reached the sink, start it again: how many of the ``n`` arrive in the end."""
        sink = await self.sink(cand.name)
        try:
            await self.ready(cand, sink)
            first = self.indices(n)
            sink.reset()
            pub = asyncio.create_task(publish(self.site.port, _publishes(first, n), self.window))
            await sink.wait(n // 4, 120)
            cand.kill()
            await pub
            cand.start()
            await sink.wait(10**9, 300, idle=15.0)
            got = [i for _, i in sink.arrivals if first <= i < first + n]
            return {"published": n, "arrived": len(set(got)), "duplicates": len(got) - len(set(got))}
        finally:
            await self.finish(cand, sink)


def _fmt(x: float, spec: str = ",.0f") -> str:
    return "-" if x != x else format(x, spec)  # NaN -> "-"


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=int, default=2000, help="publisher's QoS 1 messages in flight")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each latency phase")
    ap.add_argument("--restart", type=int, default=20000, help="messages queued while a candidate is stopped (0: skip)")
    ap.add_argument("--inflight", type=int, default=0,
                    help="gateway max_inflight (both sides; 0: default) and brokers' max_inflight_messages")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(CANDIDATES)}")
    ap.add_argument("--rates", default="",
                    help="latency phases at these msg/s (comma-separated) instead of 50 %% and 80 %% of each "
                         "candidate's median rate: to compare builds at the same load")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    names = [c for c in CANDIDATES if not args.only or c in args.only.split(",") or c == "ceiling"]
    if "node-red" in names and node_red_bin() is None:
        print("node-red: SKIPPED (npm/node not found; install Node.js with npm to include the Node-RED flow)",
              file=sys.stderr)
        names.remove("node-red")
    results: dict[str, dict] = {name: {"runs": []} for name in names}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        conf = BROKER_CONF.format(inflight=max(1000, args.inflight))
        with Mosquitto(work / "site", name="site", extra=conf) as site, \
                Mosquitto(work / "cloud", name="cloud", extra=conf) as cloud:
            bench = Bench(site, cloud, args.window)
            cands = {n: Candidate(n, site, cloud, work / n, args.inflight) for n in names if n != "ceiling"}
            for rnd in range(args.rounds):  # interleaved, so machine noise hits every candidate alike
                for name in names:
                    r = await bench.throughput(name, cands.get(name), args.messages)
                    results[name]["runs"].append(r)
                    print(f"round {rnd + 1} {name}: {r['msg_s']:,.0f} msg/s, {r['cpu_us']:.0f} us/msg "
                          f"(site broker {r['site_us']:.0f}, cloud broker {r['cloud_us']:.0f}, harness "
                          f"{r['harness_us']:.0f}), {r['arrived']}/{args.messages} arrived",
                          file=sys.stderr, flush=True)
            for name in names:
                res = results[name]
                res["msg_s"] = statistics.median(r["msg_s"] for r in res["runs"])
                res["cpu_us"] = statistics.median(r["cpu_us"] for r in res["runs"])
                res["lost"] = [args.messages - r["arrived"] for r in res["runs"]]
                fixed = [float(r) for r in args.rates.split(",") if r]
                for share, rate in zip((0.5, 0.8), fixed or [0.5 * res["msg_s"], 0.8 * res["msg_s"]], strict=True):
                    base = await bench.latency("ceiling", None, rate, args.seconds)
                    lat = base if name == "ceiling" else await bench.latency(name, cands[name], rate, args.seconds)
                    res[f"lat{int(share * 100)}"] = {"rate": rate, **lat, "added_p50": lat["p50"] - base["p50"],
                                                     "added_p99": lat["p99"] - base["p99"]}
                    print(f"{name} latency at {rate:,.0f} msg/s: {lat}, no relay: {base}", file=sys.stderr, flush=True)
                if args.restart and name != "ceiling":
                    res["restart"] = await bench.restart(cands[name], args.restart)
                    print(f"{name} restart: {res['restart']}", file=sys.stderr, flush=True)
                    res["crash"] = await bench.crash(cands[name], args.restart)
                    print(f"{name} crash: {res['crash']}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    ceiling = results["ceiling"]["msg_s"]
    nr = results.get("node-red", {}).get("msg_s", float("nan"))
    print(f"\n{args.messages:,} messages per round, QoS 1, publisher window {args.window}, "
          f"{args.rounds} rounds (median; all rounds in brackets)\n")
    print("| candidate | msg/s | rounds | / Node-RED | / ceiling | CPU us/msg | lost | "
          "+p50 / +p99 ms at 50 % | +p50 / +p99 ms at 80 % | out of device order at 50 / 80 % | "
          "restart: arrived / queued | SIGKILL: arrived / published (duplicates) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        r = results[name]
        lat = " | ".join(f"{_fmt(r[k]['added_p50'], '.2f')} / {_fmt(r[k]['added_p99'], '.2f')}"
                         for k in ("lat50", "lat80"))
        order = " / ".join(f"{r[k].get('reordered', 0):,}" for k in ("lat50", "lat80"))
        rs = r.get("restart")
        restart = f"{rs['arrived']:,} / {rs['queued']:,}" if rs else "-"
        cr = r.get("crash")
        crash = f"{cr['arrived']:,} / {cr['published']:,} ({cr['duplicates']:,})" if cr else "-"
        rounds = ", ".join(f"{x['msg_s']:,.0f}" for x in r["runs"])
        print(f"| {name} | {r['msg_s']:,.0f} | {rounds} | {_fmt(r['msg_s'] / nr, '.2f')}x | "
              f"{r['msg_s'] / ceiling:.2f}x | {_fmt(r['cpu_us'])} | {r['lost']} | {lat} | {order} | {restart} | "
              f"{crash} |")
    if "gateway-x1" in results and "gateway-x2" in results:
        print(f"\ngateway x2 / x1: {results['gateway-x2']['msg_s'] / results['gateway-x1']['msg_s']:.2f}x")
    print("Latency: ceiling row = the no-relay path itself (absolute p50/p99 ms): "
          + ", ".join(f"{int(results['ceiling'][k]['rate']):,} msg/s {results['ceiling'][k]['p50']:.2f}/"
                      f"{results['ceiling'][k]['p99']:.2f}" for k in ("lat50", "lat80")))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

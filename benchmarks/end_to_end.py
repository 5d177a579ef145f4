"""End-to-end benchmark: load generator -> site Mosquitto -> relay -> cloud Mosquitto -> sink.

Candidates, measured in the same run on the same brokers:
  relay     a bare aiomqtt relay (benchmarks/relay.py): subscribe, republish, no minimisation,
            automatic acknowledgements (so not at-least-once);
  gateway   ``gateway run`` with rules/jimi-tracksolid.toml, at-least-once, leak guard on.
each with 1 and 2 processes (2: an MQTT 5 shared subscription), at QoS 0 and QoS 1.

Throughput: N messages are queued at the site broker for the candidate's persistent
session while it is stopped, then it is started; msg/s is measured at the sink between
the first and the last arrival, so neither start-up nor the load generator is timed.
The generator and the sink speak raw MQTT 3.1.1 over asyncio streams (a few
microseconds a message), so they are not the bottleneck.

Latency: messages are published at a fixed rate while the candidate runs; each carries
its index in the kept ``time`` field; latency is sink arrival minus publish time, and
"added" subtracts the same path without a relay (publisher -> site broker -> sink).

    .venv/bin/python benchmarks/end_to_end.py [--messages 20000] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.mosquitto import Mosquitto  # noqa: E402

BROKER_CONF = "max_inflight_messages 1000\nqueue_qos0_messages true\nmax_queued_messages 1000000\n"
POLICY = ROOT / "rules" / "jimi-tracksolid.toml"
TOPIC = "tracksolid/{imei}/location"
BASE = datetime(2026, 1, 15, tzinfo=UTC)
TIME = re.compile(rb'"time":"([^"]+)"')
TICKS = 1000  # `time` encodes the message index as milliseconds after BASE


# -- raw MQTT 3.1.1 clients: generator and sink ---------------------------------------------


def _packet(kind: int, body: bytes) -> bytes:
    n, out = len(body), bytearray([kind])
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


def _str(s: str) -> bytes:
    return struct.pack("!H", len(s)) + s.encode()


def _connect(client_id: str) -> bytes:
    """MQTT 3.1.1 CONNECT with clean session (which also discards any earlier session of that
    id) and keepalive 0: these clients send no PINGREQ, and the broker must not time them out."""
    return _packet(0x10, _str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _str(client_id))


async def forget_session(port: int, client_id: str) -> None:
    """End a candidate's persistent session, so it queues nothing for later candidates."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_connect(client_id))
    await _read_packet(reader)
    writer.write(b"\xe0\x00")  # DISCONNECT
    await writer.drain()
    writer.close()


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = (await reader.readexactly(1))[0]
    mult, length = 1, 0
    while True:
        b = (await reader.readexactly(1))[0]
        length += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    return head, await reader.readexactly(length)


class Sink:
    """Subscribes to ``#`` at QoS 0 on the cloud broker and timestamps every arrival."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.arrivals: list[tuple[float, int]] = []  # (monotonic time, message index)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 22)
        self.writer.write(_connect(f"bench-sink-{os.getpid()}"))
        await _read_packet(self.reader)  # CONNACK
        self.writer.write(_packet(0x82, struct.pack("!H", 1) + _str("#") + b"\x00"))
        await _read_packet(self.reader)  # SUBACK
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        reader, now, append = self.reader, time.monotonic, self.arrivals.append
        while True:
            head, body = await _read_packet(reader)
            if head & 0xF0 == 0x30:
                m = TIME.search(body)
                if m:
                    t = datetime.fromisoformat(m.group(1).decode())
                    append((now(), round((t - BASE).total_seconds() * TICKS)))

    async def wait(self, n: int, timeout: float, idle: float | None = None) -> bool:
        """Until ``n`` arrived, ``timeout`` passed, or (``idle``) nothing arrived for that long."""
        deadline = time.monotonic() + timeout
        last, seen = time.monotonic(), len(self.arrivals)
        while len(self.arrivals) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if len(self.arrivals) != seen:
                last, seen = time.monotonic(), len(self.arrivals)
            elif idle is not None and time.monotonic() - last > idle:
                break
        return len(self.arrivals) >= n

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        self.writer.close()


_RECORDS = [json.loads(line) for line in (ROOT / "benchmarks" / "tracker_messages.jsonl").read_text().splitlines()]


def _message(i: int) -> tuple[str, bytes]:
    """A realistic tracker message (benchmarks/tracker_messages.jsonl) whose ``time`` encodes ``i``."""
    r = dict(_RECORDS[i % len(_RECORDS)])
    r["time"] = (BASE + timedelta(milliseconds=i)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return TOPIC.format(imei=r.get("imei", "358756091234567")), json.dumps(r, separators=(",", ":")).encode()


def _messages(n: int) -> list[tuple[str, bytes]]:
    return [_message(i) for i in range(n)]


async def generate(port: int, messages: list[tuple[str, bytes]], qos: int, rate: float = 0.0,
                   sent_at: dict[int, float] | None = None, first: int = 0) -> None:
    """Publish ``messages`` (all at once, or paced at ``rate`` msg/s); QoS 1 waits for every PUBACK."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_connect(f"bench-gen-{os.getpid()}"))
    await _read_packet(reader)
    acks = 0

    async def read_acks() -> None:
        nonlocal acks
        while True:
            await _read_packet(reader)
            acks += 1

    task = asyncio.create_task(read_acks())
    start = time.monotonic()
    for i, (topic, payload) in enumerate(messages):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await writer.drain()
                await asyncio.sleep(delay)
            if sent_at is not None:
                sent_at[first + i] = time.monotonic()
        body = _str(topic) + (struct.pack("!H", i % 65535 + 1) if qos else b"") + payload
        writer.write(_packet(0x30 | (qos << 1), body))
        if i % 256 == 0:
            await writer.drain()
    await writer.drain()
    deadline = time.monotonic() + 120
    while qos and acks < len(messages) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    task.cancel()
    writer.close()


# -- candidates ------------------------------------------------------------------------------


class Candidate:
    def __init__(self, kind: str, workers: int, qos: int, local: Mosquitto, cloud: Mosquitto, work: Path) -> None:
        self.kind, self.workers, self.qos = kind, workers, qos
        self.local, self.cloud, self.work = local, cloud, work
        self.procs: list[subprocess.Popen] = []

    @property
    def name(self) -> str:
        return f"{self.kind} x{self.workers}"

    @property
    def client_id(self) -> str:
        return f"bench-{self.kind}-{self.workers}-{self.qos}"

    def session_ids(self) -> list[str]:
        return [self.client_id] if self.workers == 1 else [f"{self.client_id}-{i}" for i in range(self.workers)]

    def start(self) -> None:
        log = (self.work / f"{self.kind}.log").open("ab")
        py = sys.executable
        if self.kind == "relay":
            for i in range(self.workers):
                self.procs.append(subprocess.Popen(
                    [py, str(ROOT / "benchmarks" / "relay.py"), str(self.local.port), str(self.cloud.port),
                     str(self.qos), self.session_ids()[i], str(self.workers)], stdout=log, stderr=log))
        else:
            cfg = self.work / "gateway.toml"
            keys = self.work / "keys.json"
            if not keys.exists():
                subprocess.run([py, "-m", "gateway.cli", "keygen", str(keys)], check=True, capture_output=True)
            group = 'group = "bench"\n' if self.workers > 1 else ""
            cfg.write_text(
                f'policies = ["{POLICY}"]\nkeys_file = "{keys}"\n{group}'
                f'[local]\nurl = "{self.local.url}"\nclient_id = "{self.client_id}"\n'
                f'[cloud]\nurl = "{self.cloud.url}"\nclient_id = "{self.client_id}-up"\n'
                f'[spool]\npath = "{self.work / "spool.db"}"\n[metrics]\nlisten = ""\n[log]\nlevel = "warning"\n'
            )
            cmd = [py, "-m", "gateway.cli", "run", "--config", str(cfg)]
            if self.workers > 1:
                cmd += ["--workers", str(self.workers)]
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=log))

    def cpu_seconds(self) -> float:
        """user+sys CPU of the candidate's processes (and their children) so far."""
        total = 0.0
        pids = [p.pid for p in self.procs]
        for pid in list(pids):
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
            pids += [int(x) for x in out.split()]
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError):
                pass
        return total

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []


async def _subscribed(candidate: Candidate, sink: Sink, probe_index: int) -> None:
    """Start the candidate and wait until a probe message gets through (it is subscribed)."""
    candidate.start()
    probe = [_message(probe_index)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        before = len(sink.arrivals)
        await generate(candidate.local.port, probe, candidate.qos)
        if await sink.wait(before + 1, 1.0):
            return
    logs = "".join(p.read_text()[-1500:] for p in candidate.work.glob("*.log"))
    raise RuntimeError(f"{candidate.name} did not relay a probe message:\n{logs}")


async def throughput(candidate: Candidate, sink: Sink, n: int) -> dict:
    await _subscribed(candidate, sink, 10_000_000)
    candidate.stop()  # its persistent session now queues what we publish
    messages = _messages(n)
    await generate(candidate.local.port, messages, candidate.qos)
    sink.arrivals.clear()
    candidate.start()
    await sink.wait(1, 60)
    cpu0 = candidate.cpu_seconds()  # start-up (imports, policy compile) is not per-message work
    await sink.wait(n, 300, idle=10.0)
    cpu = candidate.cpu_seconds() - cpu0
    got = sink.arrivals
    candidate.stop()
    span = got[-1][0] - got[0][0]
    lost = n - len({i for _, i in got})
    return {"msg_s": (len(got) - 1) / span, "cpu_us_per_msg": cpu / max(1, len(got) - 1) * 1e6, "lost": lost}


async def latency(candidate: Candidate | None, local: Mosquitto, sink: Sink, rate: float, seconds: float) -> dict:
    """p50/p99 publish-to-sink latency in ms; candidate None measures the path without a relay."""
    if candidate is not None:
        await _subscribed(candidate, sink, 10_000_001)
    sink.arrivals.clear()
    n = int(rate * seconds)
    sent_at: dict[int, float] = {}
    first = 20_000_000  # indices no throughput message has, so a late duplicate cannot pass for one
    await generate(local.port, [_message(first + i) for i in range(n)], candidate.qos if candidate else 1, rate, sent_at, first)
    await sink.wait(n, 30)
    if candidate is not None:
        candidate.stop()
    lat = sorted((t - sent_at[i]) * 1e3 for t, i in sink.arrivals if i in sent_at)
    return {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)], "n": len(lat)}


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=500.0, help="msg/s in the latency phase")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of the latency phase")
    ap.add_argument("--only", default="", help="comma-separated labels, e.g. 'gateway x1 q1,relay x1 q1'")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "local", name="local", extra=BROKER_CONF) as local, \
                Mosquitto(work / "cloud", name="cloud", extra=BROKER_CONF) as cloud:
            cloud_sink = Sink(cloud.port)
            await cloud_sink.start()
            local_sink = Sink(local.port)  # the no-relay path, for "added" latency
            await local_sink.start()
            direct = await latency(None, local, local_sink, args.rate, args.seconds)
            await local_sink.close()
            results["direct (no relay)"] = {"latency": direct}
            for qos in (0, 1):
                for workers in (1, 2):
                    for kind in ("relay", "gateway"):
                        cand = Candidate(kind, workers, qos, local, cloud, work / f"{kind}-{workers}-{qos}")
                        label = f"{cand.name} q{qos}"
                        if args.only and label not in args.only.split(","):
                            continue
                        cand.work.mkdir()
                        runs = []
                        try:
                            for _ in range(args.rounds):
                                runs.append(await throughput(cand, cloud_sink, args.messages))
                            lat = await latency(cand, local, cloud_sink, args.rate, args.seconds)
                        finally:
                            cand.stop()  # never leave a candidate running (e.g. after a failed probe)
                        for sid in cand.session_ids():
                            await forget_session(local.port, sid)
                        results[label] = {
                            "msg_s": statistics.median(r["msg_s"] for r in runs),
                            "runs_msg_s": [round(r["msg_s"]) for r in runs],
                            "cpu_us_per_msg": statistics.median(r["cpu_us_per_msg"] for r in runs),
                            "lost": [r["lost"] for r in runs],
                            "latency": lat,
                            "added_p50_ms": lat["p50_ms"] - direct["p50_ms"],
                            "added_p99_ms": lat["p99_ms"] - direct["p99_ms"],
                        }
                        print(f"{label}: {results[label]}", file=sys.stderr, flush=True)
            await cloud_sink.close()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"\n{'candidate':<18}{'msg/s (median)':>16}{'runs':>24}{'CPU us/msg':>12}{'p50 ms':>9}{'p99 ms':>9}{'+p50':>8}{'+p99':>8}  lost")
    for label, r in results.items():
        if "msg_s" not in r:
            print(f"{label:<18}{'':>16}{'':>24}{'':>12}{r['latency']['p50_ms']:>9.2f}{r['latency']['p99_ms']:>9.2f}")
            continue
        print(f"{label:<18}{r['msg_s']:>16,.0f}{r['runs_msg_s']!s:>24}{r['cpu_us_per_msg']:>12.0f}"
              f"{r['latency']['p50_ms']:>9.2f}{r['latency']['p99_ms']:>9.2f}{r['added_p50_ms']:>8.2f}{r['added_p99_ms']:>8.2f}  {r['lost']}")
    for qos in (0, 1):
        for workers in (1, 2):
            g, b = results.get(f"gateway x{workers} q{qos}"), results.get(f"relay x{workers} q{qos}")
            if g and b:
                print(f"QoS {qos}, {workers} worker(s): gateway / bare relay = {g['msg_s'] / b['msg_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

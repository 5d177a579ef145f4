"""Peak memory of one gateway worker during a burst, and while it drains a backlog (issue 10, item 3).

Two scenarios, on loopback Mosquitto brokers, with ``gateway run`` (one worker,
rules/jimi-tracksolid.toml, at-least-once, leak guard on):

  burst     the gateway runs; N QoS 1 messages are published as fast as the site broker
            takes them (a raw-socket generator, faster than the gateway), so they queue
            at the site broker while the gateway works through them;
  backlog   the gateway is stopped; N QoS 1 messages queue for its persistent session;
            it is started again and drains them.

Peak RSS is the kernel's high-water mark of the worker process (``VmHWM`` in
/proc/PID/status), read once every message has reached the cloud sink. The baseline is
VmHWM after start-up, before any traffic. Every phase is bounded in time.

    .venv/bin/python benchmarks/burst_memory.py [--messages 300000] [--scenario burst,backlog] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from end_to_end import POLICY, Sink, _publishes, forget_session, publish  # noqa: E402

from gateway.mosquitto import Mosquitto  # noqa: E402

BROKER_CONF = "max_inflight_messages 1000\nmax_queued_messages 1000000\n"
CLIENT_ID = "bench-mem"


def vm(pid: int, key: str) -> int:
    """A /proc/PID/status figure in KiB (VmHWM: peak RSS, VmRSS: current RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class GatewayProcess:
    def __init__(self, work: Path, local: Mosquitto, cloud: Mosquitto) -> None:
        self.work = work
        keys = work / "keys.json"
        subprocess.run([sys.executable, "-m", "gateway.cli", "keygen", str(keys)], check=True, capture_output=True)
        self.config = work / "gateway.toml"
        self.config.write_text(
            f'policies = ["{POLICY}"]\nkeys_file = "{keys}"\n'
            f'[local]\nurl = "{local.url}"\nclient_id = "{CLIENT_ID}"\n'
            f'[cloud]\nurl = "{cloud.url}"\nclient_id = "{CLIENT_ID}-up"\n'
            f'[spool]\npath = "{work / "spool.db"}"\n[metrics]\nlisten = ""\n[log]\nlevel = "warning"\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        log = (self.work / "gateway.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config)],
                                     stdout=log, stderr=log)
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


async def probe(gw: GatewayProcess, local: Mosquitto, sink: Sink, index: int) -> None:
    """Wait until a probe message gets through: the gateway is subscribed and connected."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        before = sink.count
        await publish(local.port, _publishes(index, 1))
        if await sink.wait(before + 1, 1.0):
            return
    raise RuntimeError("the gateway did not relay a probe:\n" + (gw.work / "gateway.log").read_text()[-2000:])


async def run(scenario: str, n: int, limit_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "local", name="local", extra=BROKER_CONF) as local, \
                Mosquitto(work / "cloud", name="cloud", extra=BROKER_CONF) as cloud:
            sink = Sink(cloud.port, "#")
            await sink.start("bench-mem-sink")
            gw = GatewayProcess(work, local, cloud)
            try:
                packets = _publishes(0, n)  # built before the clock starts
                pid = gw.start()
                await probe(gw, local, sink, 50_000_000)
                if scenario == "backlog":
                    gw.stop()  # its persistent session now queues the backlog
                    t0 = time.monotonic()
                    await publish(local.port, packets)
                    publish_s = time.monotonic() - t0
                    sink.reset()
                    pid = gw.start()
                    await asyncio.sleep(0.5)
                    baseline = vm(pid, "VmHWM")
                    t0 = time.monotonic()
                else:
                    baseline = vm(pid, "VmHWM")
                    sink.reset()
                    t0 = time.monotonic()
                    await publish(local.port, packets)
                    publish_s = time.monotonic() - t0
                done = await sink.wait(n, limit_s, idle=30.0)
                elapsed = time.monotonic() - t0
                peak, rss = vm(pid, "VmHWM"), vm(pid, "VmRSS")
                got = len({i for _, i in sink.arrivals})
            finally:
                gw.stop()
                sink.close()
                await forget_session(local.port, CLIENT_ID)
    return {
        "scenario": scenario, "messages": n, "delivered": got, "complete": done,
        "publish_s": round(publish_s, 1), "elapsed_s": round(elapsed, 1),
        "baseline_mb": round(baseline / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
        "rss_at_end_mb": round(rss / 1024, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--scenario", default="burst,backlog")
    ap.add_argument("--timeout", type=float, default=600.0, help="per scenario, seconds")
    ap.add_argument("--limit-mb", type=float, default=80.0, help="exit 1 if a peak exceeds this")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = [asyncio.run(run(s, args.messages, args.timeout)) for s in args.scenario.split(",")]
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{r['scenario']:8} {r['messages']:>8,} msgs  delivered {r['delivered']:,}  "
                  f"baseline {r['baseline_mb']} MB  peak RSS {r['peak_rss_mb']} MB  "
                  f"end {r['rss_at_end_mb']} MB  ({r['elapsed_s']} s; published in {r['publish_s']} s)")
    ok = all(r["complete"] and r["peak_rss_mb"] <= args.limit_mb for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""``gateway demo``: the whole path, live, on this machine.

Starts a site broker and a stand-in "cloud" broker (Mosquitto on free loopback
ports), generates a key file, runs ``gateway run`` with the five bundled policy
packs and a GT06 listener, and drives the five device simulators plus GT06
trackers through it. It shows, per system, what the devices sent next to what
the cloud received (or why it was dropped), then a short load run with the
counts of what was removed, pseudonymised, encrypted and coarsened, read from
the gateway's own /metrics page.

``gateway demo --offline`` keeps the old view: the policies' inline-test samples
through the engine, no brokers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec

from gateway.bundle import packs
from gateway.keys import Keyring
from gateway.pipeline import Engine, Forward
from gateway.policy.check import AnyDevice, decode_output
from gateway.policy.load import load
from gateway.service.deadletter import open_letter

SHOW = 4  # messages per system in the before/after view
WAIT = 5.0  # seconds for one message to come out the other side


def _colour(text: str, code: str, on: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if on else text


def run_demo(args: argparse.Namespace) -> int:
    if getattr(args, "offline", False):
        return _offline()
    return asyncio.run(_live(args.count, sys.stdout.isatty()))


# -- live ----------------------------------------------------------------------------------


class _View:
    """A subscriber that queues what it receives, for the demo to print."""

    def __init__(self, port: int, topic: str) -> None:
        self.port, self.topic = port, topic
        self.queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(self.topic, qos=1)
            self.ready.set()
            async for message in client.messages:
                self.queue.put_nowait(message)

    def drain(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_0-9]+)(?:\{(.*)\})? (\S+)", line)
        if m and not line.startswith("#"):
            labels = tuple(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def _by(metrics: dict, name: str, *keys: str) -> Counter:
    c: Counter = Counter()
    for (metric, labels), value in metrics.items():
        if metric == name:
            d = dict(labels)
            c[tuple(d.get(k, "") for k in keys)] += value
    return c


def _short(payload: bytes, width: int = 150) -> str:
    text = payload.decode("utf-8", "replace")
    return text if len(text) <= width else text[: width - 3] + "..."


async def _live(count: int, tty: bool) -> int:
    from devices.gt06 import simulator as gt06_sim
    from devices.jt808 import simulator as jt808_sim
    from devices.simulate import SYSTEMS, publish
    from gateway.mosquitto import Mosquitto, MosquittoMissing, free_port

    work = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    try:
        local, cloud = Mosquitto(work / "local", name="site").start(), Mosquitto(work / "cloud", name="cloud").start()
    except MosquittoMissing as exc:
        print(f"gateway demo: {exc}; or run `gateway demo --offline`", file=sys.stderr)
        return 1
    gw = None
    tasks: list[asyncio.Task] = []
    try:
        keys = work / "keys.json"
        subprocess.run([sys.executable, "-m", "gateway.cli", "keygen", str(keys)], check=True, capture_output=True)
        metrics_port, gt06_port, jt808_port = free_port(), free_port(), free_port()
        policies = ", ".join(f'"{p}"' for p in packs())
        config = work / "config.toml"
        config.write_text(
            f'policies = [{policies}]\nkeys_file = "{keys}"\ndead_letter = "gateway/dead-letter"\n'
            f'[local]\nurl = "{local.url}"\nclient_id = "demo-gateway"\n'
            f'[cloud]\nurl = "{cloud.url}"\nclient_id = "demo-uplink"\n'
            f'[spool]\npath = "{work / "spool.db"}"\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
            f'[log]\nformat = "json"\n[ingest.gt06]\nlisten = "127.0.0.1:{gt06_port}"\nmax_frames_per_second = 1000\n'
            f'[ingest.jt808]\nlisten = "127.0.0.1:{jt808_port}"\nmax_frames_per_second = 1000\n'
        )
        log = (work / "gateway.log").open("wb")
        gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                              stdout=log, stderr=subprocess.STDOUT)
        if not _wait_ready(metrics_port, gw):
            print("gateway demo: the gateway did not become ready:\n" + (work / "gateway.log").read_text()[-2000:],
                  file=sys.stderr)
            return 1
        print(_colour("== Live demo", "1", tty))
        print(f"   site broker   {local.url}   (devices publish here)")
        print(f"   cloud broker  {cloud.url}   (what leaves the site)")
        print(f"   gateway       pid {gw.pid}, five policy packs, GT06 trackers on 127.0.0.1:{gt06_port},"
              f" JT/T 808 terminals on 127.0.0.1:{jt808_port}, metrics http://127.0.0.1:{metrics_port}/metrics\n")
        up, dead = _View(cloud.port, "#"), _View(local.port, "gateway/dead-letter/#")
        tasks += [asyncio.create_task(v.run()) for v in (up, dead)]
        await asyncio.wait_for(asyncio.gather(up.ready.wait(), dead.ready.wait()), 10)

        for name, module in sorted(SYSTEMS.items()):
            print(_colour(f"-- {name}: what the devices sent -> what the cloud received", "1", tty))
            for sample in _showcase(module.messages(devices=3, seed=7)):
                up.drain()
                dead.drain()
                await publish(local.url, [sample], qos=1)
                note = f"  ({sample.awkward})" if sample.awkward else ""
                print(_colour(f"   in   {sample.topic}{note}", "31", tty))
                print(_colour(f"        {_short(sample.payload)}", "31", tty))
                out = await _first(up.queue, dead.queue)
                if out is None:
                    print("   (nothing came out within the wait)")
                elif out.topic.value.startswith("gateway/dead-letter/"):
                    props = dict(out.properties.UserProperty) if out.properties else {}  # type: ignore[attr-defined]
                    rule = f" by rule {props['rule']}" if props.get("rule") else ""
                    print(_colour(f"   DROPPED: {props.get('reason', '?')}{rule} (sealed copy on the site broker's "
                                  "dead-letter topic only)", "33", tty))
                else:
                    print(_colour(f"   out  {out.topic.value}", "32", tty))
                    print(_colour(f"        {_short(out.payload)}", "32", tty))
            print()

        print(_colour("-- jimi-gt06: a tracker over TCP (GT06 binary frames) -> what the cloud received", "1", tty))
        up.drain()
        stats = await gt06_sim.run("127.0.0.1", gt06_port, devices=1, count=3, seed=5)
        print(_colour(f"   in   1 tracker, IMEI {gt06_sim.imei_for(0, 5)}: {dict(stats.sent)} frames, "
                      f"{sum(stats.acks.values())} acknowledged", "31", tty))
        for _ in range(sum(stats.sent.values())):
            out = await _first(up.queue)
            if out is None:
                break
            print(_colour(f"   out  {out.topic.value}  {_short(out.payload, 110)}", "32", tty))
        print()

        print(_colour("-- jimi-jt808: a terminal over TCP (JT/T 808 frames) -> what the cloud received", "1", tty))
        up.drain()
        terminal = await jt808_sim.run("127.0.0.1", jt808_port, devices=1, count=3, seed=5)
        print(_colour(f"   in   1 terminal, number {jt808_sim.terminal_for(0, 5)}: {dict(terminal.sent)} messages, "
                      f"{sum(terminal.answered.values())} answered", "31", tty))
        for _ in range(1 + terminal.sent.get("location", 0) + terminal.sent.get("alarm", 0)
                       + terminal.sent.get("heartbeat", 0)):
            out = await _first(up.queue)
            if out is None:
                break
            print(_colour(f"   out  {out.topic.value}  {_short(out.payload, 110)}", "32", tty))
        print()

        print(
            _colour(f"== Load: {count} messages from each of the five systems, 20 GT06 trackers x 10 frames", "1", tty)
        )
        before = _metrics(metrics_port)
        up.drain()
        dead.drain()
        started = time.monotonic()
        samples = {name: list(itertools.islice(m.messages(devices=50, seed=11), count)) for name, m in SYSTEMS.items()}
        results = await asyncio.gather(*(publish(local.url, s, qos=1) for s in samples.values()))
        sent = sum(r.sent for r in results)
        await _settle(metrics_port, before, sent)
        forwarded = _by(_metrics(metrics_port), "gateway_messages_out_total").total() - \
            _by(before, "gateway_messages_out_total").total()
        deadline = time.monotonic() + 30
        while up.queue.qsize() < forwarded and time.monotonic() < deadline:  # the cloud view catches up
            await asyncio.sleep(0.1)
        removed = _removed(samples, _collect(up.queue), _collect(dead.queue), Keyring.from_file(keys))
        trackers = await gt06_sim.run("127.0.0.1", gt06_port, devices=20, count=10, seed=9)
        sent += sum(trackers.sent.values())
        await _settle(metrics_port, before, sent)
        seconds = time.monotonic() - started
        after = _metrics(metrics_port)
        _summary(before, after, removed, sent, seconds, tty)
        return 0
    finally:
        if gw is not None and gw.poll() is None:
            gw.terminate()
            try:
                gw.wait(20)
            except subprocess.TimeoutExpired:
                gw.kill()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        local.close()
        cloud.close()
        shutil.rmtree(work, ignore_errors=True)


def _showcase(stream) -> list:
    """The first few samples, with the awkward cases (a PIN, a card in a note...) up front."""
    normal: list[Any] = []
    awkward: list[Any] = []
    for sample in stream:
        (awkward if sample.awkward else normal).append(sample)
        if (len(normal) >= SHOW - 2 and len(awkward) >= 2) or len(normal) + len(awkward) > 400:
            break
    return normal[: SHOW - min(2, len(awkward))] + awkward[:2]


async def _first(*queues: asyncio.Queue) -> aiomqtt.Message | None:
    getters = [asyncio.ensure_future(q.get()) for q in queues]
    done, pending = await asyncio.wait(getters, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    for g in pending:
        g.cancel()
    return next(iter(done)).result() if done else None


async def _settle(port: int, before: dict, sent: int, timeout: float = 60) -> None:
    """Wait until the gateway took ``sent`` messages and the cloud acknowledged all it forwarded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _metrics(port)
        taken = _by(now, "gateway_messages_in_total").total() - _by(before, "gateway_messages_in_total").total()
        out = _by(now, "gateway_messages_out_total").total() - _by(before, "gateway_messages_out_total").total()
        acked = _by(now, "gateway_uplink_acked_total").total() - _by(before, "gateway_uplink_acked_total").total()
        if taken >= sent and acked >= out:
            return
        await asyncio.sleep(0.2)


def _leaves(value: object) -> int:
    """Number of scalar fields in a JSON value (what "removed" counts)."""
    if isinstance(value, dict):
        return sum(_leaves(v) for v in value.values())
    if isinstance(value, list):
        return sum(_leaves(v) for v in value)
    return 1


def _collect(queue: asyncio.Queue) -> list[aiomqtt.Message]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def _policy(message: aiomqtt.Message) -> str:
    props = (
        dict(message.properties.UserProperty)
        if message.properties and hasattr(message.properties, "UserProperty")
        else {}
    )
    return props.get("policy", "")


def _removed(samples: dict[str, list], upstream: list[aiomqtt.Message], dead: list[aiomqtt.Message],
             keyring: Keyring) -> Counter:
    """Fields removed per policy: fields the devices sent in the messages that were forwarded,
    minus the fields the cloud received. Counted by the demo from both ends, not by the gateway."""
    sent_in: Counter = Counter(
        {name: sum(_leaves(msgspec.json.decode(x.payload)) for x in xs) for name, xs in samples.items()}
    )
    for m in dead:  # dropped whole, not part of what was forwarded; opened with the site key as an operator would
        with contextlib.suppress(msgspec.DecodeError, ValueError):
            sent_in[_policy(m)] -= _leaves(msgspec.json.decode(open_letter(keyring, m.payload).payload))
    received: Counter = Counter()
    for m in upstream:
        received[_policy(m)] += _leaves(msgspec.json.decode(m.payload))
    return Counter({name: sent_in[name] - received[name] for name in samples})


def _summary(before: dict, after: dict, removed: Counter, sent: int, seconds: float, tty: bool) -> None:
    def delta(name: str, *keys: str) -> Counter:
        a, b = _by(after, name, *keys), _by(before, name, *keys)
        return Counter({k: a[k] - b[k] for k in a if a[k] - b[k]})

    ins, outs = delta("gateway_messages_in_total", "policy"), delta("gateway_messages_out_total", "policy")
    drops = delta("gateway_messages_dropped_total", "policy", "reason")
    actions = delta("gateway_field_actions_total", "policy", "op")
    acked = int(_by(after, "gateway_uplink_acked_total").total() - _by(before, "gateway_uplink_acked_total").total())
    print(f"   {sent} messages in {seconds:.1f} s through one gateway worker; cloud acknowledged {acked}\n")
    head = (
        f"   {'policy':<22}{'in':>7}{'out':>7}{'dropped':>9}  "
        f"{'removed':>8}{'pseudonymised':>15}{'encrypted':>11}{'coarsened':>11}  dropped because"
    )
    print(_colour(head, "1", tty))
    for (policy,) in sorted(ins):
        d = {r: int(v) for (p, r), v in drops.items() if p == policy}
        a = {op: int(v) for (p, op), v in actions.items() if p == policy}
        why = ", ".join(f"{r} {n}" for r, n in sorted(d.items())) or "-"
        gone = f"{removed[policy]}" if policy in removed else "-"
        print(
            f"   {policy:<22}{int(ins[(policy,)]):>7}{int(outs[(policy,)]):>7}{sum(d.values()):>9}  "
            f"{gone:>8}{a.get('pseudonymise', 0):>15}{a.get('encrypt', 0):>11}{a.get('coarsen_location', 0):>11}  {why}"
        )
    print("\n   removed: fields the devices sent minus fields the cloud received, in forwarded MQTT messages")
    print("   (GT06 frames are binary, not counted). Undeclared fields count too: fail closed.")
    print("   Nothing raw left the site: identifiers are pseudonymised or encrypted, positions coarsened, "
          "messages with credentials dropped whole.")


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


# -- offline -------------------------------------------------------------------------------


def _offline() -> int:
    tty = sys.stdout.isatty()
    for path in packs():
        source = load(path)
        engine = Engine([source], Keyring.test())
        meta = source.policy.policy
        print(_colour(f"== {meta.name} {meta.version}: {meta.description}", "1", tty))
        totals: Counter = Counter()
        for test in source.policy.test:
            now = datetime.fromisoformat(test.now).timestamp()
            raw = msgspec.json.encode(test.input)
            result = engine.process(test.topic, raw, now=now, consents=AnyDevice(test.consent))
            print(f"  {test.name}" + (f"  [consent: {', '.join(test.consent)}]" if test.consent else ""))
            print(_colour(f"    in   {test.topic}  {raw.decode()}", "31", tty))
            if isinstance(result, Forward):
                out = json.dumps(decode_output(result.payload, meta.output), separators=(",", ":"))
                print(_colour(f"    out  {result.topic}  {out}", "32", tty))
                totals["forwarded"] += 1
            else:
                rule = f" (rule {result.rule})" if result.rule else ""
                print(_colour(f"    DROPPED: {result.reason}{rule}", "33", tty))
                totals["dropped"] += 1
        actions = engine.plans[0].stats.snapshot().actions
        summary = ", ".join(f"{k} {v}" for k, v in sorted(actions.items()) if v)
        print(f"  -> {totals['forwarded']} forwarded, {totals['dropped']} dropped; field actions: {summary}\n")
    return 0

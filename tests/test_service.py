"""``gateway run`` end to end: real Mosquitto brokers, the real console script, real faults.

Every scenario asserts on what the cloud broker actually delivered (and, for the
canary test, on the spool file, the log and /metrics), never on the gateway's
own account of what it did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections import Counter, defaultdict
from pathlib import Path

import msgspec
import pytest
from brokers import Mosquitto
from service_harness import GATEWAY, POLICY, Gateway, Publisher, Sink, wait_until


def traffic(n: int, devices: int = 20, start: int = 0, tag: str = "") -> list[tuple[str, bytes]]:
    """``n`` messages round-robin over ``devices``; ``seq`` is per device and increasing."""
    out = []
    for i in range(start, start + n):
        dev = f"dev{tag}-{i % devices:03d}"
        body = {
            "device_id": dev,
            "seq": i // devices,
            "lat": 12.9715 + (i % 97) * 1e-4,
            "lon": 77.5945 + (i % 89) * 1e-4,
            "ip": f"203.0.113.{i % 250}",
            "upi_ref": f"{400000000000 + i}",
            "email": f"user{i}@example.com",
            "note": "ok",
        }
        out.append((f"site/{dev}/telemetry", msgspec.json.encode(body)))
    return out


def received(sink: Sink) -> list[tuple[str, dict]]:
    return [(m.topic, json.loads(m.payload)) for m in sink.snapshot()]


def wait_complete(sink: Sink, n: int, timeout: float) -> None:
    """Wait for ``n`` distinct messages: duplicates must not end the wait early."""
    wait_until(lambda: len({(m.topic, m.payload) for m in sink.snapshot()}) >= n, timeout,
               f"{n} distinct messages at the sink (have {sink.count()} with duplicates)", 0.1)


def by_device(items: list[tuple[str, dict]]) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = defaultdict(list)
    for topic, body in items:
        seqs[topic].append(body["seq"])
    return seqs


def assert_complete_and_ordered(items: list[tuple[str, dict]], n: int, devices: int) -> int:
    """Every (device, seq) arrived; per device, first arrivals are in order. Returns duplicates."""
    seqs = by_device(items)
    assert len(seqs) == devices
    dups = 0
    for topic, got in seqs.items():
        assert set(got) == set(range(n // devices)), (
            f"{topic}: missing {sorted(set(range(n // devices)) - set(got))[:10]}"
        )
        first = list(dict.fromkeys(got))  # order of first arrival
        assert first == sorted(first), f"{topic}: out of order"
        dups += len(got) - len(first)
    return dups


@pytest.fixture
def site(tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]):
    local, cloud = broker_pair
    gw = Gateway(tmp_path / "gw", local.url, cloud.url)
    sink = Sink(cloud.url)
    pub = Publisher(local.url)
    yield local, cloud, gw, sink, pub
    pub.close()
    sink.close()
    gw.close()


def test_10k_qos1_messages_arrive_exactly_as_gateway_minimise_produces(site) -> None:
    _local, _cloud, gw, sink, pub = site
    gw.start()
    msgs = traffic(10_000, devices=50)
    pub.publish_all(msgs, timeout=120)
    got = sink.wait_for(10_000, timeout=120)
    lines = b"".join(
        b'{"topic":' + msgspec.json.encode(t) + b',"payload":' + p + b"}\n" for t, p in msgs
    )
    offline = subprocess.run(
        [GATEWAY, "minimise", "--keys", str(gw.keys), "--policy", str(POLICY)],
        input=lines, capture_output=True, check=True,
    ).stdout.splitlines()
    expected = Counter((d["topic"], msgspec.json.encode(d["payload"])) for d in map(json.loads, offline))
    actual = Counter((m.topic, m.payload) for m in got)
    assert len(offline) == 10_000
    assert actual == expected
    # provenance travels with every message
    props = dict(got[0].properties.UserProperty)
    assert props["policy"] == "service-test" and props["policy_version"] == "2.1.0"
    assert props["policy_sha256"] == __import__("hashlib").sha256(POLICY.read_bytes()).hexdigest()
    assert props["key_id"] == json.loads(gw.keys.read_text())["active"]
    assert props["retention"] == "P30D"
    assert 3500 < got[0].properties.MessageExpiryInterval <= 3600
    assert gw.metric("gateway_messages_in_total", policy="service-test") == 10_000
    assert gw.metric("gateway_uplink_acked_total") == 10_000
    assert gw.stop() == 0


def test_cloud_outage_spools_then_drains_in_order(site) -> None:
    _local, cloud, gw, sink, pub = site
    gw.start()
    msgs = traffic(3000, devices=20)
    done = threading.Event()
    t = threading.Thread(target=lambda: (pub.publish_all(msgs, timeout=120), done.set()))
    t.start()
    sink.wait_for(300, timeout=60)
    cloud.stop()  # the cloud goes away mid-stream (SIGTERM: it keeps the sink's queue)
    wait_until(lambda: gw.metric("gateway_connected", side="cloud") == 0, 10, "gateway sees the cloud gone")
    wait_until(lambda: gw.metric("gateway_spool_depth") > 100, 30, "messages spooling")
    assert gw.http("/readyz")[0] == 200  # spooling counts as ready
    depth_during = gw.metric("gateway_spool_depth")
    cloud.start()
    t.join(120)
    assert done.is_set()
    wait_complete(sink, 3000, timeout=120)
    dups = assert_complete_and_ordered(received(sink), 3000, 20)
    wait_until(lambda: gw.metric("gateway_spool_depth") == 0, 30, "spool drained")
    assert gw.metric("gateway_spooled_total") >= depth_during > 0
    assert gw.metric("gateway_reconnects_total", side="cloud") >= 1
    assert dups <= gw.metric("gateway_spooled_total")
    assert gw.stop() == 0


def test_gateway_sigkill_mid_stream_loses_nothing(site) -> None:
    _local, _cloud, gw, sink, pub = site
    gw.start()
    msgs = traffic(3000, devices=20)
    t = threading.Thread(target=pub.publish_all, args=(msgs,), kwargs={"timeout": 120})
    t.start()
    sink.wait_for(500, timeout=60)
    gw.kill()  # no shutdown, no flush: whatever was not acknowledged must still be at the local broker
    t.join(120)  # the local broker keeps accepting while the gateway is dead
    gw.start()
    wait_complete(sink, 3000, timeout=120)
    dups = assert_complete_and_ordered(received(sink), 3000, 20)
    # duplicates are allowed, and counted: each one was redelivered by the broker
    if dups:
        assert gw.metric("gateway_redelivered_total") > 0
    assert gw.stop() == 0


def test_local_broker_restart_reconnects_by_itself(site) -> None:
    local, _cloud, gw, sink, pub = site
    gw.start()
    pub.publish_all(traffic(1000, devices=10), timeout=60)
    sink.wait_for(1000, timeout=60)
    local.restart()  # graceful: the broker keeps sessions and queues on disk
    wait_until(lambda: gw.metric("gateway_reconnects_total", side="local") >= 1, 30, "local reconnect")
    pub.publish_all(traffic(1000, devices=10, start=1000), timeout=60)
    wait_complete(sink, 2000, timeout=60)
    assert_complete_and_ordered(received(sink), 2000, 10)
    assert gw.stop() == 0


def test_two_workers_share_the_load(tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]) -> None:
    local, cloud = broker_pair
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, workers=2)
    sink, pub = Sink(cloud.url), Publisher(local.url)
    try:
        gw.start()
        pub.publish_all(traffic(2000, devices=20), timeout=60)
        got = sink.wait_for(2000, timeout=60)
        assert len({(m.topic, m.payload) for m in got}) == 2000
        split = [gw.metric("gateway_messages_in_total", worker=i, policy="service-test") for i in range(2)]
        assert sum(split) >= 2000 and min(split) > 0, split
        # pseudonyms depend only on the key: both workers produce the same for a device
        topics = defaultdict(set)
        for m in got:
            topics[json.loads(m.payload)["device_id"]].add(m.topic)
        assert len(topics) == 20 and all(len(v) == 1 for v in topics.values())
        assert gw.stop() == 0
    finally:
        pub.close()
        sink.close()
        gw.close()


CANARIES = {
    "device": "CANARYDEV7Q",
    "ip": "198.51.100.213",
    "upi_ref": "731955004417",
    "email": "canary.wolf@leak.example",
    "note": "call canary.fox@leak.example now",
    "lat": 13.0123457,
    "lon": 77.6543219,
}


def test_canary_values_never_leave_in_any_form(site) -> None:
    _local, cloud, gw, sink, pub = site
    gw.start()
    c = CANARIES

    def msg(seq: int, extra: dict | None = None) -> tuple[str, bytes]:
        body = {"device_id": c["device"], "seq": seq, "lat": c["lat"], "lon": c["lon"], "ip": c["ip"],
                "upi_ref": c["upi_ref"], "email": c["email"], "note": c["note"], **(extra or {})}
        return f"site/{c['device']}/telemetry", msgspec.json.encode(body)

    pub.publish_all([msg(i) for i in range(50)])
    sink.wait_for(50, timeout=30)
    cloud.stop()  # force the spool to hold canary messages
    wait_until(lambda: gw.metric("gateway_connected", side="cloud") == 0, 10, "cloud gone")
    pub.publish_all([msg(i) for i in range(50, 100)])
    pub.publish_all([msg(999, {"pin": "4321"})])  # a credential: dropped whole
    pub.publish_all([(f"site/{c['device']}/telemetry", b'{"device_id": "' + c["device"].encode() + b'", "seq": "x"}')])
    wait_until(lambda: gw.metric("gateway_spool_depth") == 50, 30, "50 spooled")
    spool_bytes = b"".join(p.read_bytes() for p in gw.workdir.glob("spool.db*"))
    cloud.start()
    sink.wait_for(100, timeout=60)
    page = gw.metrics()
    gw.stop()
    cloud_bytes = b"".join(m.topic.encode() + m.payload + repr(m.properties).encode() for m in sink.snapshot())
    haystacks = {"cloud": cloud_bytes, "spool": spool_bytes, "log": gw.log_text().encode(), "metrics": page.encode()}
    needles = [c["device"], c["ip"], c["upi_ref"], "canary.wolf", "canary.fox", "leak.example",
               "13.0123457", "77.6543219", "4321"]
    for where, data in haystacks.items():
        for needle in needles:
            assert needle.encode() not in data, f"{needle!r} leaked into {where}"
    assert spool_bytes and b"telemetry" in spool_bytes  # the spool did hold the (minimised) messages
    assert 'reason="credential"' in page and 'reason="wrong_type"' in page


def test_garbage_is_counted_and_the_gateway_keeps_going(site) -> None:
    _local, _cloud, gw, sink, pub = site
    gw.start()
    topic = "site/dev-g/telemetry"
    nested = b'{"device_id":"dev-g","seq":1,"x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    garbage = [
        (
            topic,
            b"\xff" + os.urandom(511),
        ),  # not JSON from its first byte (a leading digit would read as "not an object")
        (topic, b'{"device_id": "dev-g", "seq": 1, "lat": 12.'),
        (topic, b'{"device_id":"dev-g","seq":1,"note":"' + b"A" * (10 * 1024 * 1024) + b'"}'),
        (topic, nested),
        (topic, b"[1,2,3]"),
        (topic, b'{"device_id": "dev-g", "seq": "one"}'),
        (topic, b""),
    ]
    pub.publish_all(garbage, timeout=60)
    pub.publish_all(traffic(20, devices=2, tag="g"), timeout=30)
    sink.wait_for(20, timeout=30)
    reasons = {r: gw.metric("gateway_messages_dropped_total", reason=r)
               for r in ("not_json", "too_large", "too_deep", "not_object", "wrong_type")}
    assert reasons["not_json"] >= 2 and reasons["too_large"] == 1 and reasons["not_object"] == 1
    assert reasons["wrong_type"] == 1 and reasons["too_deep"] + reasons["not_json"] >= 3
    assert sum(reasons.values()) == len(garbage)
    assert sink.count() == 20  # nothing of the garbage went upstream
    assert gw.proc is not None and gw.proc.poll() is None
    assert gw.stop() == 0


def test_sigterm_drains_in_flight_and_exits_zero(site) -> None:
    _local, _cloud, gw, sink, pub = site
    gw.start()
    pub.publish_all(traffic(500, devices=5), timeout=60)
    gw.signal(signal.SIGTERM)
    assert gw.proc is not None and gw.proc.wait(30) == 0
    assert "gateway_stopped" in gw.log_text()
    # whatever it had not handed on is still at the local broker: a new run delivers it
    gw.start()
    wait_complete(sink, 500, timeout=60)
    assert_complete_and_ordered(received(sink), 500, 5)
    assert gw.stop() == 0

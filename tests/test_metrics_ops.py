"""Metrics an on-call person reads on day thirty: process and runtime health, delivery
latency, the spool's age, the last forward, the active key id, and one scrape target
for all workers. Checked on the registry, and on a live gateway's /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from brokers import Mosquitto
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families
from service_harness import Gateway, Publisher, Sink, wait_until
from test_service import traffic

from gateway.keys import Keyring
from gateway.pipeline import Engine
from gateway.policy.load import load
from gateway.telemetry import Metrics, generate_latest, merge_pages

ROOT = Path(__file__).resolve().parent.parent


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_process_and_python_collectors_and_no_created_series() -> None:
    m = Metrics()
    m.register_engine(Engine([load(ROOT / "rules" / "jimi-tracksolid.toml")], Keyring.test()))
    m.delivery.labels("jimi-tracksolid").observe(0.01)
    m.messages_in.labels("jimi-tracksolid").inc()
    text = m.render().decode()
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total",
                 "process_start_time_seconds", "python_info", "python_gc_collections_total"):
        assert re.search(rf"^{name}[{{ ]", text, re.M), name
    assert "_created" not in text
    assert 'gateway_key_info{key_id="test"} 1.0' in text  # the id, never the secret
    assert Keyring.test()._secrets["test"].hex() not in text


def test_on_safe_times_delivery_once_per_message_and_acks() -> None:
    m = Metrics()
    acks: list[int] = []
    safe = m.on_safe("p", time.monotonic() - 0.3, lambda: acks.append(1))
    safe()
    m.on_safe("p", time.monotonic(), None)()  # QoS 0 at the site: nothing owed, still timed
    assert acks == [1]
    assert m.registry.get_sample_value("gateway_delivery_seconds_count", {"policy": "p"}) == 2
    assert m.registry.get_sample_value("gateway_delivery_seconds_bucket", {"policy": "p", "le": "0.25"}) == 1
    assert m.registry.get_sample_value("gateway_delivery_seconds_bucket", {"policy": "p", "le": "0.5"}) == 2


def test_watch_reads_backlog_and_spool_age_at_scrape_time() -> None:
    m = Metrics()
    state = {"backlog": 7, "oldest": time.time() - 42.0}
    m.watch(lambda: state["backlog"], lambda: state["oldest"])
    assert m.registry.get_sample_value("gateway_inflight") == 7
    assert 41.5 < m.registry.get_sample_value("gateway_spool_oldest_age_seconds") < 60
    state.update(backlog=0, oldest=None)
    assert m.registry.get_sample_value("gateway_inflight") == 0
    assert m.registry.get_sample_value("gateway_spool_oldest_age_seconds") == 0


def test_merge_pages_labels_each_worker_and_keeps_types() -> None:
    pages = {}
    for worker, n in (("0", 3), ("1", 5)):
        r = CollectorRegistry()
        Counter("gateway_messages_in_total", "in", ["policy"], registry=r).labels("p").inc(n)
        Histogram("gateway_delivery_seconds", "d", ["policy"], buckets=(0.1, 1), registry=r).labels("p").observe(0.5)
        pages[worker] = generate_latest(r).decode()
    merged = merge_pages(pages).decode()
    fam = families(merged)
    assert fam["gateway_messages_in"].type == "counter" and fam["gateway_delivery_seconds"].type == "histogram"
    assert merged.count("# TYPE gateway_messages_in_total counter") == 1
    assert 'gateway_messages_in_total{policy="p",worker="0"} 3.0' in merged
    assert 'gateway_messages_in_total{policy="p",worker="1"} 5.0' in merged
    assert 'gateway_delivery_seconds_bucket{le="1.0",policy="p",worker="1"} 1.0' in merged


@pytest.mark.slow
def test_live_delivery_spool_age_last_forward_and_refused_counted_once(
    tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]
) -> None:
    local, cloud = broker_pair
    # A spool of 1 MiB fills after a few thousand messages: the rest are refused (held).
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, spool_max_bytes=1024 * 1024)
    sink, pub = Sink(cloud.url), Publisher(local.url)
    try:
        t0 = time.time()
        gw.start()
        pub.publish_all(traffic(200, devices=10), timeout=60)
        sink.wait_for(200, timeout=60)
        wait_until(lambda: gw.metric("gateway_delivery_seconds_count", policy="service-test") >= 200, 20, "timed")
        assert gw.metric("gateway_delivery_seconds_count", policy="service-test") == 200
        assert gw.metric("gateway_delivery_seconds_bucket", policy="service-test", le="+Inf") == 200
        assert t0 < gw.metric("gateway_last_forward_timestamp_seconds") <= time.time()
        assert gw.metric("gateway_spool_oldest_age_seconds") == 0
        key_id = json.loads(gw.keys.read_text())["active"]
        assert f'gateway_key_info{{key_id="{key_id}"}} 1.0' in gw.metrics()
        assert gw.metric("process_resident_memory_bytes") > 0 and "_created" not in gw.metrics()

        cloud.stop()
        wait_until(lambda: gw.metric("gateway_connected", side="cloud") == 0, 20, "cloud gone")
        last = gw.metric("gateway_last_forward_timestamp_seconds")
        n = 6000  # ~1.3 KiB each in the spool: more than 1 MiB holds
        pub.publish_all(traffic(n, devices=10, start=200), timeout=120)
        wait_until(lambda: gw.metric("gateway_spool_refused_total") > 0, 60, "the full spool refuses")
        wait_until(lambda: gw.metric("gateway_inflight") > 0, 20, "held messages count as in flight")
        time.sleep(3)  # the held messages are retried on every flush meanwhile
        refused, spooled = gw.metric("gateway_spool_refused_total"), gw.metric("gateway_spooled_total")
        # Each message is refused at most once: never more refusals than messages sent.
        assert refused <= n - spooled, (refused, spooled)
        assert refused == gw.metric("gateway_inflight")  # the held messages, each counted once
        assert gw.metric("gateway_spool_oldest_age_seconds") >= 2.5
        assert gw.metric("gateway_last_forward_timestamp_seconds") == last  # nothing forwarded meanwhile
        cloud.start()
        wait_until(lambda: len({(m.topic, m.payload) for m in sink.snapshot()}) >= 200 + n, 120, "all delivered")
        wait_until(lambda: gw.metric("gateway_spool_depth") == 0 and gw.metric("gateway_inflight") == 0, 60,
                   "drained")
        assert gw.metric("gateway_spool_oldest_age_seconds") == 0
        assert gw.metric("gateway_last_forward_timestamp_seconds") > last
        assert gw.metric("gateway_delivery_seconds_count", policy="service-test") >= 200 + n
        assert gw.stop() == 0
    finally:
        pub.close()
        sink.close()
        gw.close()


@pytest.mark.slow
def test_two_workers_one_scrape_target(tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]) -> None:
    local, cloud = broker_pair
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, workers=2)
    sink, pub = Sink(cloud.url), Publisher(local.url)
    try:
        gw.start()
        pub.publish_all(traffic(400, devices=20), timeout=60)
        sink.wait_for(400, timeout=60)
        wait_until(lambda: gw.metric("gateway_messages_in_total", policy="service-test") >= 400, 20, "counted")
        page = gw.metrics()
        fam = families(page)  # the merged page parses, each family once
        assert page.count("# TYPE gateway_messages_in_total counter") == 1
        assert {s.labels["worker"] for s in fam["gateway_messages_in"].samples} == {"0", "1"}
        assert gw.metric("gateway_worker_up", worker=0) == 1 and gw.metric("gateway_worker_up", worker=1) == 1
        assert gw.metric("gateway_delivery_seconds_count", policy="service-test") >= 400
        assert {s.labels["worker"] for s in fam["process_resident_memory_bytes"].samples} == {"0", "1"}
        promtool = shutil.which("promtool")
        assert promtool, "promtool is missing: run .ci/setup"
        lint = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint
        assert gw.stop() == 0
    finally:
        pub.close()
        sink.close()
        gw.close()


def test_merge_pages_leaves_out_a_page_that_does_not_parse() -> None:
    good = "# TYPE gateway_spool_depth gauge\ngateway_spool_depth 4.0\n"
    merged = merge_pages({"0": good, "1": 'gateway_spool_depth{worker="1" 4\n'}).decode()
    assert 'gateway_spool_depth{worker="0"} 4.0' in merged and 'worker="1"' not in merged

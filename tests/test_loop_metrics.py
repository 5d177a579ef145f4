"""The per-message metrics (LoopCounter, LoopHistogram) expose exactly what prometheus_client's
Counter, Gauge and Histogram expose for the same events: names, types, labels, buckets, values."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.telemetry import BUCKETS, DELIVERY_BUCKETS, LoopCounter, LoopHistogram

POLICIES = st.sampled_from(["p", "jimi-tracksolid", 'q"x\\y'])  # label values needing escapes too
AMOUNTS = st.one_of(
    st.sampled_from([0.0, *BUCKETS, *DELIVERY_BUCKETS, 1e9]),  # exactly on a bound: that bucket (le)
    st.floats(0, 200, allow_nan=False),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(POLICIES, AMOUNTS), max_size=40), st.sampled_from([BUCKETS, DELIVERY_BUCKETS]))
def test_loop_histogram_page_is_prometheus_clients(events: list[tuple[str, float]], buckets: tuple) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    a = LoopHistogram("gateway_h_seconds", "help", ["policy"], buckets=buckets, registry=ours)
    b = Histogram("gateway_h_seconds", "help", ["policy"], buckets=buckets, registry=theirs)
    a.labels("p"), b.labels("p")  # exported at zero before the first event
    for policy, amount in events:
        a.labels(policy).observe(amount)
        b.labels(policy).observe(amount)
    one_a = LoopHistogram("gateway_one_seconds", "h", buckets=buckets, registry=ours)
    one_b = Histogram("gateway_one_seconds", "h", buckets=buckets, registry=theirs)
    for _, amount in events:
        one_a.observe(amount)
        one_b.observe(amount)
    assert _page(ours) == _page(theirs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(POLICIES, st.sampled_from(["schema", "leak"]), st.integers(1, 3)), max_size=30))
def test_loop_counter_page_is_prometheus_clients(events: list[tuple[str, str, int]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    a = LoopCounter("gateway_c", "help", ["policy", "reason"], registry=ours)
    b = Counter("gateway_c_total", "help", ["policy", "reason"], registry=theirs)
    plain_a, plain_b = LoopCounter("gateway_n", "n", registry=ours), Counter("gateway_n_total", "n", registry=theirs)
    gauge_a = LoopCounter("gateway_g_seconds", "g", registry=ours, kind="gauge")
    gauge_b = Gauge("gateway_g_seconds", "g", registry=theirs)
    for policy, reason, n in events:
        a.labels(policy, reason).inc(n)
        b.labels(policy, reason).inc(n)
        plain_a.inc()
        plain_b.inc()
        gauge_a.set(n * 1.5)
        gauge_b.set(n * 1.5)
    assert _page(ours) == _page(theirs)


def _page(registry: CollectorRegistry) -> list[str]:
    return sorted(generate_latest(registry).decode().splitlines())


def test_wrong_label_count_is_refused_like_prometheus_client() -> None:
    c = LoopCounter("gateway_c", "h", ["policy"], registry=CollectorRegistry())
    with pytest.raises(ValueError):
        c.labels("a", "b")
    h = LoopHistogram("gateway_h", "h", ["policy"], buckets=BUCKETS, registry=CollectorRegistry())
    with pytest.raises(ValueError):
        h.labels()


def test_scrapes_from_another_thread_while_the_loop_counts() -> None:
    """New series appear while a scrape runs: the page is consistent and nothing is lost."""
    registry = CollectorRegistry()
    c = LoopCounter("gateway_c", "h", ["policy"], registry=registry)
    h = LoopHistogram("gateway_h", "h", ["policy"], buckets=BUCKETS, registry=registry)
    stop = threading.Event()
    pages: list[bytes] = []

    def scrape() -> None:
        while not stop.is_set() and len(pages) < 2000:
            pages.append(generate_latest(registry))

    t = threading.Thread(target=scrape)
    t.start()
    try:
        for i in range(20_000):
            name = f"p{i % 500}"
            c.labels(name).inc()
            h.labels(name).observe(1e-5)
    finally:
        stop.set()
        t.join(10)
    assert registry.get_sample_value("gateway_c_total", {"policy": "p7"}) == 40
    assert registry.get_sample_value("gateway_h_count", {"policy": "p7"}) == 40
    assert pages

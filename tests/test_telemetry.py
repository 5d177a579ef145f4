"""Telemetry: counters move with the engine's results, no payload value or device id
ever reaches the metrics, the HTTP endpoints answer, and log lines are redacted JSON."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import structlog

from gateway.keys import Keyring
from gateway.pipeline import Engine, Forward, Reject
from gateway.policy.load import load
from gateway.telemetry import Metrics, configure_logging, get_logger, redact_payloads, serve

RULES = Path(__file__).resolve().parent.parent / "rules" / "jimi-tracksolid.toml"
DEVICE = "490154203237518"  # raw IMEI in the topic
TOPIC = f"tracksolid/{DEVICE}/alarm"
CANARIES = [
    DEVICE,
    "CANARY-IMEI-490154203237518",
    "198.51.100.77",
    "4111 1111 1111 1111",
    "4111111111111111",
    "CANARY-NOTE",
]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def engine() -> Engine:
    return Engine([load(RULES)], Keyring.test(), unknown_sample=1)


@pytest.fixture
def metrics(engine: Engine) -> Metrics:
    m = Metrics()
    m.register_engine(engine)
    messages = [
        {"imei": "CANARY-IMEI-490154203237518", "login_ip": "198.51.100.77", "vendor": "CANARY-NOTE"},
        {"imei": DEVICE, "login_ip": "not-an-ip"},
        {"time": "card 4111 1111 1111 1111"},  # kept field: the leak guard stops it
        {"latitude": "12.97"},  # wrong type
    ]
    for msg in messages:
        m.observe(engine.process(TOPIC, json.dumps(msg).encode()), 2e-5)
    m.observe(engine.process(TOPIC, b"CANARY-NOTE{"), 1e-5)
    m.observe(engine.process(f"other/{DEVICE}", b"{}"), 1e-6)  # no route
    return m


def test_counters_follow_results(metrics: Metrics) -> None:
    p = "jimi-tracksolid"
    assert sample(metrics, "gateway_messages_in_total", policy=p) == 5
    assert sample(metrics, "gateway_messages_in_total", policy="none") == 1
    assert sample(metrics, "gateway_messages_out_total", policy=p) == 2
    for reason in ("leak", "wrong_type", "not_json"):
        assert sample(metrics, "gateway_messages_dropped_total", policy=p, reason=reason) == 1
    assert sample(metrics, "gateway_messages_dropped_total", policy="none", reason="no_route") == 1
    assert sample(metrics, "gateway_leaks_blocked_total", policy=p, rule="time", detector="card") == 1
    assert sample(metrics, "gateway_processing_seconds_count") == 6
    assert sample(metrics, "gateway_field_actions_total", policy=p, op="pseudonymise") > 0
    assert sample(metrics, "gateway_field_actions_total", policy=p, op="truncate_ip") > 0
    assert sample(metrics, "gateway_unknown_fields_sampled_total", policy=p) == 1
    assert sample(metrics, "gateway_unknown_field_sampled_messages_total", policy=p) >= 2
    assert sample(metrics, "gateway_field_events_total", policy=p, rule="login_ip", event="invalid_ip") == 1
    text = metrics.render().decode()
    assert 'event="leak"' not in text  # counted once, by observe()
    assert 'gateway_policy_info{policy="jimi-tracksolid",sha256="' in text
    assert 'gateway_build_info{python="' in text


def test_no_payload_or_device_data_in_metrics(metrics: Metrics) -> None:
    text = metrics.render().decode()
    for canary in CANARIES:
        assert canary not in text
    assert "CANARY" not in text and "198.51.100" not in text


def test_hot_reload_replaces_engine(metrics: Metrics) -> None:
    fresh = Engine([load(RULES)], Keyring.test())
    metrics.register_engine(fresh)
    p = "jimi-tracksolid"
    assert sample(metrics, "gateway_field_actions_total", policy=p, op="truncate_ip") == 0
    assert sample(metrics, "gateway_messages_in_total", policy=p) == 5  # process-level counters persist
    assert metrics.render().count(b"gateway_policy_info{") == 1


def test_registries_are_private() -> None:
    a, b = Metrics(), Metrics()  # a shared (global) registry would raise on duplicate names
    a.observe(Reject("no_route"), 1e-6)
    assert sample(a, "gateway_messages_in_total", policy="none") == 1
    assert sample(b, "gateway_messages_in_total", policy="none") == 0


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_http_endpoints(metrics: Metrics) -> None:
    state = {"ready": False}
    server = serve(metrics, "127.0.0.1", 0, ready=lambda: state["ready"])
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        base = f"http://127.0.0.1:{port}"
        status, body = get(base + "/metrics")
        assert status == 200 and b"gateway_messages_in_total" in body
        assert not any(c.encode() in body for c in CANARIES)
        assert get(base + "/healthz") == (200, b"ok\n")
        assert get(base + "/readyz")[0] == 503
        state["ready"] = True
        assert get(base + "/readyz")[0] == 200
        assert get(base + "/nope")[0] == 404
    finally:
        server.shutdown()


def test_json_logs_are_redacted() -> None:
    log = get_logger("gateway.test")  # created before configuration, as at import time
    buf = io.StringIO()
    configure_logging(json=True, level="info", file=buf)
    try:
        log.info("message_rejected", reason="leak", payload="4111 1111 1111 1111", value="x", raw=b"y")
        log.debug("hidden")
        lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    finally:
        structlog.reset_defaults()
    assert len(lines) == 1
    (line,) = lines
    assert line["event"] == "message_rejected" and line["reason"] == "leak"
    assert line["level"] == "info" and line["logger"] == "gateway.test" and "T" in line["timestamp"]
    assert not {"payload", "value", "raw"} & line.keys()
    assert "4111" not in buf.getvalue()


def test_auto_picks_console_for_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    buf = Tty()
    configure_logging(file=buf)
    try:
        get_logger("t").warning("hello", payload="secret")
    finally:
        structlog.reset_defaults()
    out = buf.getvalue()
    assert "hello" in out and "secret" not in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_redact_processor_directly() -> None:
    assert redact_payloads(None, "info", {"event": "e", "Payload": 1, "input": 2, "n": 3}) == {"event": "e", "n": 3}


def test_forward_and_reject_types_accepted(engine: Engine) -> None:
    m = Metrics()
    r = engine.process(TOPIC, b"{}")
    assert isinstance(r, Forward)
    m.observe(r, 1e-5)
    assert sample(m, "gateway_messages_out_total", policy="jimi-tracksolid") == 1


def test_engine_metrics_are_the_plan_stats_snapshot(metrics: Metrics, engine: Engine) -> None:
    """One stats object per plan: the scrape shows exactly what ``plan.stats.snapshot()`` holds."""
    p = "jimi-tracksolid"
    (plan,) = engine.plans
    snap = plan.stats.snapshot()
    assert snap.actions == dict(plan.action_counts())
    assert snap.actions["truncate_ip"] == 2  # both login_ip values: one truncated, one invalid
    assert snap.unknown_fields == 1 and snap.sampled_messages >= 2
    assert ("login_ip", "invalid_ip", 1) in snap.field_events
    assert not any(event == "leak" for _, event, _ in snap.field_events)  # a message-level event
    for op, n in snap.actions.items():
        assert sample(metrics, "gateway_field_actions_total", policy=p, op=op) == n
    for rule, event, n in snap.field_events:
        assert sample(metrics, "gateway_field_events_total", policy=p, rule=rule, event=event) == n
    assert sample(metrics, "gateway_unknown_fields_sampled_total", policy=p) == snap.unknown_fields
    engine.process(TOPIC, json.dumps({"login_ip": "also-not-an-ip"}).encode())
    assert sample(metrics, "gateway_field_events_total", policy=p, rule="login_ip", event="invalid_ip") == 2
    assert plan.stats.snapshot().actions["truncate_ip"] == 3  # read at scrape time, nothing cached

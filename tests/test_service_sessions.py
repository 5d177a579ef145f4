"""Local sessions: a backlog waiting at start, and sessions left behind by a change of
worker count or client id. Real Mosquitto, the real console script."""

from __future__ import annotations

import json
from pathlib import Path

from brokers import Mosquitto
from service_harness import Gateway, Publisher, Sink
from test_service import assert_complete_and_ordered, received, traffic, wait_complete


def error_events(gw: Gateway) -> list[str]:
    """Log lines that are not JSON events, or JSON events at error level or above."""
    bad = []
    for line in gw.log_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if event.get("level") in ("error", "critical", "exception"):
            bad.append(line)
    return bad


def test_starting_on_a_backlog_takes_it_without_an_error(tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]):
    """Issue 10 item 4: the backlog arrives straight after CONNACK, before the session's
    acknowledgement function was set up (TypeError: the first argument must be callable)."""
    local, cloud = broker_pair
    gw = Gateway(tmp_path / "gw", local.url, cloud.url)
    sink, pub = Sink(cloud.url), Publisher(local.url)
    try:
        for rnd in range(2):  # the first start creates the session; each later one starts on a backlog
            gw.start()
            assert gw.stop() == 0
            pub.publish_all(traffic(1000, devices=10, start=1000 * rnd), timeout=60)
        gw.start()
        wait_complete(sink, 2000, timeout=90)
        assert_complete_and_ordered(received(sink), 2000, 10)
        assert gw.metric("gateway_messages_dropped_total") == 0
        assert gw.stop() == 0
        assert error_events(gw) == []
        assert "Traceback" not in gw.log_text()
    finally:
        pub.close()
        sink.close()
        gw.close()

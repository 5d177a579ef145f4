"""Local sessions: a backlog waiting at start, and sessions left behind by a change of
worker count or client id. Real Mosquitto, the real console script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from brokers import Mosquitto
from service_harness import Gateway, Publisher, Sink, wait_until
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
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, extra='dead_letter = "gateway/dead-letter"')
    sink, pub = Sink(cloud.url), Publisher(local.url)
    rejected = [("site/dev-x/telemetry", b'{"device_id":"dev-x","seq":%d,"pin":"1234"}' % i) for i in range(50)]
    try:
        for rnd in range(2):  # the first start creates the session; each later one starts on a backlog
            gw.start()
            if rnd:  # take the whole backlog before stopping, so the next start has exactly its own
                wait_complete(sink, 1000 * rnd, timeout=90)
                wait_until(lambda: gw.metric("gateway_dead_lettered_total") == 50, 20, "50 dead letters")
            assert gw.stop() == 0
            pub.publish_all(rejected[:25] + traffic(1000, devices=10, start=1000 * rnd) + rejected[25:], timeout=60)
        gw.start()
        wait_complete(sink, 2000, timeout=90)
        assert_complete_and_ordered(received(sink), 2000, 10)
        # each rejected message of the backlog is counted, and its dead letter published
        wait_until(lambda: gw.metric("gateway_dead_lettered_total") == 50, 20, "50 dead letters")
        assert gw.metric("gateway_messages_dropped_total") == 50  # this process: the last backlog
        assert gw.metric("gateway_dead_letters_unsent_total") == 0
        assert gw.stop() == 0
        assert error_events(gw) == []
        assert "Traceback" not in gw.log_text()
    finally:
        pub.close()
        sink.close()
        gw.close()


@pytest.mark.slow
def test_changing_the_worker_count_strands_nothing(tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]) -> None:
    """Issue 10 item 2: with a group, 1 -> 2 -> 1 workers, 2,000 messages in each phase: 6,000 of 6,000."""
    local, cloud = broker_pair
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, workers=2)  # writes group = "gw"
    sink, pub = Sink(cloud.url), Publisher(local.url)
    try:
        for phase, workers in enumerate((1, 2, 1)):
            gw.workers = workers
            gw.start()
            pub.publish_all(traffic(2000, devices=20, start=2000 * phase), timeout=120)
            wait_until(lambda phase=phase: len({m.payload for m in sink.snapshot()}) >= 2000 * phase + 1000, 60,
                       f"phase {phase} flowing")
            assert gw.stop() == 0
        gw.start()  # whatever a phase left at the broker is taken now, or never
        wait_complete(sink, 6000, timeout=120)
        # every (device, seq) arrived; a swept session's messages may interleave with newer traffic of the
        # same device (docs/operations.md: order is kept within each session, not across the change)
        seqs = {(t, b["seq"]) for t, b in received(sink)}
        assert len(seqs) == 6000 and len({t for t, _ in seqs}) == 20
        assert "session_swept" in gw.log_text()
        assert gw.stop() == 0
    finally:
        pub.close()
        sink.close()
        gw.close()


@pytest.mark.slow
def test_changing_the_client_id_loses_nothing(tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]) -> None:
    local, cloud = broker_pair
    gw = Gateway(tmp_path / "gw", local.url, cloud.url)
    sink, pub = Sink(cloud.url), Publisher(local.url)
    try:
        gw.start()
        pub.publish_all(traffic(500, devices=10), timeout=60)
        sink.wait_for(500, 60)
        assert gw.stop() == 0
        pub.publish_all(traffic(1000, devices=10, start=500), timeout=60)  # queued for the old id's session
        gw.config.write_text(gw.config.read_text().replace('client_id = "gw-local"', 'client_id = "gw-local-2"'))
        gw.start()
        pub.publish_all(traffic(500, devices=10, start=1500), timeout=60)
        wait_complete(sink, 2000, timeout=90)
        # every (device, seq) arrived; the old session's backlog and the new traffic may interleave
        seqs = {(t, b["seq"]) for t, b in received(sink)}
        assert len(seqs) == 2000 and {s for _, s in seqs} == set(range(200))
        wait_until(lambda: gw.metric("gateway_session_sweeps_total", result="ok") == 1, 30, "the old session swept")
        record = json.loads((tmp_path / "gw" / "spool.db.sessions.json").read_text())
        assert record["ids"] == ["gw-local-2"]
        assert gw.stop() == 0
    finally:
        pub.close()
        sink.close()
        gw.close()

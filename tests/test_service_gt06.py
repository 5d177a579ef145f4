"""GT06 trackers through the live service: TCP in, Tracksolid policy, cloud out."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

from brokers import Mosquitto
from service_harness import ROOT, Gateway, Sink, free_port

from devices.gt06 import simulator


def test_trackers_over_gt06_arrive_minimised_at_the_cloud(tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]) -> None:
    local, cloud = broker_pair
    port = free_port()
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, policies=[ROOT / "rules" / "jimi-tracksolid.toml"],
                 extra=f'[ingest.gt06]\nlisten = "127.0.0.1:{port}"\nmax_frames_per_second = 1000')
    sink = Sink(cloud.url)
    try:
        gw.start()
        stats = asyncio.run(simulator.run("127.0.0.1", port, devices=50, count=8, seed=3))
        assert stats.logged_in == 50 and not stats.errors, stats
        sent = stats.sent  # logins too: the listener forwards each as a "login" message
        got = sink.wait_for(sum(sent.values()), timeout=60)
        kinds = Counter(m.topic.rsplit("/", 1)[1] for m in got)
        assert kinds == Counter(sent), (kinds, sent)
        imeis = {simulator.imei_for(d, 3) for d in range(50)}
        for m in got:
            body = json.loads(m.payload)
            assert not any(i in m.topic or i.encode() in m.payload for i in imeis)  # pseudonymised
            for key in ("latitude", "longitude"):
                if key in body:  # no consent on record: a 1 km cell, never the raw fix
                    assert len(repr(body[key]).split(".")[1]) <= 4, body
        assert gw.metric("gateway_gt06_events_total", event="logins") == 50
        assert gw.metric("gateway_uplink_acked_total") == len(got)
        page = gw.metrics() + gw.log_text()
        assert not any(i in page for i in imeis)
        assert gw.stop() == 0
    finally:
        sink.close()
        gw.close()

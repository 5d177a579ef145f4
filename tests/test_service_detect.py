"""Issue 9, live: identifiers in awkward forms (other scripts' digits, a float, a prefixed
secret) sent by a device through `gateway run` with the real SmartLocker pack between two
real Mosquitto brokers. The cloud receives none of their raw values; the leak guard
counts what it stopped."""

# ruff: noqa: RUF001  (fullwidth and other scripts' characters are what this test is about)
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from service_harness import Gateway, Publisher, Sink, wait_until

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "rules" / "smartlocker-jenix.toml"
TOPIC = "smartlocker/blr-01/CAB-0042/event"
BASE = '"board_id": "BRD-7", "locker_id": 12, "event": "opened", "ts": "2026-01-15T11:59:58Z", "status": "door_open"'


def message(**fields: str) -> bytes:
    """A SmartLocker event; ``fields`` are raw JSON texts (so a float keeps its written form)."""
    extra = "".join(f', "{k}": {v}' for k, v in fields.items())
    return ("{" + BASE + extra + "}").encode()


def ascii_digits(text: str) -> str:
    return "".join(str(unicodedata.decimal(ch)) for ch in text if unicodedata.decimal(ch, None) is not None)


def test_awkward_identifiers_never_reach_the_cloud(tmp_path, broker_pair) -> None:
    local, cloud = broker_pair
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, policies=[PACK])
    sink, pub = Sink(cloud.url), Publisher(local.url)
    stopped = [
        (TOPIC, message(cabinet_id='"４１１１ １１１１ １１１１ １１１１"')),  # fullwidth card in a kept string
        (TOPIC, message(cabinet_id='"CAB-0042"', locker_id="4111111111111111.0")),  # a card as a float
        (TOPIC, message(cabinet_id='"CAB-0042"', locker_id="4.111111111111111e15")),
        (TOPIC, message(cabinet_id='"CAB-0042"', locker_id='{"९८७६५४३२१०": 1}')),  # Devanagari phone as a map key
        ("smartlocker/٩٨٧٦٥٤٣٢١٠/CAB-0042/event", message(cabinet_id='"CAB-0042"')),  # in a kept topic level
        (TOPIC, message(cabinet_id='"CAB-0042"', locker_id="[12.935182, 77.624481]")),  # a position as a list
    ]
    scrubbed = (TOPIC, message(cabinet_id='"CAB-0042"', note='"db_password=Winter2026! call ९८७६५ ४३२१०"'))
    last = (TOPIC, message(cabinet_id='"CAB-0099"'))
    try:
        gw.start()
        pub.publish_all([*stopped, scrubbed, last])
        wait_until(lambda: any(b"CAB-0099" in m.payload for m in sink.snapshot()), 30, "the last message at the cloud")
        wait_until(lambda: gw.metric("gateway_leaks_blocked_total") >= len(stopped), 20, "the leaks counted")
        delivered = sink.snapshot()
        assert len(delivered) == 2, [m.payload for m in delivered]
        note = json.loads(delivered[0].payload)["note"]
        assert note == "db_password=[SECRET] call [PHONE]"
        for m in delivered:
            text = m.topic + m.payload.decode()
            digits = ascii_digits(text)
            assert "Winter2026" not in text
            assert "4111111111111111" not in digits and "9876543210" not in digits and "935182" not in digits
        assert gw.metric("gateway_leaks_blocked_total") == len(stopped)
        assert gw.metric("gateway_leaks_blocked_total", detector="card") == 3
        assert gw.metric("gateway_leaks_blocked_total", detector="phone") == 2
        assert gw.metric("gateway_leaks_blocked_total", detector="coordinate") == 1
        log = gw.log_text()
        assert "4111" not in log and "Winter2026" not in log and "९८७६५" not in log
    finally:
        sink.close()
        pub.close()
        gw.close()

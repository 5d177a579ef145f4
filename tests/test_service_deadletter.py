"""Dead letters are sealed for the key holder (issue 9 item 11): rejected raw payloads and
their topics never appear in the clear on the local broker, and a prefix the gateway
itself subscribes to is refused at start."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from service_harness import GATEWAY, Gateway, Publisher, Sink

from gateway.keys import Keyring
from gateway.service.deadletter import Sealer, check_prefix, open_letter, overlaps

PIN, PHONE, UPI_PIN, IMEI = "8642", "+919876543210", "482913", "358756091234567"


def forms(value: str) -> list[bytes]:
    """The ways a value could show up in bytes: raw, base64 (any alignment), hex."""
    raw = value.encode()
    out = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for pad in range(3):
        b64 = base64.b64encode(b"x" * pad + raw)[4 if pad else 0 : -4]
        out.append(b64)
    return [f for f in out if len(f) >= 4]


@pytest.mark.parametrize(("a", "b", "expect"), [
    ("site/+/telemetry", "gateway/dead-letter/+", False),
    ("#", "gateway/dead-letter/+", True),
    ("gateway/#", "gateway/dead-letter/+", True),
    ("+/+/credential", "gateway/dead-letter/+", True),
    ("+/+", "gateway/dead-letter/+", False),
    ("site/+/telemetry", "site/dl/+", True),
    ("site/dl", "site/dl/+", False),
    ("gateway/dead-letter/x/y", "gateway/dead-letter/+", False),
])
def test_filter_overlap(a: str, b: str, expect: bool) -> None:
    assert overlaps(a, b) is expect and overlaps(b, a) is expect


def test_a_prefix_a_subscription_matches_is_named() -> None:
    problem = check_prefix("site/dl", [("policy 'p'", "site/+/telemetry")])
    assert problem and "dead_letter" in problem and "site/+/telemetry" in problem
    assert check_prefix("gateway/dead-letter", [("policy 'p'", "site/+/telemetry")]) is None


@given(payload=st.binary(max_size=300), topic=st.text(min_size=1, max_size=40))
def test_sealed_letters_open_only_with_the_site_key(payload: bytes, topic: str) -> None:
    ring = Keyring("k1", {"k1": b"k" * 32})
    sealed = Sealer(ring).seal(topic, payload, "credential", "p", "rule")
    letter = open_letter(ring, sealed)
    assert (letter.topic, letter.payload, letter.reason) == (topic, payload, "credential")
    if len(payload) >= 6:
        assert payload not in sealed and base64.b64encode(payload) not in sealed
    with pytest.raises(ValueError, match="does not open"):
        open_letter(Keyring("k1", {"k1": b"o" * 32}), sealed)
    with pytest.raises(ValueError, match="key id"):
        open_letter(Keyring("k2", {"k2": b"k" * 32}), sealed)
    doc = msgspec.json.decode(sealed)
    doc["kid"] = "k9"
    with pytest.raises(ValueError):
        open_letter(Keyring("k9", {"k9": b"k" * 32}), msgspec.json.encode(doc))  # the key id is authenticated


def test_rotated_keys_still_open_older_letters() -> None:
    old = Keyring("k1", {"k1": b"a" * 32})
    sealed = Sealer(old).seal("t", b"x", "r", "p", "")
    assert open_letter(Keyring("k2", {"k1": b"a" * 32, "k2": b"b" * 32}), sealed).payload == b"x"


def test_a_subscriber_to_gateway_reads_no_pin_phone_or_upi_pin(tmp_path: Path, broker_pair) -> None:
    local, cloud = broker_pair
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, extra='dead_letter = "gateway/dead-letter"')
    spy = Sink(local.url, topic="gateway/#", client_id="spy")
    sink, pub = Sink(cloud.url), Publisher(local.url)
    rejected = [
        (f"site/{IMEI}/telemetry", {"device_id": IMEI, "seq": 1, "pin": PIN, "note": f"call {PHONE}"}),
        ("site/dev-2/telemetry", {"device_id": "dev-2", "seq": 2, "pin": UPI_PIN, "upi_pin": UPI_PIN}),
        ("site/dev-3/telemetry", b"not json " + PHONE.encode()),
    ]
    try:
        gw.start()
        pub.publish_all([(t, p if isinstance(p, bytes) else msgspec.json.encode(p)) for t, p in rejected]
                        + [("site/dev-1/telemetry", msgspec.json.encode({"device_id": "dev-1", "seq": 3}))])
        letters = spy.wait_for(3, 20)
        sink.wait_for(1, 20)
        for m in letters:
            assert m.topic.startswith("gateway/dead-letter/")
            visible = m.payload + m.topic.encode() + repr(m.properties.UserProperty).encode()
            for canary in (PIN, PHONE, UPI_PIN, IMEI, "dev-2", "site/"):
                assert not any(f in visible for f in forms(canary)), (canary, m.topic)
        assert {dict(m.properties.UserProperty)["reason"] for m in letters} == {"credential", "not_json"}
        # the key holder opens them
        opened = subprocess.run([GATEWAY, "deadletter", "open", "--keys", str(gw.keys)], capture_output=True,
                                input=b"\n".join(m.payload for m in letters) + b"\n", check=True).stdout
        got = {(d["topic"], d["payload"]) for d in map(json.loads, opened.splitlines())}
        want = {(t, (p if isinstance(p, bytes) else msgspec.json.encode(p)).decode()) for t, p in rejected}
        assert got == want
        other = tmp_path / "other.json"
        subprocess.run([GATEWAY, "keygen", str(other)], check=True, capture_output=True)
        wrong = subprocess.run([GATEWAY, "deadletter", "open", "--keys", str(other)], capture_output=True,
                               input=letters[0].payload + b"\n")
        assert wrong.returncode == 1 and wrong.stdout == b"" and PIN.encode() not in wrong.stderr
        assert gw.metric("gateway_dead_lettered_total") == 3
        assert all(PIN not in line and PHONE not in line for line in gw.log_text().splitlines())
        assert gw.stop() == 0
    finally:
        for c in (spy, sink, pub):
            c.close()
        gw.close()


@pytest.mark.parametrize(("prefix", "subscribed"), [("site/dl", "site/+/telemetry"), ("consent/gw", "consent/+/+")])
def test_a_dead_letter_prefix_the_gateway_subscribes_to_is_refused_at_start(tmp_path: Path, prefix: str,
                                                                            subscribed: str) -> None:
    gw = Gateway(tmp_path / "gw", "mqtt://127.0.0.1:9", "mqtt://127.0.0.1:9", extra=f'dead_letter = "{prefix}"')
    r = subprocess.run([GATEWAY, "run", "--config", str(gw.config)], capture_output=True, text=True, timeout=30)
    assert r.returncode in (2, 78), r.stderr
    assert "dead_letter" in r.stderr and subscribed in r.stderr

"""Consent records: only what the configured issuer signed changes the table (issue 9 item 10)."""

from __future__ import annotations

import base64
import json
import subprocess
import time

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from service_harness import GATEWAY, Gateway, Publisher, Sink, wait_until

from gateway.service.consent import Consents, load_private_key, sign

T = "consent/{device}/{purpose}"
NOW = 1_800_000_000
ISSUER = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def table(keys=(ISSUER,), **kw) -> Consents:
    return Consents(T, [k.public_key() for k in keys], **kw)


def rec(device="dev-1", purpose="precise_location", granted=True, at=NOW, expires=None, key=ISSUER):
    return f"consent/{device}/{purpose}", sign(key, device, purpose, granted, at, expires)


@pytest.mark.parametrize("payload", [b"true", b"1", b"granted", b"", b'{"granted": true}',
                                     b'{"granted": true, "issued_at": 1800000000, "sig": ""}'])
def test_unsigned_records_change_nothing(payload: bytes) -> None:
    c = table()
    assert c.update("consent/dev-1/precise_location", payload, NOW) in ("unauthenticated", "invalid")
    assert c.table == {}
    c.update(*rec(), NOW)
    assert c.update("consent/dev-1/precise_location", payload, NOW) in ("unauthenticated", "invalid")
    assert c.table == {"dev-1": frozenset({"precise_location"})}  # nor does an unsigned revocation


def test_a_signature_binds_issuer_device_purpose_and_verdict() -> None:
    c = table()
    assert c.update(*rec(key=OTHER), NOW) == "unauthenticated"  # another key
    _, payload = rec(device="dev-1")
    assert c.update("consent/dev-2/precise_location", payload, NOW) == "unauthenticated"  # moved to another device
    assert c.update("consent/dev-1/other_purpose", payload, NOW) == "unauthenticated"
    forged = msgspec.json.decode(rec(granted=False)[1])
    forged["granted"] = True
    assert c.update("consent/dev-1/precise_location", msgspec.json.encode(forged), NOW) == "unauthenticated"
    assert c.table == {}
    assert table(keys=()).update(*rec(), NOW) == "unauthenticated"  # no key configured: nothing is trusted
    assert c.update(*rec(), NOW) == "granted" and c.table == {"dev-1": frozenset({"precise_location"})}


def test_an_older_record_never_replaces_a_newer_one() -> None:
    c = table()
    old_grant = rec(at=NOW - 100)
    assert c.update(*old_grant, NOW) == "granted"
    assert c.update(*rec(granted=False, at=NOW - 50), NOW) == "revoked"
    assert c.update(*old_grant, NOW) == "stale"  # a replayed grant after the revocation
    assert c.table == {}
    assert c.update(*rec(at=NOW - 50), NOW) == "stale"  # same time as the revocation: revocation wins
    assert c.update(*rec(at=NOW), NOW) == "granted"
    assert c.update(*rec(at=NOW), NOW) == "granted" and len(c) == 1  # a retained record read again
    assert c.update(*rec(at=NOW + 10_000), NOW) == "invalid"  # from the future
    assert c.table == {"dev-1": frozenset({"precise_location"})}


def test_grants_expire() -> None:
    c = table()
    assert c.update(*rec(expires=NOW - 1, at=NOW - 10), NOW) == "expired" and c.table == {}
    assert c.update(*rec(expires=NOW + 60), NOW) == "granted"
    assert c.update(*rec(device="dev-2"), NOW) == "granted"
    assert c.next_expiry == NOW + 60
    assert c.expire(NOW + 59) == 0 and "dev-1" in c.table
    assert c.expire(NOW + 60) == 1 and c.table == {"dev-2": frozenset({"precise_location"})}
    assert c.update(*rec(expires=NOW + 60), NOW + 61) == "stale"  # the lapsed grant sent again


def test_the_table_is_bounded_and_revocations_always_apply() -> None:
    c = table(max_entries=3)
    for i in range(3):
        assert c.update(*rec(device=f"d{i}"), NOW) == "granted"
    assert c.update(*rec(device="d3"), NOW) == "full" and "d3" not in c.table
    assert c.update(*rec(device="d0", purpose="other"), NOW) == "full"
    assert c.update(*rec(device="d0", at=NOW + 1), NOW) == "granted"  # renewing one in force needs no room
    assert c.update(*rec(device="d9", granted=False), NOW) == "revoked"
    assert c.update(*rec(device="d1", granted=False, at=NOW + 1), NOW) == "revoked"
    assert c.update(*rec(device="d3", at=NOW + 2), NOW) == "granted" and len(c) == 3
    for i in range(10):  # revocations keep coming: the oldest are forgotten, their grants stay out
        assert c.update(*rec(device=f"r{i}", granted=False, at=NOW + 1), NOW) == "revoked"
    assert c.update(*rec(device="d9", at=NOW), NOW) == "stale"


@given(device=st.text(min_size=1, max_size=20).filter(lambda s: "/" not in s and "+" not in s and "#" not in s),
       purpose=st.sampled_from(["precise_location", "x"]), granted=st.booleans(),
       at=st.integers(0, NOW), flip=st.integers(0, 200))
def test_any_change_to_a_signed_record_is_refused(device: str, purpose: str, granted: bool, at: int, flip: int) -> None:
    topic, payload = rec(device=device, purpose=purpose, granted=granted, at=at)
    c = table()
    expect = "invalid" if "\n" in device else ("granted" if granted else "revoked")
    assert c.update(topic, payload, NOW) == expect
    doc = msgspec.json.decode(payload)
    doc["issued_at"] = at + 1 + flip
    assert table().update(topic, msgspec.json.encode(doc), NOW) in ("unauthenticated", "invalid")
    sig = bytearray(base64.b64decode(doc["sig"]))
    sig[flip % len(sig)] ^= 1
    doc["issued_at"], doc["sig"] = at, base64.b64encode(sig).decode()
    assert table().update(topic, msgspec.json.encode(doc), NOW) in ("unauthenticated", "invalid")


def test_the_cli_signs_what_the_gateway_verifies(tmp_path) -> None:
    key = tmp_path / "issuer.key"
    pub = subprocess.run([GATEWAY, "consent", "keygen", str(key)], capture_output=True, text=True, check=True).stdout
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert subprocess.run([GATEWAY, "consent", "keygen", str(key)], capture_output=True).returncode == 2
    out = subprocess.run([GATEWAY, "consent", "grant", "--key", str(key), "358756091234567", "precise_location",
                          "--issued-at", str(NOW), "--expires-in", "60"], capture_output=True, check=True).stdout
    from gateway.service.consent import public_key

    c = Consents(T, [public_key(pub.strip())])
    assert c.update("consent/358756091234567/precise_location", out.strip(), NOW) == "granted"
    assert c.next_expiry == NOW + 60
    assert load_private_key(key).public_key().public_bytes_raw() == base64.b64decode(pub)


# -- live: through `gateway run` ---------------------------------------------------------------

MSG = {"device_id": "dev-1", "seq": 1, "lat": 12.971598, "lon": 77.594562, "ip": "203.0.113.77"}
CONSENT = "consent/dev-1/precise_location"


def _consent_site(tmp_path, broker_pair):
    """A gateway trusting a fresh consent issuer, a cloud sink and a site publisher; ``signed(action,
    at)`` is the issuer's record for dev-1 (via the CLI), ``record(payload, result)`` publishes one
    retained and waits until the gateway has counted it as ``result``."""
    local, cloud = broker_pair
    issuer = tmp_path / "issuer.key"
    pub_key = subprocess.run([GATEWAY, "consent", "keygen", str(issuer)], capture_output=True, text=True,
                             check=True).stdout.strip()
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, extra=f'[consent]\npublic_keys = ["{pub_key}"]')
    sink, pub = Sink(cloud.url), Publisher(local.url)

    def signed(action: str, at: int) -> bytes:
        return subprocess.run([GATEWAY, "consent", action, "--key", str(issuer), "dev-1", "precise_location",
                               "--issued-at", str(at)], capture_output=True, check=True).stdout.strip()

    def record(payload: bytes, result: str) -> None:
        before = gw.metric("gateway_consent_updates_total", result=result)
        pub.client.publish(CONSENT, payload, qos=1, retain=True).wait_for_publish(10)
        wait_until(lambda: gw.metric("gateway_consent_updates_total", result=result) > before, 20, result)

    return gw, sink, pub, signed, record


def test_only_signed_consent_unlocks_precise_location_at_the_cloud(tmp_path, broker_pair) -> None:
    gw, sink, pub, signed, record = _consent_site(tmp_path, broker_pair)

    def lat_at_cloud() -> float:
        n = sink.count()
        pub.publish_all([("site/dev-1/telemetry", msgspec.json.encode(MSG))])
        return round(json.loads(sink.wait_for(n + 1, 20)[n].payload)["lat"], 6)

    try:
        pub.client.publish(CONSENT, b"true", qos=1, retain=True).wait_for_publish(10)  # waiting before the start
        gw.start()
        wait_until(lambda: gw.metric("gateway_consent_updates_total", result="unauthenticated") == 1, 20, "read")
        assert lat_at_cloud() != 12.971598
        for forged in (b"1", b'{"granted": true}', signed("grant", int(time.time())).replace(b'"sig":"', b'"sig":"A')):
            record(forged, "unauthenticated" if forged[:1] != b"{" or b"sig" not in forged else "invalid")
            assert lat_at_cloud() != 12.971598
        now = int(time.time())
        old_grant = signed("grant", now - 60)
        record(old_grant, "granted")
        assert lat_at_cloud() == 12.971598
        record(signed("revoke", now), "revoked")
        assert lat_at_cloud() != 12.971598
        record(old_grant, "stale")  # replayed: the revocation stays in force
        assert lat_at_cloud() != 12.971598
        assert gw.metric("gateway_consent_entries") == 0
        log = gw.log_text()
        assert "consent_ignored" in log and "dev-1" not in log
        assert gw.stop() == 0
    finally:
        pub.close()
        sink.close()
        gw.close()


# -- watermarks across restarts ----------------------------------------------------------------


def test_a_replayed_grant_stays_stale_after_a_restart(tmp_path) -> None:
    from gateway.keys import Keyring
    from gateway.service.consent_store import WatermarkStore

    ring = Keyring("k1", {"k1": b"s" * 32})
    path = tmp_path / "spool.db.consent.db"
    store = WatermarkStore(path, ring, 100)
    c = Consents(T, [ISSUER.public_key()], store=store)
    assert c.update(*rec(at=NOW - 100), NOW) == "granted"
    assert c.update(*rec(granted=False, at=NOW - 50), NOW) == "revoked"
    store.close()
    assert b"dev-1" not in path.read_bytes()  # keyed hashes only
    again = Consents(T, [ISSUER.public_key()], store=WatermarkStore(path, ring, 100))  # a restart
    assert again.update(*rec(at=NOW - 100), NOW) == "stale"  # the retained record was replaced by the old grant
    assert again.update(*rec(granted=False, at=NOW - 50), NOW) == "revoked"  # the record in force, read again
    assert again.update(*rec(at=NOW), NOW) == "granted" and again.table
    rotated = WatermarkStore(path, Keyring("k2", {"k1": b"s" * 32, "k2": b"t" * 32}), 100)
    assert rotated.get("dev-1", "precise_location") is None  # a key rotation forgets (logged)


def test_watermarks_are_bounded(tmp_path) -> None:
    from gateway.keys import Keyring
    from gateway.service.consent_store import WatermarkStore

    store = WatermarkStore(tmp_path / "w.db", Keyring("k1", {"k1": b"s" * 32}), 10)
    for i in range(25):
        store.set(f"d{i}", "p", NOW + i)
    store.flush()
    assert store.get("d24", "p") == NOW + 24 and store.get("d0", "p") is None
    import sqlite3

    assert sqlite3.connect(tmp_path / "w.db").execute("SELECT count(*) FROM mark").fetchone()[0] == 10


def test_a_replayed_grant_does_not_come_back_with_a_restart(tmp_path, broker_pair) -> None:
    """The retained revocation replaced by an older signed grant, then the gateway restarts."""
    gw, sink, pub, signed, record = _consent_site(tmp_path, broker_pair)

    try:
        gw.start()
        now = int(time.time())
        old_grant = signed("grant", now - 60)
        record(old_grant, "granted")
        record(signed("revoke", now), "revoked")
        record(old_grant, "stale")  # now the retained record
        wait_until(lambda: (tmp_path / "gw" / "spool.db.consent.db").exists(), 10, "the watermark store")
        assert gw.stop() == 0
        gw.start()
        wait_until(lambda: gw.metric("gateway_consent_updates_total", result="stale") == 1, 20, "re-read at start")
        assert gw.metric("gateway_consent_entries") == 0
        pub.publish_all([("site/dev-1/telemetry", msgspec.json.encode(MSG))])
        assert round(json.loads(sink.wait_for(1, 20)[0].payload)["lat"], 6) != 12.971598
        assert gw.stop() == 0
    finally:
        pub.close()
        sink.close()
        gw.close()


@pytest.mark.parametrize("template", ["consent/{device}/{purpose}", "a/b/{device}/{purpose}", "{device}/{purpose}",
                                      "site/{device}/x/{purpose}/#", "c/{device}/{purpose}/#"])
def test_the_quick_topic_test_answers_as_the_filter_does(template: str) -> None:
    """``matches`` runs for every message and first compares the filter's literal start."""
    import itertools

    from gateway.policy.topics import TopicFilter

    consents, plain = Consents(template), TopicFilter(template)
    words = ["consent", "a", "b", "x", "c", "site", "$SYS", "", "consentx", "dev"]
    for n in range(1, 5):
        for levels in itertools.product(words, repeat=n):
            topic = "/".join(levels)
            assert consents.matches(topic) == (plain.match(topic.split("/")) is not None), topic

"""The engine end to end: routing, fail-closed decoding, rejections, consent, the leak guard,
and the core guarantee (nothing a policy transforms or drops reaches the output) as a
property test.

Expected pseudonyms are recomputed with an independent HKDF/HMAC (standard library);
ciphertexts are checked by decrypting them; everything else is worked out by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import json
import math
import re
import string

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import hkdf_sha256

from gateway.keys import Keyring
from gateway.ops.identity import reveal
from gateway.pipeline import Engine, Forward, Reject
from gateway.policy.load import loads

NOW = 1_700_000_000  # 2023-11-14T22:13:20Z
DAY = 86400
TEST_SECRET = b"gateway-inline-test-key-public!!"
M_PER_DEG = 111_320.0


# -- helpers ------------------------------------------------------------------------------




def pseudonym(value, domain="default", rotate="never", epoch="0", length=16, kid="test", pack="t"):
    """Independent HKDF + HMAC: keys per pack (``pack:<name>``) unless a link domain is given (``link:<name>``)."""
    scope = pack if pack.startswith("link:") else f"pack:{pack}"
    key = hkdf_sha256(TEST_SECRET, f"telemetry-gateway/v1|pseudonymise|{scope}|{domain}|{rotate}|{epoch}".encode())
    mac = hmac.new(key, str(value).encode(), hashlib.sha256).digest()
    return f"{kid}." + base64.b32encode(mac).decode().lower()[:length]


def haversine_m(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(a)))


def policy(fields: str = "", meta: str = "", route: str = "", name: str = "t") -> str:
    route = route or 'topics = ["dev/{id}/up"]\nupstream = "cloud/up"'
    return f'[policy]\nname = "{name}"\nversion = "1"\n{meta}\n\n[route]\n{route}\n\n{fields}\n'


def engine(*tomls: str, now: float = NOW) -> Engine:
    sources = [loads(t.encode(), f"{i}.toml") for i, t in enumerate(tomls)]
    extra = {}
    if "unknown_sample" in inspect.signature(Engine).parameters:
        extra["unknown_sample"] = 1  # count undeclared fields on every message
    return Engine(sources, Keyring.test(), now=now, **extra)


def run(eng: Engine, payload, topic: str = "dev/d1/up", **kw):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return eng.process(topic, data, **kw)


def forwarded(result) -> dict:
    assert isinstance(result, Forward), result
    return json.loads(result.payload)


FULL = policy(
    meta='device = "{id}"',
    route=(
        'topics = ["dev/{id}/up"]\nupstream = "cloud/{id}/up"\n'
        '[route.capture.id]\nop = "pseudonymise"\ndomain = "device"'
    ),
    fields="""
[[field]]
path = "ip"
op = "truncate_ip"

[[field]]
path = "note"
op = "keep"
type = "string"

[[field]]
path = "amount"
op = "keep"
type = "number"

[[field]]
path = "payment.upi_ref"
op = "encrypt"

[[field]]
path = "payment.status"
op = "keep"

[[field]]
path = "cells[].cell_id"
op = "pseudonymise"
domain = "cell"

[[field]]
path = "cells[].rssi"
op = "keep"
type = "integer"

[[field]]
path = "tags[]"
op = "mask"

[[field]]
op = "coarsen_location"
lat = "lat"
lon = "lon"
grid_m = 1000
consent = "precise_location"
consent_decimals = 5

[[field]]
path = "password"
op = "drop"
why = "never leaves the site"
""",
)


# -- fail closed, nested paths and arrays --------------------------------------------------


def test_fail_closed_transforms_every_declared_path_and_removes_the_rest():
    eng = engine(FULL)
    msg = {
        "ip": "203.0.113.77",
        "note": "door opened",
        "amount": 250.5,
        "payment": {"upi_ref": "UPI/4123", "status": "ok", "payer": "x"},
        "cells": [{"cell_id": "404-45-1234", "rssi": -71, "extra": 1}, {"cell_id": 99, "rssi": -80}],
        "tags": ["garage-storage", "abc"],
        "lat": 12.971599,
        "lon": 77.594566,
        "password": "hunter2",
        "imei": "490154203237518",
    }
    res = run(eng, msg)
    out = forwarded(res)
    assert res.topic == f"cloud/{pseudonym('d1', domain='device')}/up"
    assert set(out) == {"ip", "note", "amount", "payment", "cells", "tags", "lat", "lon"}
    assert out["ip"] == "203.0.113.0"
    assert out["note"] == "door opened" and out["amount"] == 250.5
    assert set(out["payment"]) == {"upi_ref", "status"}
    assert out["payment"]["status"] == "ok"
    assert reveal(Keyring.test(), out["payment"]["upi_ref"]) == "UPI/4123"
    assert out["cells"] == [
        {"cell_id": pseudonym("404-45-1234", domain="cell"), "rssi": -71},
        {"cell_id": pseudonym("99", domain="cell"), "rssi": -80},
    ]
    assert out["tags"] == ["**********rage", "***"]
    assert (out["lat"], out["lon"]) != (12.971599, 77.594566)
    assert haversine_m(12.971599, 77.594566, out["lat"], out["lon"]) <= 750
    assert b"hunter2" not in res.payload and b"490154203237518" not in res.payload
    # three undeclared fields: imei, payment.payer, cells[0].extra
    assert res.unknown == 3
    assert res.plan.stats[("", "unknown_field")] == 3


def test_undeclared_fields_are_counted_across_messages():
    eng = engine(FULL)
    run(eng, {"note": "a", "x": 1, "y": {"z": 2}})
    run(eng, {"note": "a"})
    run(eng, {"note": "a", "payment": {"q": 1}})
    assert eng.plans[0].stats[("", "unknown_field")] == 3


def test_absent_and_null_declared_fields_stay_absent_or_null():
    out = forwarded(run(engine(FULL), {"note": None, "payment": {}}))
    assert out.get("note") is None
    assert "ip" not in out and "lat" not in out and "lon" not in out
    assert out["payment"] == {}


def test_lone_coordinate_is_removed():
    out = forwarded(run(engine(FULL), {"lat": 12.971599, "note": "x"}))
    assert "lat" not in out and "lon" not in out


def test_default_keep_keeps_undeclared_fields_but_still_transforms_declared_ones():
    eng = engine(
        policy(
            meta='default = "keep"',
            fields='[[field]]\npath = "ip"\nop = "truncate_ip"\n[[field]]\npath = "token"\nop = "drop"',
        )
    )
    res = run(eng, {"ip": "203.0.113.77", "token": "abc", "state": "locked", "battery": {"pct": 87}})
    assert forwarded(res) == {"ip": "203.0.113.0", "state": "locked", "battery": {"pct": 87}}


@pytest.mark.parametrize(
    "msg, kind",
    [
        ({"contact": "alice@example.com"}, "email"),
        ({"alice@example.com": 1}, "email"),  # an undeclared key is scanned too
        ({"debug": {"log": ["ok", "card 4111 1111 1111 1111"]}}, "card"),
        ({"ref": 412345678901}, "utr"),
        ({"peer": "::ffff:203.0.113.7"}, "ip"),
    ],
)
def test_default_keep_guard_blocks_identifiers_in_undeclared_fields(msg, kind):
    eng = engine(policy(meta='default = "keep"', fields='[[field]]\npath = "ip"\nop = "truncate_ip"'))
    res = run(eng, msg)
    assert isinstance(res, Reject)
    assert (res.reason, res.rule, res.detail) == ("leak", "(default keep)", kind)


# -- drop_when -----------------------------------------------------------------------------

DROPS = policy(
    fields="""
[[field]]
path = "event"
op = "keep"

[[field]]
path = "payment.status"
op = "keep"

[[drop_when]]
path = "debug"
present = true
reason = "debug_message"

[[drop_when]]
path = "event"
equals = "heartbeat"
reason = "heartbeat"

[[drop_when]]
path = "payment.status"
one_of = ["declined", "cancelled"]
reason = "not_a_payment"

[[drop_when]]
path = "flag"
equals = 1
reason = "flagged"
""",
)


@pytest.mark.parametrize(
    "msg, reason, rule",
    [
        ({"debug": {"x": 1}, "event": "tick"}, "debug_message", "debug"),
        ({"debug": 0}, "debug_message", "debug"),
        ({"debug": False}, "debug_message", "debug"),
        ({"event": "heartbeat"}, "heartbeat", "event"),
        # text compares folded: case, spaces, invisible characters and Unicode width do not matter
        ({"event": "Heartbeat"}, "heartbeat", "event"),
        ({"event": " HEART BEAT\t"}, "heartbeat", "event"),
        ({"event": "\uff48\uff45\uff41\uff52\uff54beat"}, "heartbeat", "event"),  # fullwidth
        ({"event": "heart\u200bbeat"}, "heartbeat", "event"),
        ({"event": "HEARTBEAT\u00a0"}, "heartbeat", "event"),
        ({"payment": {"status": "DECLINED"}}, "not_a_payment", "payment.status"),
        ({"payment": {"status": "declined"}}, "not_a_payment", "payment.status"),
        ({"payment": {"status": "cancelled"}}, "not_a_payment", "payment.status"),
        ({"flag": 1}, "flagged", "flag"),
    ],
)
def test_drop_when_rejects_with_the_policy_reason(msg, reason, rule):
    eng = engine(DROPS)
    res = run(eng, msg)
    assert isinstance(res, Reject)
    assert (res.reason, res.rule, res.detail) == (reason, rule, "")
    assert res.plan.stats[(rule, reason)] == 1


@pytest.mark.parametrize(
    "msg, out",
    [
        ({"debug": None, "event": "tick"}, {"event": "tick"}),  # null is not present
        ({"event": "Heart-beat"}, {"event": "Heart-beat"}),
        ({"payment": {"status": "ok"}}, {"payment": {"status": "ok"}}),
        ({"flag": True}, {}),  # true == 1 in Python, but not the same JSON value
        ({"flag": 1.0}, {}),
        ({"flag": "1"}, {}),
        ({"flag": 2}, {}),
    ],
)
def test_drop_when_not_matching_forwards_and_removes_read_only_fields(msg, out):
    assert forwarded(run(engine(DROPS), msg)) == out


def test_drop_when_present_false_drops_a_message_without_the_field():
    """``present = false``: drop the message when the field is not present."""
    eng = engine(
        policy(
            fields=(
                '[[field]]\npath = "a"\nop = "keep"\n'
                '[[drop_when]]\npath = "consent"\npresent = false\nreason = "no_consent"'
            )
        )
    )
    assert forwarded(run(eng, {"a": 1, "consent": "yes"})) == {"a": 1}
    res = run(eng, {"a": 1, "consent": None})
    assert isinstance(res, Reject) and res.reason == "no_consent"
    res = run(eng, {"a": 1})
    assert isinstance(res, Reject) and res.reason == "no_consent"


# -- rejections ----------------------------------------------------------------------------


def test_max_bytes():
    eng = engine(policy(meta="max_bytes = 100", fields='[[field]]\npath = "note"\nop = "keep"'))
    exact = b'{"note":"' + b"a" * 89 + b'"}'
    assert len(exact) == 100
    assert isinstance(eng.process("dev/d1/up", exact), Forward)
    res = eng.process("dev/d1/up", exact[:-2] + b'a"}')
    assert isinstance(res, Reject) and res.reason == "too_large"


def nested(levels: int, open_: str = '{"x":', close: str = "}", leaf: str = "1") -> str:
    return open_ * levels + leaf + close * levels


DEEP = '[[field]]\npath = "blob"\nop = "keep"\ntype = "any"\n[[field]]\npath = "note"\nop = "keep"'


@pytest.mark.parametrize("guard", ["true", "false"])
@pytest.mark.parametrize("mode", ["drop", "keep"])
def test_max_depth_inside_a_kept_any_field(guard, mode):
    eng = engine(policy(meta=f'max_depth = 4\nleak_guard = {guard}\ndefault = "{mode}"', fields=DEEP))
    # the root object (1), then blob's value and two objects inside it (2, 3, 4): max_depth levels
    ok = ('{"blob":' + nested(3) + "}").encode()
    assert isinstance(eng.process("dev/d1/up", ok), Forward)
    ok_list = ('{"blob":' + nested(3, "[", "]") + "}").encode()
    assert isinstance(eng.process("dev/d1/up", ok_list), Forward)
    over = ('{"blob":' + nested(4) + "}").encode()  # 5 levels
    res = eng.process("dev/d1/up", over)
    assert isinstance(res, Reject) and res.reason == "too_deep"
    over_list = ('{"blob":' + nested(4, "[", "]") + "}").encode()
    res = eng.process("dev/d1/up", over_list)
    assert isinstance(res, Reject) and res.reason == "too_deep"


@pytest.mark.parametrize("mode", ["drop", "keep"])
@pytest.mark.parametrize("key", ["blob", "undeclared"])
@pytest.mark.parametrize("brackets", [('{"a":', "}"), ("[", "]")])
def test_ten_thousand_levels(mode, key, brackets):
    eng = engine(policy(meta=f'default = "{mode}"', fields=DEEP))
    payload = ('{"' + key + '":' + nested(10_000, *brackets) + ', "note": "n"}').encode()
    res = eng.process("dev/d1/up", payload)
    if mode == "drop" and key == "undeclared" and isinstance(res, Forward):
        assert json.loads(res.payload) == {"note": "n"}  # removed without being materialised
    else:
        assert isinstance(res, Reject) and res.reason == "too_deep", res


def test_top_level_deep_array_is_rejected():
    res = engine(policy(fields=DEEP)).process("dev/d1/up", nested(10_000, "[", "]").encode())
    assert isinstance(res, Reject) and res.reason in {"not_object", "too_deep"}


@pytest.mark.parametrize(
    "payload", [b'{"note": ', b"\xff\xfe", b"", b'{"note": "a"} x', b"{'note': 'a'}", b'{"note": "a",}', b"nul"]
)
@pytest.mark.parametrize("mode", ["drop", "keep"])
def test_not_json(payload, mode):
    res = engine(policy(meta=f'default = "{mode}"', fields=DEEP)).process("dev/d1/up", payload)
    assert isinstance(res, Reject) and res.reason == "not_json"


@pytest.mark.parametrize("payload", [b"[1, 2]", b"[]", b'"x"', b"5", b"null", b"true"])
@pytest.mark.parametrize("mode", ["drop", "keep"])
def test_not_object(payload, mode):
    res = engine(policy(meta=f'default = "{mode}"', fields=DEEP)).process("dev/d1/up", payload)
    assert isinstance(res, Reject) and res.reason == "not_object"


@pytest.mark.parametrize(
    "msg, detail",
    [
        ({"ip": 5}, "ip"),
        ({"ip": ["1.2.3.4"]}, "ip"),
        ({"note": 5}, "note"),
        ({"amount": "5"}, "amount"),
        ({"amount": True}, "amount"),
        ({"payment": {"upi_ref": True}}, "payment.upi_ref"),
        ({"payment": {"upi_ref": 1.5}}, "payment.upi_ref"),
        ({"cells": [{"cell_id": "a"}, {"cell_id": 1.5}]}, "cells[].cell_id"),
        ({"cells": [{"rssi": "-70"}]}, "cells[].rssi"),
        ({"tags": ["a", 3.5]}, "tags[]"),
        ({"lat": "north", "lon": 1.0}, "lat"),
    ],
)
@pytest.mark.parametrize("mode", ["drop", "keep"])
def test_wrong_type_names_the_declared_path(msg, detail, mode):
    toml = FULL.replace('[policy]\nname = "t"', f'[policy]\nname = "t"\ndefault = "{mode}"')
    res = run(engine(toml), msg)
    assert isinstance(res, Reject), res
    assert (res.reason, res.rule, res.detail) == ("wrong_type", "", detail)


@pytest.mark.parametrize("msg", [{"payment": "x"}, {"cells": {"cell_id": "a"}}, {"payment": [1]}])
def test_wrong_container_type_is_wrong_type(msg):
    res = run(engine(FULL), msg)
    assert isinstance(res, Reject) and res.reason == "wrong_type"


REQUIRED = policy(
    fields='[[field]]\npath = "ip"\nop = "truncate_ip"\nrequired = true\n[[field]]\npath = "note"\nop = "keep"'
)


@pytest.mark.parametrize("mode", ["drop", "keep"])
def test_required_field_missing(mode):
    eng = engine(REQUIRED.replace('version = "1"', f'version = "1"\ndefault = "{mode}"'))
    res = run(eng, {"note": "x"})
    assert isinstance(res, Reject) and res.reason == "missing_field"
    assert forwarded(run(eng, {"ip": "1.2.3.4"})) == {"ip": "1.2.3.0"}


@pytest.mark.parametrize("mode", ["drop", "keep"])
def test_required_field_null_is_missing(mode):
    """Rule.required: "reject the message (missing_field) when absent or null"."""
    eng = engine(REQUIRED.replace('version = "1"', f'version = "1"\ndefault = "{mode}"'))
    res = run(eng, {"ip": None})
    assert isinstance(res, Reject) and res.reason == "missing_field", res


@pytest.mark.parametrize("topic", ["other/d1/up", "dev/d1", "dev/d1/up/more", "dev/d1/down", "/dev/d1/up", ""])
def test_no_route(topic):
    res = engine(FULL).process(topic, b"{}")
    assert res == Reject("no_route")


# -- topics --------------------------------------------------------------------------------


def test_topic_capture_is_pseudonymised_and_rotates_daily():
    eng = engine(
        policy(
            route='topics = ["dev/{id}/up", "legacy/{id}"]\nupstream = "cloud/{id}/telemetry"\n'
            '[route.capture.id]\nop = "pseudonymise"\ndomain = "device"\nrotate = "daily"',
            fields='[[field]]\npath = "a"\nop = "keep"',
        )
    )
    day1 = f"cloud/{pseudonym('866123', domain='device', rotate='daily', epoch='2023-11-14')}/telemetry"
    assert run(eng, {"a": 1}, topic="dev/866123/up").topic == day1
    assert run(eng, {"a": 1}, topic="legacy/866123").topic == day1
    day2 = f"cloud/{pseudonym('866123', domain='device', rotate='daily', epoch='2023-11-15')}/telemetry"
    assert run(eng, {"a": 1}, topic="dev/866123/up", now=NOW + DAY).topic == day2
    assert "866123" not in day1 + day2


def test_topic_capture_with_other_operations():
    eng = engine(
        policy(
            route='topics = ["site/{site}/dev/{id}"]\nupstream = "up/{site}/{id}"\n'
            '[route.capture.site]\nop = "generalise"\nmap = { blr = "south", del = "north" }\n'
            '[route.capture.id]\nop = "mask"\nkeep_last = 2',
            fields='[[field]]\npath = "a"\nop = "keep"',
        )
    )
    assert run(eng, {"a": 1}, topic="site/blr/dev/abcdef").topic == "up/south/****ef"
    assert run(eng, {"a": 1}, topic="site/xyz/dev/ab").topic == "up/other/**"


def test_empty_captured_level_is_bad_topic():
    eng = engine(
        policy(
            route='topics = ["dev/{id}/up"]\nupstream = "c/{id}"\n[route.capture.id]\nop = "keep"',
            fields='[[field]]\npath = "a"\nop = "keep"',
        )
    )
    assert run(eng, {"a": 1}, topic="dev/x/up").topic == "c/x"
    res = run(eng, {"a": 1}, topic="dev//up")
    assert isinstance(res, Reject) and res.reason == "bad_topic"


def test_first_matching_policy_wins():
    a = policy(name="a", route='topics = ["dev/+/up"]\nupstream = "A"', fields='[[field]]\npath = "x"\nop = "keep"')
    b = policy(name="b", route='topics = ["dev/#"]\nupstream = "B"', fields='[[field]]\npath = "x"\nop = "keep"')
    eng = engine(a, b)
    assert run(eng, {"x": 1}, topic="dev/1/up").topic == "A"
    assert run(eng, {"x": 1}, topic="dev/1/other").topic == "B"
    assert run(eng, {"x": 1}, topic="dev/1/up/more").topic == "B"


def test_msgpack_output():
    eng = engine(policy(meta='output = "msgpack"', fields='[[field]]\npath = "ip"\nop = "truncate_ip"'))
    res = run(eng, {"ip": "10.1.2.3", "x": 1})
    assert msgspec.msgpack.decode(res.payload) == {"ip": "10.1.2.0"}


# -- consent -------------------------------------------------------------------------------

POINT = {"lat": 12.971599, "lon": 77.594566}


def test_consent_by_topic_device():
    eng = engine(FULL)
    precise = forwarded(run(eng, POINT, consents={"d1": frozenset({"precise_location"})}))
    assert (precise["lat"], precise["lon"]) == (12.9716, 77.59457)  # 5 decimals
    for consents in [
        {},
        {"d2": frozenset({"precise_location"})},
        {"d1": frozenset({"marketing"})},
        {"d1": frozenset()},
    ]:
        coarse = forwarded(run(eng, POINT, consents=consents))
        assert (coarse["lat"], coarse["lon"]) != (12.9716, 77.59457)
        assert haversine_m(12.971599, 77.594566, coarse["lat"], coarse["lon"]) <= 750


def test_consent_by_payload_device_field():
    eng = engine(
        policy(
            meta='device = "device_id"',
            fields='[[field]]\npath = "device_id"\nop = "pseudonymise"\n'
            '[[field]]\nop = "coarsen_location"\nlat = "lat"\nlon = "lon"\ndecimals = 2\nconsent = "loc"',
        )
    )
    msg = {"device_id": "866123", **POINT}
    out = forwarded(run(eng, msg, consents={"866123": frozenset({"loc"})}))
    assert out == {"device_id": pseudonym("866123"), **POINT}  # exact point: no consent_decimals
    out = forwarded(run(eng, msg, consents={pseudonym("866123"): frozenset({"loc"})}))
    assert out == {"device_id": pseudonym("866123"), "lat": 12.97, "lon": 77.59}
    out = forwarded(run(eng, {"device_id": 866123, **POINT}, consents={"866123": frozenset({"loc"})}))
    assert (out["lat"], out["lon"]) == (12.971599, 77.594566)


def test_privacy_zone_in_the_engine_removes_the_point_even_with_consent():
    eng = engine(
        policy(
            meta='device = "{id}"',
            fields='[[field]]\nop = "coarsen_location"\nlat = "lat"\nlon = "lon"\ndecimals = 2\nconsent = "loc"\n'
            "zones = [{ lat = 12.9716, lon = 77.5946, radius_m = 300 }]\n"
            '[[field]]\npath = "a"\nop = "keep"',
        )
    )
    out = forwarded(run(eng, {"a": 1, **POINT}, consents={"d1": frozenset({"loc"})}))
    assert out == {"a": 1}
    assert eng.plans[0].stats[("lat,lon", "in_privacy_zone")] == 1


# -- leak guard ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg, rule, kind",
    [
        ({"note": "card 4111 1111 1111 1111"}, "note", "card"),
        ({"note": "paid 2026-11-23 4111111111111111"}, "note", "card"),
        ({"note": "mail alice@example.com"}, "note", "email"),
        ({"note": "Bearer abcdefgh12345678"}, "note", "secret"),
        ({"amount": 412345678901}, "amount", "utr"),
        ({"amount": 490154203237518}, "amount", "imei"),
        ({"payment": {"status": "call +91 98765 43210"}}, "payment.status", "phone"),
        ({"cells": [{"rssi": 1}, {"rssi": 4111111111111111}]}, "cells[].rssi", "card"),
    ],
)
def test_leak_guard_blocks_identifiers_in_kept_fields(msg, rule, kind):
    eng = engine(FULL)
    res = run(eng, msg)
    assert isinstance(res, Reject)
    assert (res.reason, res.rule, res.detail) == ("leak", rule, kind)
    assert res.plan.stats[(rule, "leak")] == 1
    for value in re.findall(r"[\w@.+]{6,}", json.dumps(msg)):
        if value not in {"status", "payment", "amount", "cells"}:
            assert value not in repr(res)  # a rejection names the rule and detector, never the value


@pytest.mark.parametrize(
    "msg",
    [
        {"note": "locked"},
        {"amount": 99_999_999_999},
        {"amount": 1_700_000_000_123},
        {"note": "v2.3 at 2026-11-23T10:17:00Z"},
    ],
)
def test_leak_guard_lets_ordinary_values_through(msg):
    assert forwarded(run(engine(FULL), msg)) == msg


def test_leak_guard_off_lets_identifiers_through():
    eng = engine(FULL.replace('device = "{id}"', 'device = "{id}"\nleak_guard = false'))
    msg = {"note": "card 4111 1111 1111 1111", "amount": 412345678901}
    assert forwarded(run(eng, msg)) == msg


def test_guard_allow_and_coordinate_precision():
    eng = engine(
        policy(
            fields='[[field]]\npath = "fw"\nop = "keep"\nguard_allow = ["ip"]\n'
            '[[field]]\npath = "extra"\nop = "keep"\ntype = "any"',
        )
    )
    assert forwarded(run(eng, {"fw": "1.2.3.4"})) == {"fw": "1.2.3.4"}
    res = run(eng, {"fw": "1.2.3.4 alice@example.com"})
    assert isinstance(res, Reject) and (res.rule, res.detail) == ("fw", "email")
    # no location rule: kept coordinates may have at most 3 decimals
    assert forwarded(run(eng, {"extra": {"lat": 12.972, "speed": 12.34567}})) == {
        "extra": {"lat": 12.972, "speed": 12.34567}
    }
    res = run(eng, {"extra": {"lat": 12.9716}})
    assert isinstance(res, Reject) and (res.reason, res.rule, res.detail) == ("leak", "extra", "coordinate")
    res = run(eng, {"extra": [{"ok": 1}, {"alice@example.com": 1}]})
    assert isinstance(res, Reject) and res.detail == "email"


# -- the core guarantee -------------------------------------------------------------------

PROP_FIELDS = """
[[field]]
path = "ok"
op = "keep"
type = "string"

[[field]]
path = "p"
op = "pseudonymise"

[[field]]
path = "e"
op = "encrypt"

[[field]]
path = "ip"
op = "truncate_ip"

[[field]]
op = "coarsen_location"
lat = "lat"
lon = "lon"
grid_m = 1000

[[field]]
path = "m"
op = "mask"
keep_last = 4

[[field]]
path = "s"
op = "scrub"

[[field]]
path = "d"
op = "drop"

[[field]]
path = "g"
op = "generalise"
map = { android = "Android" }

[[field]]
path = "r"
op = "replace"
value = "x"

[[field]]
path = "ts"
op = "bucket_time"
to = "hour"

[[field]]
path = "n"
op = "round"
decimals = 1

[[field]]
path = "payment.upi_ref"
op = "encrypt"

[[field]]
path = "payment.status"
op = "keep"
type = "string"

[[field]]
path = "cells[].cell_id"
op = "pseudonymise"

[[field]]
path = "cells[].rssi"
op = "keep"
type = "integer"

[[field]]
path = "tags[]"
op = "mask"
"""

PROP_ROUTE = (
    'topics = ["dev/{id}/up"]\nupstream = "cloud/{id}/up"\n[route.capture.id]\nop = "pseudonymise"\ndomain = "device"'
)
PROP_DROP = engine(policy(PROP_FIELDS, route=PROP_ROUTE, name="prop_drop"))
PROP_KEEP = engine(policy(PROP_FIELDS, meta='default = "keep"', route=PROP_ROUTE, name="prop_keep"))

canary = st.text(alphabet=string.ascii_letters, min_size=8, max_size=16).map(lambda s: "CANARY" + s)
SCRUB_TEMPLATES = [
    "{}@example.com",
    "reach me at {}@okaxis today",
    "support@{}",
    "x@{}.com",
    "password={}",
    "Authorization: Bearer {}.e30",  # a JWT-like token (real tokens have digits or mixed case)
    '{{"token": "{}"}}',
    "crash: pin: {} at line 3",
]
scrubbed = st.tuples(st.sampled_from(SCRUB_TEMPLATES), canary).map(lambda t: t[0].format(t[1]))
dropped = st.one_of(canary, st.lists(canary, max_size=3), st.dictionaries(canary, canary, max_size=3))
location = st.one_of(
    st.tuples(st.floats(-90, 90), st.floats(-180, 180)),
    st.tuples(canary, st.floats(-180, 180)),  # wrong type: a rejection must not echo it
)


@st.composite
def messages(draw, undeclared: bool):
    msg = draw(
        st.fixed_dictionaries(
            {"ok": st.just("fine")},
            optional={
                "p": canary,
                "e": canary,
                "ip": canary,
                "m": canary,
                "s": scrubbed,
                "d": dropped,
                "g": canary,
                "r": canary,
                "ts": canary,
                "n": st.one_of(st.floats(-1e6, 1e6), canary),
                "payment": st.fixed_dictionaries({"upi_ref": canary, "status": st.just("paid")}),
                "cells": st.lists(st.fixed_dictionaries({"cell_id": canary, "rssi": st.integers(-120, 0)}), max_size=3),
                "tags": st.lists(canary, max_size=3),
            },
        )
    )
    if draw(st.booleans()):
        msg["lat"], msg["lon"] = draw(location)
    if undeclared:
        msg.update(
            draw(st.dictionaries(canary, st.one_of(canary, st.dictionaries(canary, canary, max_size=2)), max_size=3))
        )
        if "payment" in msg and draw(st.booleans()):
            msg["payment"][draw(canary)] = draw(canary)
        for cell in msg.get("cells", []):
            if draw(st.booleans()):
                cell[draw(canary)] = draw(canary)
    return msg


CANARY_RE = re.compile(r"CANARY[A-Za-z]*")


# The declared key names are in the output because the policy names them: a canary piece
# that is part of one ("CANARYAaymentA" has "ayment", as "payment" does) proves nothing.
DECLARED = {key for path in PROP_DROP.plans[0].paths for key in re.split(r"[.\[\]]+", path) if key}


def assert_no_canary(msg: dict, device: str, res) -> None:
    used = set(CANARY_RE.findall(json.dumps(msg))) | {device}
    if isinstance(res, Forward):
        visible = [res.payload.decode("utf-8"), res.topic]
    else:
        assert isinstance(res, Reject), res
        visible = [res.reason, res.rule, res.detail, repr(res)]
    for c in used:
        for i in range(len(c) - 5):
            piece = c[i : i + 6]
            if any(piece in key for key in DECLARED):
                continue
            for text in visible:
                assert piece not in text, (piece, c, text)


def expects_forward(msg: dict) -> bool:
    return not (isinstance(msg.get("lat"), str) or isinstance(msg.get("n"), str))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=messages(undeclared=True), device=canary)
def test_nothing_transformed_or_undeclared_reaches_the_output_fail_closed(msg, device):
    res = PROP_DROP.process(f"dev/{device}/up", json.dumps(msg).encode())
    assert_no_canary(msg, device, res)
    if expects_forward(msg):
        assert isinstance(res, Forward), res
        out = json.loads(res.payload)
        assert out["ok"] == "fine"
        assert res.topic == f"cloud/{pseudonym(device, domain='device', pack='prop_drop')}/up"
    else:
        assert res.reason == "wrong_type" and res.detail in {"lat", "n"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=messages(undeclared=False), device=canary)
def test_nothing_transformed_reaches_the_output_default_keep(msg, device):
    msg["build"] = "v2.3"  # an ordinary undeclared field, kept
    res = PROP_KEEP.process(f"dev/{device}/up", json.dumps(msg).encode())
    assert_no_canary(msg, device, res)
    if expects_forward(msg):
        assert isinstance(res, Forward), res
        assert json.loads(res.payload)["build"] == "v2.3"
    else:
        assert res.reason == "wrong_type"


# -- the generated hot path: its shortcuts must not change a result -----------------------

KEPT_TYPES = policy(
    meta='device = "{id}"',
    fields="""
[[field]]
path = "n"
op = "keep"
type = "integer"

[[field]]
path = "ok_n"
op = "keep"
type = "integer"
guard_allow = ["utr", "imei", "card"]

[[field]]
path = "t"
op = "keep"
type = "string"

[[field]]
path = "speed"
op = "round"
step = 5

[[field]]
path = "id"
op = "pseudonymise"
rotate = "daily"

[[field]]
op = "coarsen_location"
lat = "lat"
lon = "lon"
grid_m = 1000
""",
)


@pytest.mark.parametrize(
    "msg, reason, rule, detail",
    [
        ({"n": 412345678901}, "leak", "n", "utr"),  # refused by the bounded decode, caught by the full guard
        ({"n": -412345678901}, "leak", "n", "utr"),
        ({"n": 490154203237518, "t": "ok"}, "leak", "n", "imei"),
        ({"n": "12"}, "wrong_type", "", "n"),  # the full decode names the path
        ({"n": 1.5}, "wrong_type", "", "n"),
        ({"t": "2026-11-23T10:03:44Z +91 98765 43210"}, "leak", "t", "phone"),
        ({"t": "alice@example.com"}, "leak", "t", "email"),
    ],
)
def test_generated_guard_rejections(msg, reason, rule, detail):
    res = run(engine(KEPT_TYPES), msg)
    assert isinstance(res, Reject), res
    assert (res.reason, res.rule, res.detail) == (reason, rule, detail)


@pytest.mark.parametrize(
    "msg",
    [
        {"n": 99_999_999_999, "t": "2026-11-23T10:03:44Z"},
        {"n": -99_999_999_999, "t": "2026-11-23 10:03:44.123+05:30"},
        {"n": 1_700_000_000_123, "t": "2026-11-23"},  # 13 digits: epoch milliseconds, not an identifier
        {"n": None, "t": None},
        {"ok_n": 412345678901, "t": ""},  # guard_allow: this field may hold a UTR
        {"t": "locked"},
        {"n": 10**400},  # refused by the bounded decode; 401 digits are no identifier
    ],
)
def test_generated_guard_passes(msg):
    assert forwarded(run(engine(KEPT_TYPES), msg)) == msg


def test_leak_verdicts_are_not_remembered_and_clean_ones_do_not_hide_a_leak():
    eng = engine(KEPT_TYPES)
    for _ in range(3):  # the same leaky value every time
        assert run(eng, {"t": "call +91 98765 43210"}).reason == "leak"
        assert forwarded(run(eng, {"t": "firmware v2.3-b7"})) == {"t": "firmware v2.3-b7"}
    assert eng.plans[0].stats[("t", "leak")] == 3


def test_guard_remembers_clean_words_and_values_not_timestamps_or_leaks():
    from gateway.policy.codegen import VERDICT_CACHE

    eng = engine(KEPT_TYPES)
    names = eng.runner(eng.plans[0]).__globals__
    ok = next(names[f"ok{i}"] for i in range(20) if names.get(f"k{i}") == "t")
    for _ in range(2):
        assert forwarded(run(eng, {"t": "locked"})) == {"t": "locked"}
        assert forwarded(run(eng, {"t": "CAB-1666"})) == {"t": "CAB-1666"}
        assert forwarded(run(eng, {"t": "2026-11-23T10:03:44Z"})) == {"t": "2026-11-23T10:03:44Z"}
        assert run(eng, {"t": "call +91 98765 43210"}).reason == "leak"
        assert run(eng, {"t": "\u0664\u0661\u0661\u0661 1111 1111 1111"}).reason == "leak"  # other scripts' digits
    assert "locked" in ok and "CAB-1666" in ok
    assert "2026-11-23T10:03:44Z" not in ok and "call +91 98765 43210" not in ok
    for i in range(VERDICT_CACHE + 10):  # more clean values than remembered: bounded, a leak still caught
        assert forwarded(run(eng, {"t": f"CAB-{i}"})) == {"t": f"CAB-{i}"}
    assert len(ok) == VERDICT_CACHE
    assert run(eng, {"t": "mail a.b@example.com"}).reason == "leak"


def test_payload_pseudonyms_rotate_through_process():
    eng = engine(KEPT_TYPES)
    day1 = pseudonym("dev-1", rotate="daily", epoch="2023-11-14")
    day2 = pseudonym("dev-1", rotate="daily", epoch="2023-11-15")
    assert forwarded(run(eng, {"id": "dev-1"}, now=NOW))["id"] == day1
    assert forwarded(run(eng, {"id": "dev-1"}, now=NOW + 60))["id"] == day1  # cached
    assert forwarded(run(eng, {"id": "dev-1"}, now=NOW + DAY))["id"] == day2
    assert forwarded(run(eng, {"id": "dev-1"}, now=NOW))["id"] == day1  # back in time: the old epoch
    eng.epochs.advance(NOW + DAY)  # advanced by someone else: still seen before the next message
    assert forwarded(run(eng, {"id": "dev-1"}))["id"] == day2


def test_huge_and_odd_numbers_do_not_crash_the_engine():
    eng = engine(KEPT_TYPES)
    assert forwarded(run(eng, b'{"speed": 1' + b"0" * 400 + b', "t": "x"}')) == {"t": "x"}
    assert eng.plans[0].stats[("speed", "invalid_number")] == 1
    assert forwarded(run(eng, {"speed": 2**31 + 3})) == {"speed": 2**31 + 2}  # past the inline int path
    assert forwarded(run(eng, {"speed": 62.5})) == {"speed": 60.0}  # half to even, a float stays a float
    assert forwarded(run(eng, {"speed": 67})) == {"speed": 65}


@pytest.mark.parametrize("payload", [b'{"t": "\xff"}', b'{"t": "\xed\xa0\x80"}', b'{"t": "ok", "vendor": "\xff\xfe"}'])
def test_bad_utf8_is_not_json_or_an_undeclared_field_never_a_crash(payload):
    res = run(engine(KEPT_TYPES), payload)  # unknown fields counted on every message here
    if b"vendor" in payload:
        assert forwarded(res) == {"t": "ok"}
    else:
        assert (res.reason, res.rule, res.detail) == ("not_json", "", "")


def test_action_counts_count_what_acted():
    eng = engine(KEPT_TYPES)
    for msg in [
        {"speed": 12, "lat": 1.0, "lon": 2.0},
        {"speed": None, "id": "a"},
        {"speed": 3.5, "id": 7, "lat": 1.0},
        {"n": 1},
    ]:
        assert isinstance(run(eng, msg), Forward)
    counts = eng.plans[0].action_counts()
    assert counts["round"] == 2 and counts["pseudonymise"] == 2
    assert counts["coarsen_location"] == 2  # a point, and a lone latitude (removed)
    assert counts["keep"] == 0


def test_consent_is_looked_up_only_by_plans_that_use_it():
    class Loud(dict):
        def get(self, *a):
            raise AssertionError("no rule of this policy depends on consent")

    assert forwarded(run(engine(KEPT_TYPES), {"t": "x"}, consents=Loud())) == {"t": "x"}

"""The hot path's shortcuts give the answers of the plain computation they replace.

Each cache or compiled form here is checked against an independent reference (a fresh
computation, a loop, the reference interpreter) over sequences that cross its boundaries:
time buckets rolling over and back, more texts than a cache holds, nested paths with null
objects in the middle.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec import UNSET

from gateway.keys import Keyring
from gateway.ops import BucketTime, Generalise, Scrub, detect
from gateway.ops.base import BoundedCache, BuildEnv, Epochs
from gateway.ops.text import CLEAN_CACHE, CLEAN_MAX_LEN
from gateway.pipeline import Engine, Forward, interpret
from gateway.policy.compile import Plan
from gateway.policy.load import loads


def build(cls: Any, **params: Any) -> Any:
    return msgspec.convert(params, cls).build(BuildEnv(Keyring.test(), Epochs(1_700_000_000)))


def iso_floor(epoch: int, width: int) -> str:
    """The reference: floor epoch seconds to ``width`` and print them in UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch - epoch % width))


# -- bucket_time: one strftime per bucket -------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1_600_000_000, 1_900_000_000), min_size=1, max_size=40), st.sampled_from([60, 3600, 86400]))
def test_bucket_time_is_right_across_bucket_rollover_and_back(epochs: list[int], width: int) -> None:
    """Values jump between buckets (forwards, backwards, repeated): each answer is its own bucket's."""
    to = {60: "minute", 3600: "hour", 86400: "day"}[width]
    fn = build(BucketTime, path="ts", to=to)
    near = [e + d for e in epochs for d in (0, 1, -1, width)]  # the same bucket, the edges, the next one
    for e in near:
        text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e))
        assert fn(text) == iso_floor(e, width)
        assert fn(e) == e - e % width  # numbers are unaffected by the text cache


def test_bucket_time_month_and_offsets_with_the_cache() -> None:
    fn = build(BucketTime, path="ts", to="month")
    assert fn("2026-01-31T23:59:59Z") == "2026-01-01T00:00:00Z"
    assert fn("2026-02-01T00:00:00Z") == "2026-02-01T00:00:00Z"
    assert fn("2026-02-01T01:00:00+02:00") == "2026-01-01T00:00:00Z"  # 2026-01-31T23:00Z
    assert fn("2026-02-14T10:00:00Z") == "2026-02-01T00:00:00Z"
    hour = build(BucketTime, path="ts", to="hour")
    assert hour("2026-01-15T11:30:04+05:30") == "2026-01-15T06:00:00Z"
    assert hour("2026-01-15T06:59:59Z") == "2026-01-15T06:00:00Z"
    assert hour("2026-01-15T07:00:00Z") == "2026-01-15T07:00:00Z"
    assert hour("not a time") is UNSET  # an invalid value does not disturb the cache
    assert hour("2026-01-15T07:10:00Z") == "2026-01-15T07:00:00Z"
    assert calendar.timegm((2026, 1, 15, 7, 0, 0)) % 3600 == 0


def test_bucket_time_minute_memory_keeps_invalid_seconds_and_sub_minute_buckets_apart() -> None:
    from gateway.ops.numbers import MINUTE_CACHE

    hour = build(BucketTime, path="ts", to="hour")
    assert hour("2026-01-15T07:10:00Z") == "2026-01-15T07:00:00Z"  # the minute now remembered
    assert hour("2026-01-15T07:10:59Z") == "2026-01-15T07:00:00Z"
    for bad in ("2026-01-15T07:10:60Z", "2026-01-15T07:10:6xZ", "2026-01-15T07:10:x5Z", "2026-01-15T07:10::5Z"):
        assert hour(bad) is UNSET, bad  # invalid seconds are still refused
    assert hour("2026-01-15T07:10:30+01:00") == "2026-01-15T06:00:00Z"  # an offset is no UTC minute
    half = build(BucketTime, path="ts", seconds=30)  # buckets inside a minute: nothing remembered by minute
    assert half("2026-01-15T07:10:29Z") == "2026-01-15T07:10:00Z"
    assert half("2026-01-15T07:10:31Z") == "2026-01-15T07:10:30Z"
    minute = build(BucketTime, path="ts", to="minute")
    for i in range(MINUTE_CACHE + 20):  # more minutes than remembered: each still its own bucket
        e = 1_767_000_000 + 60 * i
        for d in (0, 59):
            text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e + d))
            assert minute(text) == iso_floor(e + d, 60)
    cache = next(c.cell_contents for c in minute.call.__closure__ if isinstance(c.cell_contents, BoundedCache))
    assert len(cache) == MINUTE_CACHE


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1_600_000_000, 1_900_000_000), min_size=1, max_size=20),
    st.sampled_from([60, 120, 900, 3600, 7200, 86400]),
)
def test_bucket_time_by_seconds_with_the_minute_memory(epochs: list[int], width: int) -> None:
    fn = build(BucketTime, path="ts", seconds=width)
    for e in [x + d for x in epochs for d in (0, 1, 59, -1, 60)]:
        assert fn(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e))) == iso_floor(e, width)


def local_text(epoch: int, offset_min: int) -> str:
    """``epoch`` written in local time with its UTC offset: ``2026-01-15T11:30:04+05:30``."""
    sign = "+" if offset_min >= 0 else "-"
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch + 60 * offset_min))
    return f"{local}{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1_600_000_000, 1_900_000_000), min_size=1, max_size=12),
    st.sampled_from([60, 900, 3600, 7200, 86400]),
    st.lists(st.sampled_from([330, -180, 0, 840, -720, 345, -570]), min_size=1, max_size=3),
)
def test_bucket_time_offsets_with_the_minute_memory(epochs: list[int], width: int, offsets: list[int]) -> None:
    """Texts with a UTC offset are remembered by their local minute and offset: never another's bucket."""
    fn = build(BucketTime, path="ts", seconds=width)
    for e in [x + d for x in epochs for d in (0, 1, 59, -1, 60)]:
        for off in offsets:
            assert fn(local_text(e, off)) == iso_floor(e, width), (e, off)
    assert fn("2026-01-15T11:30:60+05:30") is UNSET and fn("2026-01-15T11:30:04+25:30") is UNSET
    hour = build(BucketTime, path="ts", to="hour")  # one local minute, three offsets, three buckets
    assert hour("2026-01-15T11:30:04+05:30") == "2026-01-15T06:00:00Z"
    assert hour("2026-01-15T11:30:05-03:00") == "2026-01-15T14:00:00Z"
    assert hour("2026-01-15T11:30:06Z") == "2026-01-15T11:00:00Z"
    assert hour("2026-01-15T11:30:07+05:30") == "2026-01-15T06:00:00Z"


# -- generalise by prefix: one regex, the longest key first --------------------------------

KEYS = st.text(alphabet="ab.*+?()[]\\|^$ 1", min_size=0, max_size=4)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(KEYS, st.integers(), min_size=1, max_size=6), st.lists(KEYS, max_size=10))
def test_generalise_prefix_is_the_longest_matching_key(table: dict[str, int], values: list[str]) -> None:
    """Regex metacharacters in keys are literal; ties in length go to the map's first key."""
    fn = build(Generalise, path="v", match="prefix", map=table, default=-1)
    for v in [*values, *table]:
        longest = next((table[p] for p in sorted(table, key=len, reverse=True) if v.startswith(p)), -1)
        assert fn(v) == longest


# -- scrub: clean texts remembered, bounded ------------------------------------------------


def test_scrub_cache_gives_the_same_text_as_a_fresh_scrub_and_stays_bounded() -> None:
    fn = build(Scrub, path="log")
    clean = [f"at com.example.Job.run(Job.java:{i})" for i in range(CLEAN_CACHE + 50)]
    dirty = ["mail a.user@example.com now", "call +91 98765 43210", "from 10.1.2.3"]
    for _ in range(2):
        for i, text in enumerate(clean):
            assert fn(text) == text
            if i % 100 == 0:
                for d in dirty:  # never remembered as clean, scrubbed every time
                    assert fn(d) == detect.scrub(d) != d
    cache = next(c.cell_contents for c in fn.call.__closure__ if isinstance(c.cell_contents, BoundedCache))
    assert len(cache) == CLEAN_CACHE
    assert not any(d in cache for d in dirty)
    long = "word " * (CLEAN_MAX_LEN // 5 + 1)
    assert fn(long) == long and long not in cache


# -- drop_when: generated inline, same decisions as the interpreter ------------------------

DROP_POLICY = """
[policy]
name = "d"
version = "1"

[route]
topics = ["dev/{id}/up"]
upstream = "cloud/up"

[[field]]
path = "a.b.c"
op = "keep"

[[field]]
path = "kind"
op = "keep"

[[drop_when]]
path = "a.b.flag"
present = true
reason = "flagged"

[[drop_when]]
path = "a.b.c"
one_of = ["x", 2]
reason = "listed"
unless = { path = "a.ok", equals = true }

[[drop_when]]
path = "kind"
present = false
reason = "no_kind"
unless = { path = "a.b.c", present = true }
"""

ENGINE = Engine([loads(DROP_POLICY.encode(), "d.toml")], Keyring.test())
LEAF = st.one_of(st.none(), st.just("x"), st.just(" X "), st.just(2), st.just(2.0), st.just(True), st.just({}))


def _object(keys: list[str], leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.fixed_dictionaries({}, optional={k: leaf for k in keys}))


MESSAGES = st.fixed_dictionaries(
    {},
    optional={
        "a": _object(["ok", "b"], st.one_of(LEAF, _object(["c", "flag"], LEAF))),
        "kind": st.one_of(st.none(), st.just("t")),
    },
)


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_inline_drop_when_agrees_with_the_interpreter(msg: dict[str, Any]) -> None:
    _agrees_with_the_interpreter(ENGINE, msg)


def _agrees_with_the_interpreter(engine: Engine, msg: dict[str, Any]) -> Plan:
    """The generated runner's verdict, reason and output for ``msg`` are the interpreter's."""
    payload = json.dumps(msg).encode()
    generated = engine.process("dev/1/up", payload)
    plan = generated.plan
    assert plan is not None and plan.structs  # the generated runner, not the interpreter
    reference = interpret(plan, payload, "cloud/up", None, {})
    if isinstance(generated, Forward):
        assert isinstance(reference, Forward), (msg, reference)
        assert msgspec.json.decode(generated.payload) == msgspec.json.decode(reference.payload)
    else:
        assert not isinstance(reference, Forward), (msg, generated)
        assert (generated.reason, generated.rule) == (reference.reason, reference.rule), msg
    return plan


# Conditions under one nested object are read together; one testing for absence among them,
# and several holding at once, must give the interpreter's first reason.
GROUPED_POLICY = DROP_POLICY.split("[[drop_when]]")[0] + """
[[field]]
path = "a.zz"
op = "keep"

[[drop_when]]
path = "a.b.flag"
present = true
reason = "flagged"

[[drop_when]]
path = "a.b.c"
one_of = ["x"]
reason = "listed"

[[drop_when]]
path = "a.zz"
present = false
reason = "no_zz"
unless = { path = "kind", present = false }

[[drop_when]]
path = "a.b.c"
equals = 2
reason = "two"

[[drop_when]]
path = "a.ok"
equals = true
reason = "ok"

[[drop_when]]
path = "a.b.flag"
equals = 2
reason = "flag_two"
"""
GROUPED = Engine([loads(GROUPED_POLICY.encode(), "g.toml")], Keyring.test())
GROUPED_MESSAGES = st.fixed_dictionaries(
    {},
    optional={
        "a": _object(["ok", "b", "zz"], st.one_of(LEAF, _object(["c", "flag"], LEAF))),
        "kind": st.one_of(st.none(), st.just("t")),
    },
)


@settings(max_examples=400, deadline=None)
@given(GROUPED_MESSAGES)
def test_grouped_drop_when_keeps_the_order_and_absence_tests(msg: dict[str, Any]) -> None:
    plan = _agrees_with_the_interpreter(GROUPED, msg)
    source = GROUPED._runs[plan].__source__
    assert "o0 = obj." in source and "o1 = o0." in source  # grouped, on two levels


def test_grouped_drop_when_examples() -> None:
    def reason(msg: dict[str, Any]) -> str | None:
        res = GROUPED.process("dev/1/up", json.dumps(msg).encode())
        return None if isinstance(res, Forward) else res.reason

    assert reason({"kind": "t"}) == "no_zz"  # a absent: the absence test still runs
    assert reason({"kind": "t", "a": None}) == "no_zz"
    assert reason({"kind": "t", "a": {"zz": 1, "b": {"c": 2, "flag": 2}}}) == "flagged"  # the first that holds
    assert reason({"kind": "t", "a": {"zz": 1, "b": {"c": 2}}}) == "two"
    assert reason({"kind": "t", "a": {"b": {"c": 2}}}) == "no_zz"  # before "two"
    assert reason({"a": {"b": {"c": 2}}}) == "two"  # no kind: "unless" spares it
    assert reason({"kind": "t", "a": {"zz": 1, "ok": True, "b": None}}) == "ok"
    assert reason({"kind": "t", "a": {"zz": 1}}) is None


def test_inline_drop_when_examples() -> None:
    def reason(msg: dict[str, Any]) -> str | None:
        res = ENGINE.process("dev/1/up", json.dumps(msg).encode())
        return None if isinstance(res, Forward) else res.reason

    assert reason({"kind": "t", "a": {"b": {"flag": 0}}}) == "flagged"
    assert reason({"kind": "t", "a": {"b": {"flag": None}}}) is None  # null is not present
    assert reason({"kind": "t", "a": None}) is None  # a null object on the path: absent
    assert reason({"kind": "t", "a": {"b": {"c": " X "}}}) == "listed"
    assert reason({"kind": "t", "a": {"b": {"c": "x"}, "ok": True}}) is None  # unless holds
    assert reason({"kind": "t", "a": {"b": {"c": 2.0}}}) is None  # 2.0 is not the JSON value 2
    assert reason({"a": {"b": {"c": 3}}}) is None  # no kind, unless a.b.c present
    assert reason({"a": {"b": {}}}) == "no_kind"


# -- detectors: the IPv4 gate only skips texts _IPV4 cannot match -------------------------


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789.abv:_ -\u0663", max_size=30))
def test_ipv4_gate_never_hides_an_address(text: str) -> None:
    if list(detect._IPV4.finditer(text)):
        assert detect._IPV4_GATE.search(text.encode())


IPV4_PARTS = ["ip", "10.0.0.1", "v1.2.3.4", "203.0.113.077", ".", "1.2.3", " ", "x", "9"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(IPV4_PARTS), max_size=8))
def test_find_is_the_same_with_and_without_the_ipv4_gate(parts: list[str]) -> None:
    text = "".join(parts)
    gated = detect.find(text)
    gate = detect._IPV4_GATE
    detect._IPV4_GATE = re.compile(b"")  # always open
    try:
        assert detect.find(text) == gated
    finally:
        detect._IPV4_GATE = gate


# -- the scanner of kept objects: clean strings remembered, bounded ------------------------


def test_kept_object_scanner_cache_is_bounded_and_never_hides_a_hit() -> None:
    from gateway.pipeline import CLEAN_CACHE as SCAN_CACHE
    from gateway.pipeline import _kept_scanner

    plan = ENGINE.plans[0]
    scan = _kept_scanner(plan)
    names = [f"Product line {i}" for i in range(SCAN_CACHE + 10)]
    for _ in range(2):
        assert scan({"products": names}, detect.ALL, "p", 4) is None
    assert scan({"products": [*names[:3], "mail me at a.b@example.com"]}, detect.ALL, "p", 4) == "email"
    assert scan(["Product line 1", "call 98765 43210"], detect.ALL, "p", 4) == "phone"
    assert scan(["Product line 1"], frozenset({"email"}), "p", 4) is None
    cache = next(c.cell_contents for c in scan.__closure__ if isinstance(c.cell_contents, BoundedCache))
    assert len(cache) <= SCAN_CACHE


def test_kept_list_of_strings_remembered_whole_never_hides_a_hit() -> None:
    import pytest

    from gateway.pipeline import CLEAN_CACHE as SCAN_CACHE
    from gateway.pipeline import CLEAN_LIST_CHARS, _kept_scanner
    from gateway.policy.runtime import TooDeep

    plan = ENGINE.plans[0]
    assert plan.coordinate_decimals < 7
    scan = _kept_scanner(plan)
    for _ in range(2):  # a clean list, then the same list remembered
        assert scan(["IoT Connectivity", "eSIM Hub"], detect.ALL, "products", 4) is None
    # the verdict is per key and per detector set: the same list is a hit elsewhere
    assert scan(["12.9715981"], detect.ALL, "p", 4) is None
    assert scan(["12.9715981"], detect.ALL, "lat", 4) == "coordinate"
    assert scan(["call 98765 43210"], frozenset({"email"}), "p", 4) is None
    assert scan(["call 98765 43210"], detect.ALL, "p", 4) == "phone"
    for _ in range(2):  # hits are never remembered as clean
        assert scan(["12.971598", "77.594562"], detect.ALL, "p", 4) == "coordinate"
        assert scan(["x", "a.b@example.com"], detect.ALL, "p", 4) == "email"
    with pytest.raises(TooDeep):  # the depth is checked before the memory is read
        scan(["IoT Connectivity", "eSIM Hub"], detect.ALL, "products", 0)
    long = ["word " * 20] * 3  # more than CLEAN_LIST_CHARS: scanned every time, not remembered
    assert sum(map(len, long)) > CLEAN_LIST_CHARS
    assert scan(long, detect.ALL, "p", 4) is None
    cache = next(c.cell_contents for c in scan.__closure__ if isinstance(c.cell_contents, BoundedCache))
    assert (tuple(long), detect.ALL, "p") not in cache
    assert (("IoT Connectivity", "eSIM Hub"), detect.ALL, "products") in cache
    for i in range(SCAN_CACHE + 10):
        assert scan([f"Product {i}", "eSIM Hub"], detect.ALL, "p", 4) is None
    assert len(cache) <= SCAN_CACHE


def test_generalise_prefix_cache_is_bounded_and_keeps_types_apart() -> None:
    from gateway.ops.basic import PREFIX_CACHE

    fn = build(Generalise, path="v", match="prefix", map={"1": "one", "true": "yes", "Android": "A"}, default="?")
    for i in range(PREFIX_CACHE + 20):
        assert fn(f"Android {i}") == "A"
        assert fn(f"x{i}") == "?"
    assert fn(True) == "yes" and fn(1) == "one" and fn("1") == "one" and fn("True") == "?"  # True is not "1"
    cache = next(c.cell_contents for c in fn.call.__closure__ if isinstance(c.cell_contents, BoundedCache))
    assert len(cache) == PREFIX_CACHE
    folded = build(Generalise, path="v", match="prefix", fold=True, map={"android": "A"}, default="?")
    assert folded(" ANDROID 14") == "A" and folded(" ANDROID 14") == "A" and folded("iOS") == "?"

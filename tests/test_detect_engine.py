"""Issue 9 through the engine with the real packs in rules/ (what `gateway minimise
--test-keys` runs): identifiers in awkward forms put into every kept string, kept number,
kept free-form value (as a value, a map key, a float, a list), kept topic level and
scrubbed field of every pack. A kept place must reject the message (``leak``); a scrubbed
one must forward it without the raw value. Canary: no raw digits of the identifier reach
the output topic or payload, in any script.
"""

# ruff: noqa: RUF001  (fullwidth and other scripts' characters are what these tests are about)
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_detect_forms import PHONE, UTR, ascii_digits, card, formatted, imei

from gateway.keys import Keyring
from gateway.pipeline import Engine, Forward, Reject
from gateway.policy.load import load

ROOT = Path(__file__).resolve().parent.parent
PACKS = sorted((ROOT / "rules").glob("*.toml"))
NOW = 1_764_000_000.0  # 2025-11-24


class Pack:
    """One real pack: its engine, a message it forwards, and where values are kept or scrubbed."""

    def __init__(self, path: Path):
        raw = tomllib.loads(path.read_text())
        self.name = path.stem
        self.engine = Engine([load(path)], Keyring.test(), unknown_sample=1)
        base = next(t for t in raw["test"] if "expect" in t and not t.get("expect_drop"))
        self.topic, self.input = base["topic"], base["input"]
        fields = raw.get("field", [])
        self.kept = {f["path"]: f.get("type", "any") for f in fields if f.get("op") == "keep"}
        self.scrubbed = [f["path"] for f in fields if f.get("op") == "scrub"]
        self.captures = [name for name, rule in raw["route"].get("capture", {}).items() if rule.get("op") == "keep"]
        self.pattern = raw["route"]["topics"][0]

    def run(self, message: dict, topic: str | None = None, raw: bytes | None = None) -> Forward | Reject:
        payload = raw if raw is not None else msgspec.json.encode(message)
        return self.engine.process(topic or self.topic, payload, now=NOW)

    def with_value(self, path: str, value: Any) -> dict:
        message = json.loads(json.dumps(self.input))
        *parents, leaf = path.split(".")
        node = message
        for key in parents:
            node = node.setdefault(key, {})
        if leaf.endswith("[]"):
            node[leaf[:-2]] = [value]
        else:
            node[leaf] = value
        return message

    def topic_with(self, capture: str, level: str) -> str:
        """The base topic with the level captured as ``capture`` replaced."""
        pattern, levels = self.pattern.split("/"), self.topic.split("/")
        return "/".join(level if p == "{" + capture + "}" else t for p, t in zip(pattern, levels, strict=True))


ALL_PACKS = [Pack(p) for p in PACKS]
KEPT_STRINGS = [(p, path) for p in ALL_PACKS for path, kind in p.kept.items() if kind in ("string", "any")]
KEPT_NUMBERS = [(p, path) for p in ALL_PACKS for path, kind in p.kept.items() if kind in ("number", "any")]
KEPT_FREE = [(p, path) for p in ALL_PACKS for path, kind in p.kept.items() if kind == "any"]
SCRUBBED = [(p, path) for p in ALL_PACKS for path in p.scrubbed]
CAPTURES = [(p, c) for p in ALL_PACKS for c in p.captures]


def ids(pairs):
    return [f"{p.name}:{x}" for p, x in pairs]


def test_the_packs_offer_every_kind_of_place():
    assert len(ALL_PACKS) == 5
    assert KEPT_STRINGS and KEPT_NUMBERS and KEPT_FREE and SCRUBBED and CAPTURES
    for pack in ALL_PACKS:
        assert isinstance(pack.run(pack.input), Forward), pack.name  # the base message passes


def assert_no_raw(result: Forward | Reject, raw_digits: str) -> None:
    if isinstance(result, Forward):
        assert raw_digits not in ascii_digits(result.topic + result.payload.decode()), result


# -- the examples in every place ----------------------------------------------------

TEXT_EXAMPLES = [
    ("４１１１ １１１１ １１１１ １１１１", "4111111111111111"),
    ("९८७६५ ४३२१०", "9876543210"),
    ("٩٨٧٦٥٤٣٢١٠", "9876543210"),
    ("reconnect to 203.0.113.77. Retrying", "203011377"),
    ("198.51.100.23.jpg", "1985110023"),
    ("203.0.113.77abc", "203011377"),
    ("db_password=Winter2026!", ""),
    ("4111.1111.1111.1111", "4111111111111111"),
    ("4111_1111_1111_1111", "4111111111111111"),
    ("4111\u200b1111\u200b1111\u200b1111", "4111111111111111"),
    ("card4111111111111111", "4111111111111111"),
    ("tel9876543210", "9876543210"),
    ("IMG490154203237518_20261123.jpg", "490154203237518"),
    ("asha\u200b@example.com", ""),
    ("asha＠example.com", ""),
    ("asha%40example.com", ""),
    ("josé@example.com", ""),
    ("12.971598,77.594562", "971598"),
    ("at 12.935182,77.624481", "935182"),
]


@pytest.mark.parametrize("text, raw", TEXT_EXAMPLES)
@pytest.mark.parametrize("pack, path", KEPT_STRINGS, ids=ids(KEPT_STRINGS))
def test_a_kept_string_with_an_identifier_is_a_leak(pack, path, text, raw):
    if ("203.0.113" in text or "198.51" in text) and "ip" in _guard_allow(pack, path):
        return  # guard_allow = ["ip"]: this field forwards IP addresses on purpose
    result = pack.run(pack.with_value(path, text))
    assert isinstance(result, Reject) and result.reason in ("leak", "wrong_type"), result
    if pack.kept[path] == "string":
        assert result.reason == "leak"


def _guard_allow(pack: Pack, path: str) -> list[str]:
    raw = tomllib.loads((ROOT / "rules" / f"{pack.name}.toml").read_text())
    return next(f.get("guard_allow", []) for f in raw["field"] if f.get("path") == path)


@pytest.mark.parametrize("text, raw", TEXT_EXAMPLES)
@pytest.mark.parametrize("pack, path", SCRUBBED, ids=ids(SCRUBBED))
def test_a_scrubbed_field_forwards_no_raw_identifier(pack, path, text, raw):
    result = pack.run(pack.with_value(path, f"error near {text} (retry 3)"))
    assert isinstance(result, Forward), result
    body = result.payload.decode()
    assert "retry 3" in body  # the rest of the text is kept
    for needle in ("asha", "josé", "Winter2026"):
        assert needle not in body or needle not in text
    if raw:
        assert raw not in ascii_digits(body), body


FLOATS = [
    ("4111111111111111.0", "card"),
    ("4.111111111111111e15", "card"),
    ("4.111111111111111E+15", "card"),
    ("358756091234567.0", "imei"),
    ("3.58756091234567e14", "imei"),
    ("412345678901.0", "utr"),
    ("-4111111111111111.0", "card"),
    ("6011111111111111117.0", "card"),  # 19 digits: beyond what a double holds exactly
]


@pytest.mark.parametrize("number, kind", FLOATS)
@pytest.mark.parametrize("pack, path", KEPT_NUMBERS, ids=ids(KEPT_NUMBERS))
def test_an_identifier_written_as_a_float_is_a_leak(pack, path, number, kind):
    marker = 123456.5
    payload = msgspec.json.encode(pack.with_value(path, marker)).replace(b"123456.5", number.encode())
    result = pack.run({}, raw=payload)
    assert isinstance(result, Reject), result
    assert (result.reason, result.detail) == ("leak", kind), result


@pytest.mark.parametrize("pack, path", KEPT_FREE, ids=ids(KEPT_FREE))
@pytest.mark.parametrize(
    "value",
    [
        {"९८७६५४३२१०": 1},  # a map key
        {"note": "４１１１ １１１１ １１１１ １１１１"},
        [12.935182, 77.624481],  # a kept list that is a position
        {"pos": [77.624481, 12.935182, 920.0]},  # GeoJSON order, with altitude
        ["x", "at 12.935182,77.624481"],
        [358756091234567.0],
    ],
)
def test_kept_free_form_values_are_scanned_in_every_shape(pack, path, value):
    result = pack.run(pack.with_value(path, value))
    assert isinstance(result, Reject) and result.reason == "leak", result


@pytest.mark.parametrize("pack, path", KEPT_FREE, ids=ids(KEPT_FREE))
@pytest.mark.parametrize("value", [[12.935, 77.624], [1.5, 2.25], {"v": "2.1.0"}, [20.123456, 21.0, 22.5, 23.75], 12.5])
def test_ordinary_free_form_values_still_pass(pack, path, value):
    """Three decimals, a version, a series of readings (not a position: four numbers)."""
    result = pack.run(pack.with_value(path, value))
    assert isinstance(result, Forward), result


@pytest.mark.parametrize(
    "level",
    [
        "９８７６５４３２１０",
        "९८७६५४३२१०",
        "tel9876543210",
        "4111.1111.1111.1111",
        "asha＠example.com",
        "12.971598,77.594562",
    ],
)
@pytest.mark.parametrize("pack, capture", CAPTURES, ids=ids(CAPTURES))
def test_a_kept_topic_level_is_guarded_in_every_form(pack, capture, level):
    result = pack.run(pack.input, topic=pack.topic_with(capture, level))
    assert isinstance(result, Reject) and (result.reason, result.rule) == ("leak", f"route.capture.{capture}"), result


# -- property: awkward forms anywhere, never a raw value out ----------------------------------

PLACES = [("kept", p, x) for p, x in KEPT_STRINGS] + [("scrub", p, x) for p, x in SCRUBBED]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    place=st.sampled_from(PLACES),
    number=card() | imei() | UTR | PHONE,
    data=st.data(),
    before=st.sampled_from(["", "id ", "card", "tel", "IMG", "x="]),
    after=st.sampled_from(["", " ok", "abc", "_20261123.jpg", ".", "\u200b"]),
)
def test_no_awkward_identifier_reaches_the_output(place, number, data, before, after):
    where, pack, path = place
    text = before + data.draw(formatted(number)) + after
    result = pack.run(pack.with_value(path, text))
    assert_no_raw(result, number)
    if where == "kept" and pack.kept[path] == "string":
        assert isinstance(result, Reject) and result.reason == "leak", (text, result)
    if where == "scrub":
        assert isinstance(result, Forward), (text, result)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    place=st.sampled_from(KEPT_NUMBERS), number=(card() | imei()).filter(lambda n: n[0] != "0"), exponent=st.booleans()
)
def test_no_identifier_float_is_forwarded(place, number, exponent):
    pack, path = place
    text = f"{int(number) / 10 ** (len(number) - 1)!r}e{len(number) - 1}" if exponent else f"{number}.0"
    payload = msgspec.json.encode(pack.with_value(path, 123456.5)).replace(b"123456.5", text.encode())
    result = pack.run({}, raw=payload)
    assert isinstance(result, Reject) and result.reason == "leak", (text, result)


# -- gateway minimise -----------------------------------------------------------------------


def test_minimise_survives_a_number_near_the_float_maximum_and_reads_on():
    """Issue 9 item 15: 1.7976931348623157e308 bucketed to a multiple of 30 overflowed and
    killed ``gateway minimise``, losing the rest of its input. Now that value is removed
    (``invalid_number``) and every line is read."""
    pack = ROOT / "rules" / "jimi-wifikit.toml"
    topic = "wifikit/862104058372913/usage"
    lines = [
        {"topic": topic, "payload": {"app_version": "3.2.1", "screen": "fence", "duration_s": 1.7976931348623157e308}},
        {"topic": topic, "payload": {"app_version": "3.2.1", "screen": "fence", "duration_s": -1.7976931348623157e308}},
        {"topic": topic, "payload": {"app_version": "3.2.1", "screen": "fence", "duration_s": 95}},
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "minimise", "--policy", str(pack), "--test-keys"],
        input=b"".join(msgspec.json.encode(line) + b"\n" for line in lines), capture_output=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr
    out = [json.loads(line)["payload"] for line in proc.stdout.splitlines()]
    assert [p.get("duration_s") for p in out] == [None, None, 90]  # 95 s floored to 30 s steps


def test_minimise_reports_an_engine_failure_as_one_dropped_line(monkeypatch, capsys):
    """Whatever goes wrong inside the engine costs one line (reason ``internal_error``, the
    exception's type, never its text) and the next line is processed."""
    from gateway import cli

    calls = []
    real = Engine.process

    def flaky(self, topic, payload, **kw):
        calls.append(payload)
        if len(calls) == 1:
            raise ValueError("secret 9876543210 in the message")
        return real(self, topic, payload, **kw)

    monkeypatch.setattr(Engine, "process", flaky)
    line = b'{"cabinet_id": "C1", "board_id": "B1", "locker_id": 3, "event": "opened", "ts": "2026-01-15T11:59:58Z"}\n'
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(line + line)))
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
    code = cli.main(["minimise", "--policy", str(ROOT / "rules" / "smartlocker-jenix.toml"), "--test-keys",
                     "--topic", "smartlocker/blr-01/CAB-0042/event"])  # fmt: skip
    sys.stdout.flush()
    err = capsys.readouterr().err
    assert code == 0
    assert json.loads(err.strip().splitlines()[-1]) == {
        "dropped": True, "line": 1, "reason": "internal_error", "detail": "ValueError"
    }  # fmt: skip
    assert "9876543210" not in err
    assert out.getvalue().count(b"\n") == 1  # the second line was forwarded

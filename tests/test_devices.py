"""The five device simulators against their policy packs, and the publisher against a real broker.

For each system the first 2000 simulated messages go through the real engine with the pack:
ordinary traffic must be forwarded, every awkward case must get the outcome its simulator
declares (forwarded minimised, or the pack's reject reason), and what is forwarded must keep
the promise. The promise is checked independently of the engine's own detectors: identifiers
taken from the inputs (IMEIs, e-mails, VPAs, phones, IPs, UTRs, tokens, ids) are canaries that
must not appear in any forwarded topic or payload.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import ipaddress
import itertools
import re
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest

from devices.common import Sample, luhn_complete
from devices.simulate import SYSTEMS, main
from gateway.keys import Keyring
from gateway.pipeline import Engine, Forward, Reject
from gateway.policy.load import load

ROOT = Path(__file__).resolve().parent.parent
N = 2000
PACKAGES = {name: module.__name__.rsplit(".", 2)[1] for name, module in SYSTEMS.items()}
CONSENT = "precise_location"
# Decimals a coordinate may keep without consent: 1 km grid (Tracksolid), 12 km grid (WiFiKit),
# the fixed site point (SmartLocker). The other packs forward no coordinates at all.
COORDINATES = {
    "jimi-tracksolid": ("latitude", "longitude", 4),
    "jimi-wifikit": ("lat", "lon", 2),
    "smartlocker-jenix": ("lat", "lon", 3),
}
# Keys that must never reach the cloud, whatever the message: credentials, card data, biometrics,
# cell/Wi-Fi location proxies, SIM ids; for Mi-Jack every account and device link.
FORBIDDEN = {
    "password",
    "pin",
    "upi_pin",
    "cvv",
    "cvc",
    "card_number",
    "card_expiry",
    "card_holder",
    "number",
    "face",
    "snapshot",
    "lac",
    "cell_id",
    "wifi_aps",
    "iccid",
    "imsi",
    "push_token",
    "cookie",
    "anon_id",
    "user_agent",
    "sw_inventory",
    "address",
    "alt",
}
FORBIDDEN_MIJACK = {
    "username",
    "user_id",
    "session_id",
    "device_id",
    "device_name",
    "auth_token",
    "serial",
    "mac",
    "advertising_id",
    "location",
}
# Values under these keys identify a person, a device or a payment: canaries (when 6+ characters).
ID_KEYS = {
    "imei",
    "device_uid",
    "credential",
    "user_id",
    "username",
    "session_id",
    "device_id",
    "device_name",
    "installation_id",
    "payer_vpa",
    "upi_ref",
    "email",
    "mobile",
    "name",
    "phone",
    "ble_mac",
    "auth_token",
    "order_id",
    "serial",
    "mac",
    "holder",
    "card_holder",
    "iccid",
    "imsi",
    "push_token",
    "cookie",
    "anon_id",
}
NOT_SCANNED = {"firmware", "app_version"}  # versions such as 2.1.0.4 look like IPv4 addresses and are kept
TOPIC_IDS = {
    "jimi-tracksolid": 1,
    "jimi-wifikit": 1,
    "mijack-power-inlock": 2,
    "smartjac": 1,
}  # topic level holding a device id

EMAIL_OR_VPA = re.compile(r"[\w.+-]+@[\w.-]+")
DIGIT_RUN = re.compile(r"(?<![A-Za-z0-9])\+?\d[\d -]*\d(?![A-Za-z0-9])")
IP_CANDIDATE = re.compile(r"[0-9A-Fa-f:.]*[:.][0-9A-Fa-f:.]+")
SECRET = re.compile(r"(?:token=|Bearer |password=)([^\s;,\"]+)|://([^\s/@:]+:[^\s/@]+)@")


@functools.cache
def processed(system: str) -> tuple[tuple[Sample, Forward | Reject, bool], ...]:
    """(sample, result, consent on record) for the first N samples; one device has location consent."""
    engine = Engine([load(ROOT / "rules" / f"{system}.toml")], Keyring.test(), unknown_sample=1)
    samples = list(itertools.islice(SYSTEMS[system].messages(), N))
    level = TOPIC_IDS.get(system)
    consenting = samples[0].topic.split("/")[level] if system in COORDINATES and level else None
    consents = {consenting: frozenset({CONSENT})} if consenting else {}
    out = []
    for s in samples:
        device = s.topic.split("/")[level] if level is not None else None
        out.append((s, engine.process(s.topic, s.payload, consents=consents), device == consenting))
    return tuple(out)


def leaves(value: Any, key: str = "") -> list[tuple[str, Any]]:
    """(key, leaf) for every scalar in a decoded JSON value; list items take the list's key."""
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in leaves(v, k)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in leaves(v, key)]
    return [(key, value)]


def keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys(v)}
    return set()


def canaries(sample: Sample, system: str) -> set[str]:
    """Identifiers in an input message that must not appear verbatim in anything forwarded."""
    found: set[str] = set()
    level = TOPIC_IDS.get(system)
    if level is not None:
        found.add(sample.topic.split("/")[level])
    for key, value in leaves(msgspec.json.decode(sample.payload)):
        if key in ID_KEYS and value is not None and len(str(value)) >= 6:
            found.add(str(value))
        if not isinstance(value, str) or key in NOT_SCANNED:
            continue
        found.update(m.group() for m in EMAIL_OR_VPA.finditer(value))
        found.update(m.group().split("@")[0] for m in EMAIL_OR_VPA.finditer(value) if m.group()[0].isdigit())
        for m in DIGIT_RUN.finditer(value):
            digits = re.sub(r"\D", "", m.group())
            if len(digits) >= 10:  # phones, IMEIs, UTRs, cards; dates and times have fewer
                found.update({digits, digits[-10:]})
        for m in IP_CANDIDATE.finditer(value):
            try:
                ipaddress.ip_address(m.group())
                found.add(m.group())
            except ValueError:
                pass
        found.update(g for m in SECRET.finditer(value) for g in m.groups() if g and len(g) >= 6)
    return found


def luhn_numbers(value: Any) -> list[str]:
    """Card-like numbers in a decoded output: 13-19 Luhn-valid digits (15+ for JSON integers,
    since 13-14 digit integers are epoch milliseconds)."""
    hits = []
    for _, leaf in leaves(value):
        runs = (
            DIGIT_RUN.findall(leaf)
            if isinstance(leaf, str)
            else [str(leaf)]
            if type(leaf) is int and leaf >= 10**14
            else []
        )
        for run in runs:
            digits = re.sub(r"\D", "", run)
            if 13 <= len(digits) <= 19 and luhn_complete(digits[:-1]) == digits:
                hits.append(run)
    return hits


def decimals(x: float) -> int:
    text = repr(x)
    return len(text.split(".")[1]) if "." in text and "e" not in text else 0


@pytest.mark.parametrize("system", SYSTEMS)
def test_ordinary_traffic_is_forwarded(system):
    rejected = [(s.topic, r.reason, r.rule) for s, r, _ in processed(system) if not s.awkward and isinstance(r, Reject)]
    assert rejected == []
    assert sum(not s.awkward for s, _, _ in processed(system)) > 0.9 * N


@pytest.mark.parametrize("system", SYSTEMS)
def test_every_awkward_case_is_sent_and_gets_the_outcome_the_pack_declares(system):
    declared: dict[str, str] = SYSTEMS[system].AWKWARD
    seen = {s.awkward for s, _, _ in processed(system) if s.awkward}
    assert seen == set(declared), "every awkward case within the first 2000 messages"
    for s, r, _ in processed(system):
        if s.awkward:
            expected = declared[s.awkward]
            outcome = r.reason if isinstance(r, Reject) else ""
            assert outcome == expected, (s.awkward, s.payload, r)
    assert sum(bool(s.awkward) for s, _, _ in processed(system)) < 0.06 * N, "awkward cases stay rare"


@pytest.mark.parametrize("system", SYSTEMS)
def test_the_promise_holds_on_everything_forwarded(system):
    forbidden = FORBIDDEN | (FORBIDDEN_MIJACK if system == "mijack-power-inlock" else set())
    forwarded = 0
    for s, r, consent in processed(system):
        if not isinstance(r, Forward):
            continue
        forwarded += 1
        out = msgspec.json.decode(r.payload)
        text = r.topic + "\n" + r.payload.decode()
        squeezed = re.sub(r"[ -]", "", text)
        leaked = sorted(c for c in canaries(s, system) if c in text or (c.isdigit() and c in squeezed))
        assert leaked == [], (s.awkward, s.topic, s.payload, r.payload)
        assert luhn_numbers(out) == [], r.payload
        assert keys(out) & forbidden == set(), r.payload
        if system in COORDINATES and not consent:
            lat, lon, places = COORDINATES[system]
            coords = [v for k, v in leaves(out) if k in (lat, lon) and isinstance(v, float)]
            assert all(decimals(v) <= places for v in coords), (s.payload, r.payload)
    assert forwarded > 0.9 * N


@pytest.mark.parametrize("system", ["jimi-tracksolid", "jimi-wifikit"])
def test_the_device_with_consent_keeps_its_exact_position(system):
    lat, _, _places = COORDINATES[system]
    exact = [
        msgspec.json.decode(s.payload)[lat] == msgspec.json.decode(r.payload)[lat]
        for s, r, consent in processed(system)
        if consent
        and isinstance(r, Forward)
        and isinstance(msgspec.json.decode(s.payload).get(lat), float)
        and s.kind == "location"
    ]
    assert exact and all(exact)


@pytest.mark.parametrize("system", SYSTEMS)
def test_ordinary_messages_are_the_declared_types_on_the_declared_topics(system):
    package = PACKAGES[system]
    types = importlib.import_module(f"devices.{package}.messages").BY_KIND
    topics = importlib.import_module(f"devices.{package}.topics")
    as_filter = functools.partial(re.sub, r"\{\w+\}", "+")
    assert as_filter(topics.PATTERN) in map(as_filter, load(ROOT / "rules" / f"{system}.toml").policy.route.topics)
    pattern = re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(topics.PATTERN)) + "$")
    for s, _, _ in processed(system):
        assert pattern.match(s.topic) and s.topic.rsplit("/", 1)[1] == s.kind
        if not s.awkward:
            msgspec.json.decode(s.payload, type=types[s.kind], strict=True)
    assert {s.kind for s, _, _ in processed(system) if not s.awkward} == set(types)


@pytest.mark.parametrize("system", SYSTEMS)
def test_simulators_are_deterministic(system):
    def first(seed: int, devices: int = 10) -> list[Sample]:
        return list(itertools.islice(SYSTEMS[system].messages(devices=devices, seed=seed), 300))

    assert first(7) == first(7)
    assert first(7) != first(8)
    assert len({s.topic for s in first(7, devices=3)}) < len({s.topic for s in first(7, devices=30)})


def test_realistic_identifiers():
    tracker = [s for s, _, _ in processed("jimi-tracksolid")][:200]
    imeis = {s.topic.split("/")[1] for s in tracker}
    assert all(len(i) == 15 and luhn_complete(i[:-1]) == i for i in imeis)
    pays = [
        msgspec.json.decode(s.payload)["payment"]
        for s, _, _ in processed("smartlocker-jenix")
        if s.kind == "payment" and not s.awkward
    ]
    assert all(re.fullmatch(r"\d{12}", p["upi_ref"]) and re.fullmatch(r"[\w.]+@[a-z]+", p["payer_vpa"]) for p in pays)
    times = [msgspec.json.decode(s.payload)["time"] for s in tracker]
    assert times == sorted(times) and times[0] != times[-1]
    points = [msgspec.json.decode(s.payload) for s in tracker if s.kind == "location"]
    assert all(6 < p["latitude"] < 30 and 68 < p["longitude"] < 90 for p in points), "India"


def test_the_gt06_system_needs_a_listener_address():
    with pytest.raises(SystemExit) as exc:
        main(["--system", "jimi-gt06", "--url", "mqtt://127.0.0.1:1"])
    assert exc.value.code == 2


async def test_simulate_publishes_to_a_real_broker(broker):
    received: list[aiomqtt.Message] = []
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as sub:
        await sub.subscribe("smartjac/#", qos=1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "devices.simulate", "--system", "smartjac", "--url", broker.url,
            "--count", "50", "--qos", "1", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=15)
        assert proc.returncode == 0, err.decode()
        assert re.fullmatch(r"smartjac: sent 50 messages in [\d.]+ s \([\d.]+ msg/s\)\n", out.decode())

        async def collect() -> None:
            async for message in sub.messages:
                received.append(message)
                if len(received) == 50:
                    return

        await asyncio.wait_for(collect(), timeout=10)
    expected = list(itertools.islice(SYSTEMS["smartjac"].messages(), 50))
    assert [(str(m.topic), m.payload) for m in received] == [(s.topic, s.payload) for s in expected]

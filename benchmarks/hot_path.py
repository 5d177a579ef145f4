"""Hot path benchmark: the gateway's minimisation against its floor and a plain implementation.

Measured in one run, interleaved round by round so machine noise hits all of
them alike, and reported as medians over the rounds:

- floor (dict):    msgspec.json decode + encode of the same bytes, no schema;
- floor (Struct):  msgspec decode into a Struct of the same 15 fields + encode;
- gateway:         Engine.process with the Tracksolid policy, leak guard on / off;
- plain json:      json.loads + dict edits + json.dumps implementing the same
                   policy with the standard library (hmac, ipaddress), as a
                   hand-written script would.

The mix (``--mix``): the five simulators' own streams (devices/*/simulator.py, 2,000
messages each, awkward cases included), all five policy packs in one Engine, against a
bare msgspec decode+encode (dict) of the same bytes; per system and for the whole mix.

Run: .venv/bin/python benchmarks/hot_path.py [--rounds 7] [--seconds 0.5] [--mix]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.bench import with_leak_guard  # noqa: E402
from gateway.keys import Keyring  # noqa: E402
from gateway.pipeline import Engine  # noqa: E402
from gateway.policy.load import load  # noqa: E402

POLICY = ROOT / "rules" / "jimi-tracksolid.toml"
DATA = Path(__file__).resolve().parent / "tracker_messages.jsonl"
TOPIC = "tracksolid/358756091234567/location"


def make_messages(n: int = 1000, devices: int = 50, seed: int = 7) -> list[dict]:
    """Realistic tracker records: ~300 bytes, 15+ fields, identifiers repeating per device."""
    rnd = random.Random(seed)
    fleet = [
        (f"3587560{rnd.randrange(10**8):08d}", f"203.0.{rnd.randrange(256)}.{rnd.randrange(1, 255)}",
         12.9 + rnd.random() * 0.2, 77.5 + rnd.random() * 0.2)
        for _ in range(devices)
    ]
    out = []
    for i in range(n):
        imei, ip, lat, lon = fleet[i % devices]
        out.append({
            "imei": imei, "type": "location", "time": f"2026-11-23T10:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "latitude": round(lat + rnd.uniform(-0.01, 0.01), 6), "longitude": round(lon + rnd.uniform(-0.01, 0.01), 6),
            "speed_kmh": rnd.randrange(0, 120), "course": rnd.randrange(0, 360), "valid": True,
            "satellites": rnd.randrange(4, 14), "mcc": 404, "mnc": 45, "lac": rnd.randrange(1, 65535),
            "cell_id": rnd.randrange(1, 2**24), "acc": rnd.random() < 0.8, "voltage_level": rnd.randrange(0, 7),
            "gsm_signal": rnd.randrange(0, 5), "login_ip": ip, "alarm": "none",
            "iccid": f"899102736455{rnd.randrange(10**8):08d}", "firmware_build": "GT06N_20_60DM2_B25E_V1.2",
        })  # fmt: skip
    return out


class Tracker(msgspec.Struct):
    imei: str | None = None
    type: str | None = None
    time: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    speed_kmh: int | None = None
    course: int | None = None
    valid: bool | None = None
    satellites: int | None = None
    mcc: int | None = None
    mnc: int | None = None
    lac: int | None = None
    cell_id: int | None = None
    acc: bool | None = None
    voltage_level: int | None = None
    gsm_signal: int | None = None
    login_ip: str | None = None
    alarm: str | None = None
    iccid: str | None = None
    firmware_build: str | None = None


def plain_json_policy():
    """The Tracksolid policy written the way a plain script would: json + dict edits + stdlib."""
    key = hashlib.sha256(b"bench-key").digest()
    keep = {
        "type", "time", "valid", "satellites", "mcc", "mnc", "alarm", "acc", "charging", "voltage_level", "gsm_signal"
    }
    step_lat = 180.0 / math.floor(180.0 / (1000 / 111320.0))

    def minimise(data: bytes) -> bytes:
        msg = json.loads(data)
        out = {k: v for k, v in msg.items() if k in keep}
        if "imei" in msg:
            digest = hmac.new(key, str(msg["imei"]).encode(), hashlib.sha256).hexdigest()[:16]
            out["imei"] = msg["imei"][:8] + "-" + digest
        if "latitude" in msg and "longitude" in msg:
            i = math.floor((msg["latitude"] + 90) / step_lat)
            lat = -90 + (i + 0.5) * step_lat
            step_lon = 360.0 / math.floor(360.0 / (1000 / (111320.0 * math.cos(math.radians(lat)))))
            j = math.floor((msg["longitude"] + 180) / step_lon)
            out["latitude"], out["longitude"] = round(lat, 4), round(-180 + (j + 0.5) * step_lon, 4)
        if "speed_kmh" in msg:
            out["speed_kmh"] = round(msg["speed_kmh"] / 5) * 5
        if "course" in msg:
            out["course"] = msg["course"] // 45 * 45
        if "login_ip" in msg:
            try:  # noqa: SIM105 - the baseline stays the plain hand-written form it was measured as
                out["login_ip"] = str(ipaddress.ip_network(msg["login_ip"] + "/24", strict=False).network_address)
            except ValueError:
                pass
        return json.dumps(out).encode()

    return minimise


def measure(fn, payloads: list[bytes], seconds: float) -> float:
    """Microseconds per message, running over the payloads for about ``seconds``."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for p in payloads:
            fn(p)
        n += len(payloads)
        if time.perf_counter() >= deadline:
            return (time.perf_counter() - start) / n * 1e6


def mix(rounds: int, seconds: float, per_system: int = 2000) -> None:
    """The five simulators' streams through one Engine with all five packs, vs the msgspec floor."""
    import itertools

    from devices.simulate import SYSTEMS

    engine = Engine([load(p) for p in sorted((ROOT / "rules").glob("*.toml"))], Keyring.test())
    streams = {name: [(s.topic, s.payload) for s in itertools.islice(mod.messages(devices=50, seed=3), per_system)]
               for name, mod in SYSTEMS.items()}
    streams["all five"] = [m for ms in streams.values() for m in ms]
    dec, enc = msgspec.json.Decoder(), msgspec.json.Encoder()
    now = time.time()
    process = engine.process

    def run_engine(ms: list[tuple[str, bytes]]) -> None:
        for topic, payload in ms:
            process(topic, payload, now)

    def run_floor(ms: list[tuple[str, bytes]]) -> None:
        for _, payload in ms:
            enc.encode(dec.decode(payload))

    forwarded = {name: sum(process(t, p, now).__class__.__name__ == "Forward" for t, p in ms)
                 for name, ms in streams.items()}  # also warms the caches, as a running gateway has them
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name, ms in streams.items():
            for label, fn in (("engine", run_engine), ("floor", run_floor)):
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    fn(ms)
                    n += len(ms)
                samples.setdefault((name, label), []).append((time.perf_counter() - start) / n * 1e6)
    print(f"\nmix: {per_system} messages per system, all five packs in one Engine (leak guard as the packs set it); "
          f"median of {rounds} rounds x {seconds}s")
    print(f"{'stream':24s} {'mean B':>7s} {'fwd':>6s} {'engine us':>10s} {'floor us':>9s} {'ratio':>6s}")
    for name, ms in streams.items():
        e = statistics.median(samples[(name, "engine")])
        f = statistics.median(samples[(name, "floor")])
        size = statistics.mean(len(p) for _, p in ms)
        print(f"{name:24s} {size:7.0f} {forwarded[name]:6d} {e:10.2f} {f:9.2f} {f / e:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.5, help="per candidate per round")
    ap.add_argument("--mix", action="store_true", help="only the five simulators' mix")
    args = ap.parse_args()
    if args.mix:
        mix(args.rounds, args.seconds)
        return

    messages = make_messages()
    DATA.write_text("".join(json.dumps(m, separators=(",", ":")) + "\n" for m in messages))
    payloads = [msgspec.json.encode(m) for m in messages]
    source = load(POLICY)
    now = time.time()
    guard_on = Engine([with_leak_guard(source, "on")], Keyring.test()).process
    guard_off = Engine([with_leak_guard(source, "off")], Keyring.test()).process
    dec, enc = msgspec.json.Decoder(), msgspec.json.Encoder()
    sdec = msgspec.json.Decoder(Tracker)
    candidates = {
        "floor: msgspec decode+encode (dict)": lambda p: enc.encode(dec.decode(p)),
        "floor: msgspec decode+encode (Struct)": lambda p: enc.encode(sdec.decode(p)),
        "gateway, leak guard on": lambda p: guard_on(TOPIC, p, now),
        "gateway, leak guard off": lambda p: guard_off(TOPIC, p, now),
        "plain json + dict edits + stdlib": plain_json_policy(),
    }
    for fn in candidates.values():  # warm caches (pseudonyms, routes) as a running gateway has them
        for p in payloads:
            fn(p)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, fn in candidates.items():
            samples[name].append(measure(fn, payloads, args.seconds))
    med = {name: statistics.median(v) for name, v in samples.items()}
    size = statistics.mean(len(p) for p in payloads)
    print(f"{len(payloads)} messages, mean {size:.0f} bytes, {len(messages[0])} fields; "
          f"median of {args.rounds} rounds x {args.seconds}s each")
    print(f"{'candidate':40s} {'us/msg':>8s} {'msg/s':>10s}")
    for name, us in med.items():
        print(f"{name:40s} {us:8.2f} {1e6 / us:10,.0f}")
    floor_dict = med["floor: msgspec decode+encode (dict)"]
    floor_struct = med["floor: msgspec decode+encode (Struct)"]
    plain = med["plain json + dict edits + stdlib"]
    for guard in ("on", "off"):
        g = med[f"gateway, leak guard {guard}"]
        print(f"leak guard {guard}: {floor_dict / g:.2f}x the dict floor, {floor_struct / g:.2f}x the Struct floor, "
              f"{plain / g:.1f}x the plain json implementation")


if __name__ == "__main__":
    main()

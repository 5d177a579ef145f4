"""What a shadow pack costs on the hot path: the worker's per-message work with and without one.

Per message the worker runs the active engine; with ``shadow_policies`` it also runs the
shadow engine on the same bytes and compares the two results (``gateway.policy.diff``),
decoding both outputs only when their bytes differ. Measured on the simulators' mix of
the five systems (all five packs active) in two cases, interleaved round by round:

- identical: the shadow packs are the active packs (outputs equal: the cheap comparison);
- changed:   the Tracksolid shadow snaps to a 500 m grid instead of 1 km (every located
             tracker message differs and is decoded and compared field by field).

Run: .venv/bin/python benchmarks/shadow_cost.py [--rounds 5] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402

from devices.simulate import SYSTEMS  # noqa: E402
from gateway.keys import Keyring  # noqa: E402
from gateway.pipeline import Engine  # noqa: E402
from gateway.policy.load import load  # noqa: E402
from gateway.service.shadow import Shadow, ShadowMetrics  # noqa: E402

PACKS = sorted((ROOT / "rules").glob("*.toml"))


def stream(per_system: int = 2000) -> list[tuple[str, bytes]]:
    out = []
    for module in SYSTEMS.values():
        for i, sample in enumerate(module.messages(devices=50, seed=3)):
            if i >= per_system:
                break
            out.append((sample.topic, sample.payload))
    return out


def per_message_us(messages: list[tuple[str, bytes]], engine: Engine, shadow: Shadow | None, seconds: float) -> float:
    process, observe, now = engine.process, shadow.observe if shadow else None, time.time()
    none: dict[str, frozenset[str]] = {}
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for topic, payload in messages:
            result = process(topic, payload, now, none)
            if observe is not None:
                observe(topic, payload, result, now, none)
        n += len(messages)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=0.5)
    args = p.parse_args()
    keyring = Keyring.test()
    sources = [load(path) for path in PACKS]
    with tempfile.TemporaryDirectory() as tmp:
        changed = Path(tmp) / "jimi-tracksolid.toml"
        text = (ROOT / "rules" / "jimi-tracksolid.toml").read_text()
        changed.write_text(text.replace("grid_m = 1000", "grid_m = 500"))
        changed_sources = [load(changed) if s.file.endswith("jimi-tracksolid.toml") else s for s in sources]
        metrics = ShadowMetrics(CollectorRegistry())
        cases = {
            "no shadow": (Engine(sources, keyring), None),
            "identical shadow": (Engine(sources, keyring), Shadow(Engine(sources, keyring), metrics)),
            "changed shadow": (Engine(sources, keyring), Shadow(Engine(changed_sources, keyring), metrics)),
        }
        messages = stream()
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (engine, shadow) in cases.items():
                times[name].append(per_message_us(messages, engine, shadow, args.seconds))
    base = statistics.median(times["no shadow"])
    print(f"{len(messages)} messages (five simulators' mix, all five packs), medians of {args.rounds} rounds:")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:<17} {med:7.2f} us/msg  ({med / base:4.2f}x no shadow)")


if __name__ == "__main__":
    main()

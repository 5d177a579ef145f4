"""CPU time per message of Engine.process on the hot-path workload, guard on and off.

Waiting for a shared CPU does not inflate process time, so two trees (e.g. before and after a
change) can be compared by running this alternately in each: it prints "guard-on guard-off"
in us per message (best of 5 x 20 passes over benchmarks/tracker_messages.jsonl).

Run: .venv/bin/python benchmarks/detect_ab.py [TREE]   (TREE: a checkout holding gateway/ and rules/)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

TREE = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent).resolve()
sys.path.insert(0, str(TREE))

from gateway.bench import with_leak_guard  # noqa: E402
from gateway.keys import Keyring  # noqa: E402
from gateway.pipeline import Engine  # noqa: E402
from gateway.policy.load import load  # noqa: E402

TOPIC = "tracksolid/358756091234567/location"


def us_per_message(guard: str, messages: list[bytes]) -> float:
    engine = Engine([with_leak_guard(load(TREE / "rules" / "jimi-tracksolid.toml"), guard)], Keyring.test())
    process = engine.process
    for m in messages:  # warm the caches
        process(TOPIC, m, now=1.7e9)
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(20):
            for m in messages:
                process(TOPIC, m, now=1.7e9)
        best = min(best, (time.process_time() - start) / (20 * len(messages)) * 1e6)
    return best


def main() -> None:
    data = Path(__file__).resolve().parent / "tracker_messages.jsonl"
    messages = [line.rstrip(b"\n") for line in data.read_bytes().splitlines(keepends=True) if line.strip()]
    print(f"{us_per_message('on', messages):.3f} {us_per_message('off', messages):.3f}")


if __name__ == "__main__":
    main()

"""``gateway bench``: the hot path in-process over a file of messages, for a fixed time."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from gateway.keys import Keyring
from gateway.pipeline import Engine, Forward
from gateway.policy.load import Source


def with_leak_guard(source: Source, setting: str) -> Source:
    """``setting``: "policy" (as written), "on" or "off" (to measure what the guard costs)."""
    if setting == "policy":
        return source
    meta = msgspec.structs.replace(source.policy.policy, leak_guard=setting == "on")
    return msgspec.structs.replace(source, policy=msgspec.structs.replace(source.policy, policy=meta))


def load_payloads(path: Path) -> list[bytes]:
    """One message per non-empty line, re-encoded compactly as the devices would send it."""
    return [msgspec.json.encode(msgspec.json.decode(line)) for line in path.read_bytes().splitlines() if line.strip()]


def run_bench(
    source: Source, keyring: Keyring, topic: str, input_path: Path, seconds: float, leak_guard: str = "policy"
) -> dict:
    engine = Engine([with_leak_guard(source, leak_guard)], keyring)
    payloads = load_payloads(input_path)
    if not payloads:
        raise SystemExit(f"gateway bench: no messages in {input_path}")
    process, now = engine.process, time.time()
    forwarded = messages = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for payload in payloads:
            if process(topic, payload, now).__class__ is Forward:
                forwarded += 1
        messages += len(payloads)
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    return {
        "messages": messages,
        "seconds": round(elapsed, 3),
        "msgs_per_s": round(messages / elapsed, 1),
        "us_per_msg": round(elapsed / messages * 1e6, 3),
        "forwarded": forwarded,
        "rejected": messages - forwarded,
    }

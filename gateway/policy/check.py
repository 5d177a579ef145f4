"""``gateway check``: validate policies and run their inline ``[[test]]`` cases.

Inline tests run with the public test key (``gateway.keys.Keyring.test``) and
the test's fixed ``now``, so expected pseudonyms written in a policy file are
the same on every machine and on every day.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import msgspec

from gateway.keys import Keyring
from gateway.pipeline import Engine, Forward
from gateway.policy.load import Source
from gateway.policy.model import Test


class AnyDevice(Mapping[str, Any]):
    """Consent mapping that grants the same purposes to whatever device asks."""

    def __init__(self, purposes: list[str]):
        self.purposes = frozenset(purposes)

    def __getitem__(self, key: str) -> frozenset[str]:
        return self.purposes

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def decode_output(payload: bytes, output: str) -> Any:
    return msgspec.msgpack.decode(payload) if output == "msgpack" else msgspec.json.decode(payload)


def _canonical(value: Any) -> bytes:
    return msgspec.json.encode(value, order="sorted")


def run_tests(source: Source) -> tuple[int, list[str]]:
    """Run the inline tests of one policy: (number run, failure messages)."""
    engine = Engine([source], Keyring.test())
    failures = []
    for i, test in enumerate(source.policy.test):
        name = f"test[{i}]" + (f" {test.name!r}" if test.name else "")
        problem = run_test(engine, test, source.policy.policy.output)
        if problem:
            failures.append(f"{source.file}: {name}: {problem}")
    return len(source.policy.test), failures


def run_test(engine: Engine, test: Test, output: str) -> str | None:
    now = datetime.fromisoformat(test.now).timestamp()
    result = engine.process(test.topic, msgspec.json.encode(test.input), now=now, consents=AnyDevice(test.consent))
    if isinstance(result, Forward):
        got = decode_output(result.payload, output)
        if test.expect_drop:
            return f"expected a drop, got {msgspec.json.encode(got).decode()}"
        if _canonical(got) != _canonical(test.expect):  # 1, 1.0 and true are different outputs
            return (
                f"output differs\n    expected: {msgspec.json.encode(test.expect).decode()}"
                f"\n    got:      {msgspec.json.encode(got).decode()}"
            )
        if test.expect_topic is not None and result.topic != test.expect_topic:
            return f"upstream topic differs: expected {test.expect_topic!r}, got {result.topic!r}"
        return None
    why = f"{result.reason}" + (
        f" (rule {result.rule}" + (f", {result.detail})" if result.detail else ")") if result.rule else ""
    )
    if not test.expect_drop:
        return f"expected output, but the message was dropped: {why}"
    if test.expect_reason is not None and test.expect_reason != result.reason:
        return f"expected drop reason {test.expect_reason!r}, got {why}"
    return None
